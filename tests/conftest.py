"""Shared fixtures: a tiny synthetic IDX dataset and a small, fast Config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import idx_data  # noqa: E402
from repro import Config  # noqa: E402

N_TRAIN = 256
BATCH = 16
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 16


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
  return idx_data.write_dataset(tmp_path_factory.mktemp("idx"), n_train=N_TRAIN, n_test=64)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture
def small(idx_dir, tfds_dir, tmp_path):
  """small(name, **overrides) -> Config of a 2-epoch, 32-step run writing to tmp_path/name."""

  def make(name: str = "run", **overrides) -> Config:
    values = dict(seed=0, epochs=2, batch_size=BATCH, learning_rate=1e-3,
                  dataset="fashion_mnist", data_dir=str(idx_dir), tfds_dir=str(tfds_dir),
                  output=str(tmp_path / name), checkpoint_every=10, chunk_steps=8,
                  progress=False)
    values.update(overrides)
    return Config(**values)

  return make
