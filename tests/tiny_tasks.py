"""Tiny versions of the example tasks for the tests: a few seconds each to train.

Each is a (task spec, task options) pair, so that bin/train and helper
processes can build it too (with tests/ on sys.path for `tiny_tasks:...`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import optax
from flax import nnx

import repro
from repro.tasks.regression import Regression
from repro.tasks.resnet import ResNet

NAMES = ("cnn", "resnet", "charlm", "regression", "attention")
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


class Attender(nnx.Module):
  """Written as a Flax user writes it: no mode calls, no `deterministic` arguments."""

  def __init__(self, vocabulary: int, width: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocabulary, width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(2, width, dropout_rate=0.1, decode=False,
                                            rngs=rngs)
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.head = nnx.Linear(width, 2, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = self.norm(x + self.attention(x))
    return self.head(self.dropout(x.mean(axis=1)))


@dataclasses.dataclass
class Parity(repro.Task):
  """Is the sum of 8 tokens odd? An attention model with dropout in its attention."""

  name = "attention"
  width: int = 8

  def model(self, rngs):
    return Attender(5, self.width, rngs=rngs)

  def loss(self, model, batch):
    logits = model(batch["tokens"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  def data(self):
    i = np.arange(256)[:, None] * 7 + np.arange(8)[None, :] * 3
    tokens = ((i * i) % 5).astype(np.int32)
    label = (tokens.sum(axis=1) % 2).astype(np.int32)
    return repro.Splits(train={"tokens": tokens, "label": label},
                        test={"tokens": tokens[:32], "label": label[:32]})


@dataclasses.dataclass
class ResNetHead(ResNet):
  """The ResNet with a new head of `classes` classes (labels taken modulo `classes`): the new
  task of a fine-tune, written as a user writes one."""

  name = "resnet_head"
  classes: int = 2

  def model(self, rngs):
    model = super().model(rngs)
    model.head = nnx.Linear(model.head.in_features, self.classes, rngs=rngs)
    return model

  def data(self):
    splits = super().data()
    relabel = lambda split: {**split, "label": split["label"] % self.classes}
    return dataclasses.replace(splits, train=relabel(splits.train), test=relabel(splits.test))


def task(name: str, idx_dir: Path, tfds_dir: Path, text: Path) -> tuple[str, dict]:
  """(spec, options) of the tiny `name` task."""
  data = {"data_dir": str(idx_dir), "tfds_dir": str(tfds_dir)}
  return {
      "cnn": ("repro.tasks.cnn:CNN", {**data, "dropout": 0.3}),
      "resnet": ("repro.tasks.resnet:ResNet", {**data, "width": 4, "dropout": 0.2}),
      "charlm": ("repro.tasks.charlm:CharLM", {"text": str(text), "context": 16, "width": 16,
                                               "heads": 2, "layers": 1, "noise": 0.1}),
      "regression": ("tiny_tasks:regression", {"hidden": 8}),
      "attention": ("tiny_tasks:Parity", {"width": 8}),
  }[name]
