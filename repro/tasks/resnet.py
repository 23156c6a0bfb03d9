"""A small residual CNN with BatchNorm and Dropout on Fashion-MNIST.

    bin/train --task=repro.tasks.resnet:ResNet --epochs=2

It shows the two kinds of state besides the parameters that a step updates:
nnx.BatchNorm's running statistics (averaged over micro-shards in a fixed
order, so they too are the same on every device count) and the stream that
nnx.Dropout holds (reseeded from (seed, step, micro-shard) before every step).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from repro.errors import ReproError
from repro.tasks.images import ImageClassifier


class Residual(nnx.Module):
  """x + BN(conv(relu(BN(conv(x))))), then relu."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(width, width, kernel_size=(3, 3), rngs=rngs)
    self.norm1 = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(width, width, kernel_size=(3, 3), rngs=rngs)
    self.norm2 = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.norm1(self.conv1(x)))
    return nnx.relu(x + self.norm2(self.conv2(y)))


class SmallResNet(nnx.Module):
  """stem conv, residual block, pool, widening conv, residual block, pool, global mean, dense."""

  def __init__(self, width: int, dropout: float, *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(1, width, kernel_size=(3, 3), rngs=rngs)
    self.stem_norm = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    self.block1 = Residual(width, rngs=rngs)
    self.widen = nnx.Conv(width, 2 * width, kernel_size=(3, 3), rngs=rngs)
    self.widen_norm = nnx.BatchNorm(2 * width, momentum=0.9, rngs=rngs)
    self.block2 = Residual(2 * width, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(2 * width, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_norm(self.stem(x / 255)))
    x = nnx.avg_pool(self.block1(x), window_shape=(2, 2), strides=(2, 2))  # 14x14
    x = nnx.relu(self.widen_norm(self.widen(x)))
    x = nnx.avg_pool(self.block2(x), window_shape=(2, 2), strides=(2, 2))  # 7x7
    return self.head(self.dropout(x.mean(axis=(1, 2))))


@dataclasses.dataclass
class ResNet(ImageClassifier):
  """Options: those of ImageClassifier, and

    width: channels of the first stage (the second has twice as many).
    dropout: dropout rate before the classifier.
  """

  name = "resnet"
  architecture = "SmallResNet-v2:stem-res-pool-widen-res-pool-mean-dropout-dense"

  width: int = 16
  dropout: float = 0.1

  def __post_init__(self):
    super().__post_init__()
    if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
      raise ReproError(f"width must be a positive integer, got {self.width!r}")
    if not 0 <= self.dropout < 1:
      raise ReproError(f"dropout must be in [0, 1), got {self.dropout!r}")

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    return SmallResNet(self.width, self.dropout, rngs=rngs)
