"""A small residual CNN with BatchNorm and Dropout on Fashion-MNIST.

    bin/train --task=repro.tasks.resnet:ResNet --epochs=2

It shows the two kinds of state besides the parameters that a step updates:
nnx.BatchNorm's running statistics (averaged over micro-shards in a fixed
order, so they too are the same on every device count) and the stream that
nnx.Dropout holds (reseeded from (seed, step, micro-shard) before every step).
And data augmentation (Task.augment): each training image randomly cropped and flipped
inside the compiled step, with a key of (seed, epoch, the example); --task.augment_images=false
turns it off.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
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
    augment_images: augment each training image (Task.augment): a random crop of the image
      padded by `crop_padding` pixels, and a horizontal flip with probability 1/2.
    crop_padding: the crop's padding in pixels (0: no crop).
  """

  name = "resnet"
  # v3: convolutions on Eigen and a fixed XLA:CPU pool (repro.machine.backend) changed the bits.
  architecture = "SmallResNet-v3:stem-res-pool-widen-res-pool-mean-dropout-dense"

  width: int = 16
  dropout: float = 0.1
  augment_images: bool = True
  crop_padding: int = 2

  def __post_init__(self):
    super().__post_init__()
    if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
      raise ReproError(f"width must be a positive integer, got {self.width!r}")
    if not 0 <= self.dropout < 1:
      raise ReproError(f"dropout must be in [0, 1), got {self.dropout!r}")
    if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or (
        self.crop_padding < 0):
      raise ReproError(f"crop_padding must be an integer >= 0, got {self.crop_padding!r}")

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    return SmallResNet(self.width, self.dropout, rngs=rngs)

  def augment(self, example: dict, key: jax.Array) -> dict:
    """A random crop of the image padded by crop_padding pixels, and a random horizontal flip."""
    if not self.augment_images:
      return example
    image, pad = example["image"], self.crop_padding
    flip, crop = jax.random.split(key)
    image = jnp.where(jax.random.bernoulli(flip), image[:, ::-1], image)
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = jax.random.randint(crop, (2,), 0, 2 * pad + 1)
    return {**example, "image": jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)}
