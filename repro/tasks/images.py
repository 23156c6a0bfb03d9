"""Classifying 28x28 grey images (Fashion-MNIST or MNIST from local IDX files)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from repro.data import datasets as data_lib
from repro.errors import ReproError
from repro.task import Splits, Task


@dataclasses.dataclass
class ImageClassifier(Task):
  """Cross-entropy classification of the images of a repro.data.datasets dataset.

  Options:
    dataset: 'fashion_mnist' (Debian's dataset-fashion-mnist) or 'mnist'.
    data_dir: directory of the four IDX files (plain or .gz); None: the
      dataset's standard location.
    tfds_dir: where tensorflow_datasets keeps the prepared copy; None:
      $TFDS_DATA_DIR or ~/tensorflow_datasets.
  """

  location_options = ("data_dir", "tfds_dir")

  dataset: str = "fashion_mnist"
  data_dir: str | None = None
  tfds_dir: str | None = None

  def __post_init__(self):
    if self.dataset not in data_lib.DATASETS:
      raise ReproError(f"unknown dataset {self.dataset!r}: pass --task.dataset=" +
                       " or --task.dataset=".join(data_lib.DATASETS))

  def data(self) -> Splits:
    loaded = data_lib.load(self.dataset, self.data_dir, self.tfds_dir)
    return Splits(train={"image": loaded.train_images, "label": loaded.train_labels},
                  test={"image": loaded.test_images, "label": loaded.test_labels},
                  source=f"{self.dataset} from {loaded.source}")

  def loss(self, model: nnx.Module, batch) -> jax.Array:
    logits = model(batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  def eval_metrics(self, model: nnx.Module, batch) -> dict[str, jax.Array]:
    logits = model(batch["image"])
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
            "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}
