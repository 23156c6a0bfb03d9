"""The reference result on real data: one epoch of Fashion-MNIST reaches test accuracy >= 0.86.

Measured: 0.9032 after the README's three epochs (v2 of the model, the per-step program);
v1 gave 0.8723 after one. One epoch keeps the suite's time down; the golden digests guard
the bits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repro import Config, run
from repro.data import datasets as data

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)

REAL = Path(data.DEFAULT_DATA_DIRS["fashion_mnist"])


@pytest.mark.skipif(not REAL.is_dir(), reason="apt-get install -y dataset-fashion-mnist first")
def test_one_epoch_of_fashion_mnist_reaches_086(tmp_path, tfds_dir):
  # The built-in defaults: seed 0, batch 64, Adam 1e-3, Fashion-MNIST from Debian.
  result = run(Config(seed=0, epochs=1, output=str(tmp_path / "run"), progress=False,
                      task_options={"tfds_dir": str(tfds_dir)}), log=lambda _: None)
  assert result.step == 60000 // 64
  assert result.test_accuracy >= 0.86, result
