"""Tasks that break reproducibility on purpose, each in its own way, for bin/check to catch.

Each is the regression example (an MLP on a fixed curve: no data files, and quick to
compile in the fresh processes of a check or an audit) with one defect a researcher could
write; the defects are the model's, whatever the model.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repro.tasks.regression import Regression


@dataclasses.dataclass
class NumpyInit(Regression):
  """Perturbs the initial output bias with NumPy's global (unseeded) random generator."""

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    model = super().model(rngs)
    noise = np.random.normal(size=model.out.bias.shape).astype(np.float32)
    model.out.bias[...] = model.out.bias[...] + noise
    return model


BUILT = [0]  # how many models this process built: a module-level counter


class Scaled(nnx.Module):
  """The MLP, its output scaled by a factor read from the module-level counter."""

  def __init__(self, inner: nnx.Module):
    self.inner = inner

  def __call__(self, x):
    return self.inner(x) * (1.0 + 0.01 * BUILT[0])


@dataclasses.dataclass
class ModuleCounter(Regression):
  """Counts the models built; the model reads that count (a resumed run builds one more)."""

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    BUILT[0] += 1
    return Scaled(super().model(rngs))


class Clocked(nnx.Module):
  """The MLP, its output shifted by the wall clock read through jax.pure_callback."""

  def __init__(self, inner: nnx.Module):
    self.inner = inner

  def __call__(self, x):
    now = jax.pure_callback(lambda: np.float32(time.time() % 1.0),
                            jax.ShapeDtypeStruct((), jnp.float32))
    return self.inner(x) + now


@dataclasses.dataclass
class TimeCallback(Regression):
  """A model that reads the time through a host callback."""

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    return Clocked(super().model(rngs))
