"""Augmentation (Task.augment, issue 22): each training example is transformed inside the
compiled step with the key of (seed, epoch, its position in the train split).

Another chunk length, a stop and resume and the host-fed path augment as one straight run
does. What the step saw is recorded by the task itself (its loss reports the sums of the augmented
images as metrics), and must equal repro.augmented's examples, whatever the batch size (so the
draw is the example's, not its slot's); evaluation sees the stored images. The guarantees with
augmentation on (same bits, resumes, micro-shards on 1, 2, 4 devices, host-fed, bin/check) are
tests/test_tasks.py's and tests/test_check.py's: their tiny ResNet crops and flips, their tiny
charlm adds input noise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import repro
from bits import assert_bitwise_equal, restore_state
from conftest import N_TRAIN, quiet
from repro import Config, ReproError
from repro.proof import replays
from repro.train import rng
from repro.data import shuffle
from repro.tasks.resnet import ResNet

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


def sums(image) -> dict:
  """The whole image's sum and its left half's: exact in float32 for uint8 images this small,
  and the left half's changes with a flip or a sideways crop."""
  image = image.astype(jnp.float32)
  return {"image_sum": image.sum(), "left_sum": image[..., :14, :].sum()}


@dataclasses.dataclass
class Seen(ResNet):
  """The ResNet (random crop and flip) whose loss reports what its batch looked like."""

  def loss(self, model, batch):
    return super().loss(model, batch), sums(batch["image"])

  def eval_metrics(self, model, batch):
    return {**super().eval_metrics(model, batch),
            "image_sum": batch["image"].astype(jnp.float32).sum(axis=(1, 2, 3))}


@pytest.fixture(scope="module")
def runs(idx_dir, tfds_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("augment")
  task = Seen(data_dir=str(idx_dir), tfds_dir=str(tfds_dir), width=4)
  made = {}
  for batch in (16, 32):
    config = Config(seed=3, epochs=2, batch_size=batch, output=str(root / f"b{batch}"),
                    checkpoint_every=100, chunk_steps=4, progress=False, validation_examples=32)
    quiet(config, task=task)
    made[batch] = Path(config.output)
  other = config.replace(batch_size=16, output=str(root / "chunks"), chunk_steps=3,
                         checkpoint_every=5, max_steps=7)
  quiet(other, task=task)  # stopped at 7 with chunks of 3, then resumed, host-fed
  quiet(other.replace(max_steps=None, data_path="host"), task=task)
  made["chunks"] = Path(other.output)
  return task, made


def test_chunks_a_resume_and_the_host_path_augment_as_one_straight_run(runs):
  _, made = runs
  straight, other = made[16], made["chunks"]
  assert_bitwise_equal(restore_state(straight / "28"), restore_state(other / "28"))
  assert (straight / "trace.jsonl").read_bytes() == (other / "trace.jsonl").read_bytes()
  assert recorded(straight) == recorded(other)  # every step's loss and what its batch held


def recorded(run: Path) -> dict[int, dict]:
  lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r for r in lines if "train_image_sum" in r}


@pytest.mark.parametrize("batch", [16, 32])
def test_each_step_trained_on_the_examples_repro_augmented_gives(runs, batch):
  task, made = runs
  run, steps = made[batch], recorded(made[batch])
  train = N_TRAIN - 32
  keys, per_epoch = rng.streams(3), shuffle.steps_per_epoch(train, batch)
  assert sorted(steps) == list(range(1, 2 * per_epoch + 1))
  changed = False
  for step in (1, per_epoch, per_epoch + 1, 2 * per_epoch):
    idx = np.asarray(shuffle.batch_indices(keys["shuffle"], step - 1, train, batch))
    epoch = (step - 1) // per_epoch
    seen = replays.augmented(run, idx.tolist(), epoch, task=task)["image"]
    assert np.array_equal(seen[3], replays.augmented(run, int(idx[3]), epoch, task=task)["image"])
    expected = {k: float(v) for k, v in sums(seen).items()}
    assert {k: steps[step][f"train_{k}"] for k in expected} == expected, step
    raw = replays.augmented(run, idx.tolist(), epoch,
                            task=dataclasses.replace(task, augment_images=False))["image"]
    changed |= not np.array_equal(seen, raw)
  assert changed  # the examples were augmented: the test can tell


def test_an_example_gets_a_new_draw_each_epoch_and_the_same_in_every_run(runs):
  task, made = runs
  draws = {(b, e): replays.augmented(made[b], list(range(8)), e, task=task)["image"]
           for b in (16, 32) for e in (0, 1)}
  assert all(np.array_equal(draws[(16, e)], draws[(32, e)]) for e in (0, 1))
  assert any(not np.array_equal(first, second) for first, second in zip(draws[(16, 0)],
                                                                         draws[(16, 1)]))


def test_evaluation_sees_the_stored_images(runs):
  task, made = runs
  trained = repro.load(made[16], task=task)
  data = task.data()
  test = np.asarray(data.test["image"], np.float32).sum(axis=(1, 2, 3))
  assert trained.metrics["test_image_sum"] == float(np.float32(test.sum()) / np.float32(len(test)))
  held_out = np.asarray(data.train["image"][-32:], np.float32).sum(axis=(1, 2, 3))
  lines = [json.loads(line) for line in (made[16] / "metrics.jsonl").read_text().splitlines()]
  val = [r["val_image_sum"] for r in lines if "val_image_sum" in r]
  assert val and val[-1] == float(np.float32(held_out.sum()) / np.float32(32))


def test_the_example_key_is_a_function_of_seed_epoch_and_example():
  keys, again = rng.streams(0), rng.streams(0)
  data = lambda key: jax.random.key_data(key).tobytes()
  assert data(rng.example_key(keys, 1, 7)) == data(rng.example_key(again, 1, 7))
  assert len({data(rng.example_key(keys, e, i)) for e in (0, 1) for i in (0, 1)}) == 4
  assert data(rng.example_key(rng.streams(1), 1, 7)) != data(rng.example_key(keys, 1, 7))


def test_a_bad_example_is_one_line(runs):
  task, made = runs
  with pytest.raises(ReproError, match=r"example 999 of epoch 0: pass 0 <= example < 224"):
    replays.augmented(made[16], 999, 0, task=task)


def test_the_docs_augment_is_the_resnets():
  from test_docs import doc_commands
  code = next(c.code for c in doc_commands() if c.text == "def augment(self, example, key):")
  namespace = {"jax": jax, "jnp": jnp}
  exec(code, namespace)
  task, image = ResNet(), np.arange(784).astype(np.uint8).reshape(28, 28, 1)
  for seed in range(8):
    key = jax.random.key(seed)
    ours, theirs = task.augment({"image": image}, key), namespace["augment"](
        task, {"image": image}, key)
    assert np.array_equal(ours["image"], theirs["image"]), seed
