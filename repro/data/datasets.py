"""28x28 grey image datasets, offline: local IDX files -> a TFDS copy -> a verified cache.

load() finds the four IDX files (repro.data.idx; Debian's dataset-fashion-mnist
puts Fashion-MNIST in /usr/share/datasets/fashion-mnist), prepares them once
with a TFDS builder of ours in the TFDS data directory (repro.data.tfds_offline),
under a builder config named by the digest of the files so that other files
never reuse a stale copy, and caches the decoded arrays beside that copy
(repro.data.npy_cache). Every load verifies the cache against the sha256 recorded
when it was written, parses the very bytes it verified, and rebuilds a damaged
cache (TFDS's prepared copy included) from the source. repro.data.splits then
fingerprints the arrays themselves for every run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from repro.data import idx
from repro.data import npy_cache
from repro.data import tfds_offline
from repro.errors import ReproError
# The names users' tasks and repro.data.source read from here (README: repro.data.datasets.tfds_split).
from repro.data.idx import DATASETS, DEFAULT_DATA_DIRS  # noqa: F401
from repro.data.tfds_offline import tfds_builder, tfds_split  # noqa: F401

NOTES = logging.getLogger("repro.data.datasets")  # what a load says; repro.run routes it to its log
DECODED = "decoded"  # the cache's directory, inside TFDS's prepared copy
# The cache's files, in the order of Dataset's arrays.
CACHED = ("train-images.npy", "train-labels.npy", "test-images.npy", "test-labels.npy")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays of one dataset: images uint8 (n, 28, 28, 1), labels int32 (n,)."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str


def load(dataset: str, data_dir: str | None = None, tfds_dir: str | None = None,
         log: Callable[[str], None] | None = None) -> Dataset:
  """Loads `dataset` ('mnist' or 'fashion_mnist') from local IDX files via TFDS.

  Args:
    dataset: the dataset name.
    data_dir: directory of the IDX files; None means DEFAULT_DATA_DIRS[dataset].
    tfds_dir: TFDS data directory for the prepared copy; None means
      $TFDS_DATA_DIR or ~/tensorflow_datasets.
    log: where to say that a (first or repairing) preparation is happening;
      None: the logger "repro.data.datasets" (repro.run passes its lines to its log).

  Returns:
    A Dataset of its train and test arrays.
  """
  if dataset not in DEFAULT_DATA_DIRS:
    raise ReproError(f"unknown dataset {dataset!r}: use one of {sorted(DEFAULT_DATA_DIRS)}")
  source = Path(data_dir or DEFAULT_DATA_DIRS[dataset]).expanduser().resolve()
  files = idx.find_idx_files(source, dataset)
  root, config_name = tfds_offline.tfds_dir(tfds_dir), "idx_" + idx.sources_digest(files)
  prepared = tfds_offline.prepared_dir(root, dataset, config_name)
  arrays, problem = npy_cache.read_verified(prepared / DECODED, CACHED)
  if arrays is None:
    tfds_offline.check_writable(root)
    with npy_cache.lock(prepared.parent):  # runs started together prepare it once
      arrays, problem = npy_cache.read_verified(prepared / DECODED, CACHED)
      if arrays is None:
        arrays = _rebuild(dataset, files, source, root, config_name, problem,
                          log or NOTES.warning)
  train_images, train_labels, test_images, test_labels = arrays
  return Dataset(
      name=dataset,
      train_images=train_images, train_labels=train_labels,
      test_images=test_images, test_labels=test_labels,
      source=str(source))


def _rebuild(dataset: str, files: dict[str, Path], source: Path, root: Path, config_name: str,
             problem: str | None, say: Callable[[str], None]) -> list[np.ndarray]:
  """Prepares the TFDS copy and the verified cache (again, if damaged); the cached arrays."""
  prepared = tfds_offline.prepared_dir(root, dataset, config_name)
  cache = prepared / DECODED
  if cache.exists():  # a damaged cache: rebuild it, TFDS's prepared copy included
    say(f"WARNING: {problem}; rebuilding it from {source}")
    shutil.rmtree(prepared.parent, ignore_errors=True)
  else:
    say(f"preparing {dataset} from {source} with tensorflow_datasets into {root} (once)")
  for split in idx.SPLITS:
    idx.read_split(files, split)  # clear errors before TFDS sees the files
  # The round trip IDX -> TFDS (array_record) -> cache, measured against
  # idx.read_split on Debian's Fashion-MNIST with tensorflow-datasets 4.9.10:
  # the same 60000 and 10000 examples byte for byte (labels cast to int32
  # below), in another order. TFDS writes examples sorted by a salted hash of
  # their keys (the IDX index; tensorflow_datasets/core/shuffle.py), so the
  # order is a fixed permutation of the index alone: the same for other bytes
  # of the same size, and a 256-example set's order is the 60000's restricted
  # to indices < 256; no train example and 1 of the 10000 test examples stay
  # in place. What it buys: that order, which every run's shuffle permutes, so
  # the data fingerprints and golden digests depend on it (reading the IDX
  # files directly would change the bits of every run); and a prepared TFDS
  # copy that repro.data.source.TFDS and tfds_split can read.
  builder = tfds_offline.prepare_idx(dataset, source, root, config_name)
  decoded = {}
  for split in idx.SPLITS:
    examples = tfds_offline.read_examples(builder, split)
    decoded[f"{split}-labels.npy"] = examples["label"].astype(np.int32)
    decoded[f"{split}-images.npy"] = examples["image"]
  npy_cache.write(cache, decoded)
  arrays, problem = npy_cache.read_verified(cache, CACHED)
  if arrays is None:
    raise ReproError(f"the data cache {cache} cannot be written intact ({problem}): pass "
                     f"--task.tfds_dir=DIR on a healthy disk")
  return arrays
