"""An MLP regression on NumPy arrays passed in from Python.

    import numpy as np, repro
    from repro.tasks.regression import Regression

    x = np.linspace(-3, 3, 1024, dtype=np.float32)[:, None]
    task = Regression(x=x, y=np.sin(2 * x), hidden=64)
    result = repro.run(repro.Config(epochs=20, batch_size=32, learning_rate=3e-3), task=task)
    print(result.test)            # {} here: no test arrays were given

The arrays are data, not options: their fingerprint enters the run's identity,
so resuming with other arrays is refused. Without arrays (bin/train
--task=repro.tasks.regression:Regression) it fits a fixed curve on a grid.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repro.errors import ReproError
from repro.task import Splits, Task


def _data_field():
  return dataclasses.field(default=None, metadata={"data": True})


class MLP(nnx.Module):
  def __init__(self, inputs: int, hidden: int, outputs: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(inputs, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, outputs, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.tanh(self.hidden(x)))


def demo_curve(examples: int) -> tuple[np.ndarray, np.ndarray]:
  """A fixed 1-D curve on a grid: no randomness at all."""
  x = np.linspace(-3, 3, examples, dtype=np.float32)[:, None]
  return x, np.sin(2 * x) + 0.1 * x * x


@dataclasses.dataclass
class Regression(Task):
  """Mean squared error of an MLP. Options: hidden (units), examples (of the demo curve).

  Data (not options): x (n, features) and y (n, targets), and optionally
  x_test and y_test, as float arrays.
  """

  name = "regression"
  architecture = "MLP-v1:dense-tanh-dense"
  higher_is_better = ()

  x: np.ndarray | None = _data_field()
  y: np.ndarray | None = _data_field()
  x_test: np.ndarray | None = _data_field()
  y_test: np.ndarray | None = _data_field()
  hidden: int = 32
  examples: int = 1024

  def _train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    if (self.x is None) != (self.y is None):
      raise ReproError("task regression: pass both x and y, or neither (the demo curve)")
    if self.x is None:
      return demo_curve(self.examples)
    return np.asarray(self.x, np.float32), np.asarray(self.y, np.float32)

  def data(self) -> Splits:
    x, y = self._train_arrays()
    test = None
    if self.x_test is not None:
      test = {"x": np.asarray(self.x_test, np.float32), "y": np.asarray(self.y_test, np.float32)}
    elif self.x is None:  # the demo curve's test points lie between its training points
      tx, ty = demo_curve(self.examples + 1)
      test = {"x": (tx[:-1] + tx[1:]) / 2, "y": None}
      test["y"] = np.sin(2 * test["x"]) + 0.1 * test["x"] * test["x"]
    return Splits(train={"x": x, "y": y}, test=test,
                  source="demo curve" if self.x is None else "arrays given in Python")

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    x, y = self._train_arrays()
    if x.ndim != 2 or y.ndim != 2:
      raise ReproError(f"task regression: x and y must be 2-D (examples, features), got "
                       f"{x.shape} and {y.shape}")
    return MLP(x.shape[1], self.hidden, y.shape[1], rngs=rngs)

  def loss(self, model: nnx.Module, batch) -> jax.Array:
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)

  def eval_metrics(self, model: nnx.Module, batch) -> dict[str, jax.Array]:
    return {"loss": jnp.mean((model(batch["x"]) - batch["y"]) ** 2, axis=1)}
