"""Tiny, learnable 28x28 datasets written as real IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Class k lights a 7x7 block at a position of its own, over uniform noise."""
  gen = np.random.default_rng(seed)
  labels = gen.integers(0, 10, size=n).astype(np.uint8)
  images = gen.integers(0, 96, size=(n, 28, 28)).astype(np.uint8)
  for i, k in enumerate(labels):
    r, c = divmod(int(k), 4)
    images[i, 3 + 7 * r:10 + 7 * r, 1 + 7 * c:8 + 7 * c] = 255
  return images, labels


def write_dataset(directory: Path, n_train: int = 256, n_test: int = 64, seed: int = 0,
                  gz: bool = True) -> Path:
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
    images, labels = make_split(n, s)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
      name = f"{prefix}-{kind}-ubyte"
      blob = idx_bytes(array)
      if gz:
        (directory / (name + ".gz")).write_bytes(gzip.compress(blob, mtime=0))
      else:
        (directory / name).write_bytes(blob)
  return directory
