"""Tasks with a mistake each, as a user might write them: repro must say what is wrong in one line."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repro import Splits, Task

not_a_task = 42
X = np.linspace(-1, 1, 128, dtype=np.float32).reshape(64, 2)


class Linear(nnx.Module):
  def __init__(self, rngs):
    self.layer = nnx.Linear(2, 3, rngs=rngs)

  def __call__(self, x):
    return self.layer(x)


@dataclasses.dataclass
class Fine(Task):
  name = "fine"

  def model(self, rngs):
    return Linear(rngs)

  def loss(self, model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)

  def data(self):
    return Splits(train={"x": X, "y": np.zeros((64, 3), np.float32)})


class RaisesInModel(Fine):
  def model(self, rngs):
    raise ValueError("width 0 is not a width")


class EagerOnlyModel(Fine):
  """Its model() reads concrete values (as one that restores weights from a file with
  Orbax does): it works eagerly, and fails when repro builds it again inside eval_shape."""

  def model(self, rngs):
    model = Linear(rngs)
    float(model.layer.kernel[0, 0])  # a tracer under nnx.eval_shape
    return model


class RaisesInData(Fine):
  def data(self):
    return open("/nonexistent/train.npy", "rb")


class NonScalarLoss(Fine):
  def loss(self, model, batch):
    return (model(batch["x"]) - batch["y"]) ** 2  # forgot the mean


class WhileLoopLoss(Fine):
  """Its loss traces, but its gradient does not: it fails only inside the compiled step."""

  def loss(self, model, batch):
    mse = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
    return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 1.0, c[1] + 1), (mse, 0))[0]


class AugmentDropsAField(Fine):
  """Its augment returns an example without "y": the loss fails on the augmented batch."""

  def augment(self, example, key):
    return {"x": example["x"] + jax.random.normal(key, example["x"].shape)}


class RaisesInEvalMetrics(Fine):
  def eval_metrics(self, model, batch):
    raise KeyError("label")


class SplitsDisagree(Fine):
  def data(self):
    return Splits(train={"x": X, "y": np.zeros((63, 3), np.float32)})


class EmptySplit(Fine):
  def data(self):
    return Splits(train={"x": X[:0], "y": np.zeros((0, 3), np.float32)})


class TestFeaturesDiffer(Fine):
  def data(self):
    return Splits(train={"x": X, "y": np.zeros((64, 3), np.float32)},
                  test={"x": X[:8, :1], "y": np.zeros((8, 3), np.float32)})


class Counter(nnx.Module):
  """Counts its calls in a non-float Variable (checkpointed like any state)."""

  def __init__(self, rngs):
    self.layer = nnx.Linear(2, 3, rngs=rngs)
    self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    self.calls[...] = self.calls[...] + 1
    return self.layer(x)


@dataclasses.dataclass
class DivergesAtStep(Fine):
  """Its loss turns NaN from its `at`-th training step on (a diverging run, made exact)."""

  name = "diverges"
  at: int = 26

  def model(self, rngs):
    return Counter(rngs)

  def loss(self, model, batch):
    mse = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
    return jnp.where(model.calls[...] >= self.at, jnp.nan, mse)
