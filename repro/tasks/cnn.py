"""The reference task: the Flax tutorial's CNN on Fashion-MNIST, Adam, batch 64.

    bin/train --seed=0 --epochs=3          # test accuracy 0.90

It is the default task; its bits are the golden digests of tests/golden.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from repro.errors import ReproError
from repro.tasks.images import ImageClassifier

# Recorded in the identity; bump when the architecture, its init or the way a
# layer is computed changes (any of these changes the bits). v1 computed the
# convolutions as im2col matrix products (a scan body ran nnx.Conv's kernel
# gradient 10x slower on XLA:CPU); v2 is the article's model as written, run by
# the per-step program on CPU (repro.train.programs), which is faster still; v3 is v2
# with its convolutions on Eigen instead of YNNPACK and XLA:CPU's pool fixed by
# --cpu_threads (repro.machine.backend): other bits, 1.8x faster, the same on any CPU count.
ARCHITECTURE = "DigitClassifier-v3:conv32-avgpool-conv64-avgpool-dense256-dense10"


class DigitClassifier(nnx.Module):
  """conv 1->32 3x3, relu, avgpool 2/2, conv 32->64 3x3, relu, avgpool, dense 256, dense 10.

  The source article's DigitClassifier as written. With a dropout rate, an
  nnx.Dropout (holding its own stream, which repro reseeds every step) follows
  the 256-unit layer.
  """

  def __init__(self, *, rngs: nnx.Rngs, dropout: float = 0.0):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x / 255  # uint8 pixels -> [0, 1]
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.linear1(x))
    if self.dropout is not None:
      x = self.dropout(x)
    return self.linear2(x)


@dataclasses.dataclass
class CNN(ImageClassifier):
  """The reference CNN classifier. Options: those of ImageClassifier, and

    dropout: dropout rate after the 256-unit layer; 0 disables it.
  """

  name = "cnn"
  architecture = ARCHITECTURE

  dropout: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    if isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
      raise ReproError(f"dropout must be in [0, 1), got {self.dropout!r}: pass "
                       f"--task.dropout=P with 0 <= P < 1")

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    return DigitClassifier(rngs=rngs, dropout=self.dropout)
