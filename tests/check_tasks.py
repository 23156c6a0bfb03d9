"""Tasks that break reproducibility on purpose, each in its own way, for bin/check to catch.

Each is the tiny reference CNN with one defect a researcher could write.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repro.tasks.cnn import CNN


@dataclasses.dataclass
class NumpyInit(CNN):
  """Perturbs the initial output bias with NumPy's global (unseeded) random generator."""

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    model = super().model(rngs)
    noise = np.random.normal(size=model.linear2.bias.shape).astype(np.float32)
    model.linear2.bias[...] = model.linear2.bias[...] + noise
    return model


BUILT = [0]  # how many models this process built: a module-level counter


class Scaled(nnx.Module):
  """The CNN, its logits scaled by a factor read from the module-level counter."""

  def __init__(self, inner: nnx.Module):
    self.inner = inner

  def __call__(self, x):
    return self.inner(x) * (1.0 + 0.01 * BUILT[0])


@dataclasses.dataclass
class ModuleCounter(CNN):
  """Counts the models built; the model reads that count (a resumed run builds one more)."""

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    BUILT[0] += 1
    return Scaled(super().model(rngs))


class Clocked(nnx.Module):
  """The CNN, its logits shifted by the wall clock read through jax.pure_callback."""

  def __init__(self, inner: nnx.Module):
    self.inner = inner

  def __call__(self, x):
    now = jax.pure_callback(lambda: np.float32(time.time() % 1.0),
                            jax.ShapeDtypeStruct((), jnp.float32))
    logits = self.inner(x)
    return logits + now * jnp.arange(logits.shape[-1], dtype=jnp.float32)


@dataclasses.dataclass
class TimeCallback(CNN):
  """A model that reads the time through a host callback."""

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    return Clocked(super().model(rngs))
