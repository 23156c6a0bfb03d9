"""Tiny versions of the example tasks for the tests: a few seconds each to train.

Each is a (task spec, task options) pair, so that bin/train and helper
processes can build it too (with tests/ on sys.path for `tiny_tasks:...`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repro.tasks.regression import Regression

NAMES = ("cnn", "resnet", "charlm", "regression")
WORDS = ("seed", "step", "shard", "bits", "resume", "chunk", "scan", "key", "state", "loss")


def write_text(path: Path, characters: int = 3000) -> Path:
  """A deterministic text of `characters` characters (no randomness: a word cycle)."""
  words, i = [], 0
  while sum(len(w) + 1 for w in words) < characters:
    words.append(WORDS[(i * 7 + i // 10) % len(WORDS)] + ("." if i % 9 == 8 else ""))
    i += 1
  path.write_text(" ".join(words)[:characters] + "\n", encoding="utf-8")
  return path


def regression() -> Regression:
  """The regression task on NumPy arrays passed in directly, as a Python user would."""
  x = np.linspace(-2, 2, 256, dtype=np.float32).reshape(-1, 2)
  x = np.concatenate([x, x[::-1]], axis=0)  # 256 examples of 2 features
  y = np.stack([np.sin(x[:, 0]) + x[:, 1], x[:, 0] * x[:, 1]], axis=1).astype(np.float32)
  return Regression(x=x, y=y, x_test=x[:32] + 0.01, y_test=y[:32], hidden=8)


def task(name: str, idx_dir: Path, tfds_dir: Path, text: Path) -> tuple[str, dict]:
  """(spec, options) of the tiny `name` task."""
  data = {"data_dir": str(idx_dir), "tfds_dir": str(tfds_dir)}
  return {
      "cnn": ("repro.tasks.cnn:CNN", {**data, "dropout": 0.3}),
      "resnet": ("repro.tasks.resnet:ResNet", {**data, "width": 4, "dropout": 0.2}),
      "charlm": ("repro.tasks.charlm:CharLM", {"text": str(text), "context": 16, "width": 16,
                                               "heads": 2, "layers": 1}),
      "regression": ("tiny_tasks:regression", {"hidden": 8}),
  }[name]
