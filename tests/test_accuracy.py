"""The reference result: 3 epochs of the real Fashion-MNIST reach test accuracy >= 0.88."""

from __future__ import annotations

from pathlib import Path

import pytest

from repro import Config, data, run

REAL = Path(data.DEFAULT_DATA_DIRS["fashion_mnist"])


@pytest.mark.skipif(not REAL.is_dir(), reason="apt-get install -y dataset-fashion-mnist first")
def test_three_epochs_of_fashion_mnist_reach_088(tmp_path, tfds_dir):
  # The built-in defaults: seed 0, batch 64, Adam 1e-3, Fashion-MNIST from Debian.
  result = run(Config(seed=0, epochs=3, output=str(tmp_path / "run"), progress=False,
                      task_options={"tfds_dir": str(tfds_dir)}), log=lambda _: None)
  assert result.step == 3 * (60000 // 64)
  assert result.test_accuracy >= 0.88, result
