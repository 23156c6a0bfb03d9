"""repro.train.rewrites: every rewrite gives the bits of the primitive it replaces."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import repro
from repro.train import identity
from repro.train import rewrites
from repro.tasks.images import ImageClassifier
import tiny_tasks
from bits import assert_bitwise_equal, read_losses, restore_state

pytestmark = pytest.mark.quick


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _tied(rs, shape, dtype=np.float32):
  """Values with many ties (zeros of both signs, repeated small integers)."""
  x = np.maximum(rs.integers(-3, 3, shape), 0) * rs.choice([1, -1], shape)
  return jnp.asarray(x.astype(dtype))


@pytest.mark.parametrize("shape,window", [
    ((8, 28, 28, 32), (1, 2, 2, 1)),   # nnx.max_pool(x, (2, 2), strides=(2, 2))
    ((4, 9, 7, 3), (1, 2, 2, 1)),      # an odd size: the last row and column are in no window
    ((4, 12, 12, 5), (1, 3, 3, 1)),
    ((3, 10, 6), (1, 2, 3)),
])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_the_max_pool_gradient_has_the_primitives_bits(shape, window, dtype):
  rs = np.random.default_rng(0)
  x = _tied(rs, shape, dtype)
  g = jnp.asarray(rs.normal(size=[s // w for s, w in zip(shape, window)]).astype(dtype))
  g = g.at[0].set(-0.0).at[1].set(0.0)
  pool = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
  want = jax.jit(lambda x, g: jax.vjp(pool, x)[1](g)[0])(x, g)
  got = jax.jit(rewrites.scatter_to_first_max, static_argnums=2)(g, x, window)
  np.testing.assert_array_equal(_bits(got), _bits(want))


class PoolNet(nnx.Module):
  """A CNN as a Flax user writes one: max pooling after BatchNorm, before the ReLU."""

  def __init__(self, rngs: nnx.Rngs, window=(2, 2), strides=(2, 2)):
    self.window, self.strides = window, strides
    self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(self.norm(self.conv(x)), self.window, strides=self.strides)
    x = nnx.relu(jax.jit(lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2)))(x))
    return self.head(x.mean(axis=(1, 2)))


def _train_steps(window, strides, fast: bool, steps: int = 3):
  """The parameters after `steps` steps of PoolNet (value_and_grad + optax), jitted."""
  model = PoolNet(nnx.Rngs(0), window, strides)
  graphdef, state = nnx.split(model)
  optimizer = optax.adam(1e-2)
  rs = np.random.default_rng(1)
  x = jnp.asarray(rs.integers(0, 4, (steps, 16, 12, 12, 1)).astype(np.float32))
  y = jnp.asarray(rs.integers(0, 10, (steps, 16)))

  def grads(state, x, y):
    def loss_of(state):
      model = nnx.merge(graphdef, state)
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), nnx.state(model)
    return jax.grad(loss_of, has_aux=True)(state)

  grads_of = rewrites.fast(grads) if fast else grads

  @jax.jit
  def step(state, opt, x, y):
    g, updated = grads_of(state, x, y)
    g = jax.tree.map(lambda a: a if jnp.issubdtype(a.dtype, jnp.floating) else jnp.zeros_like(a), g)
    updates, opt = optimizer.update(g, opt)
    return optax.apply_updates(updated, updates), opt

  opt = optimizer.init(state)
  for i in range(steps):
    state, opt = step(state, opt, x[i], y[i])
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state)), jax.make_jaxpr(grads_of)(state, x[0], y[0])


def test_a_max_pool_cnn_trains_to_the_same_bits_rewritten():
  want, slow = _train_steps((2, 2), (2, 2), fast=False)
  got, rewritten = _train_steps((2, 2), (2, 2), fast=True)
  assert "select_and_scatter_add" in str(slow)
  assert "select_and_scatter_add" not in str(rewritten)  # both poolings, the jitted one too
  assert_bitwise_equal(got, want)


def test_overlapping_windows_are_left_to_the_primitive():
  want, _ = _train_steps((3, 3), (2, 2), fast=False)
  got, rewritten = _train_steps((3, 3), (2, 2), fast=True)
  assert str(rewritten).count("select_and_scatter_add") == 1  # the 3x3 one; the 2x2 rewritten
  assert_bitwise_equal(got, want)


@dataclasses.dataclass
class MaxPoolTask(ImageClassifier):
  name = "max_pool_cnn"

  def model(self, rngs):
    return PoolNet(rngs)

  def data(self):
    rs = np.random.default_rng(2)
    images = rs.integers(0, 4, (64, 12, 12, 1)).astype(np.float32)
    labels = rs.integers(0, 10, 64).astype(np.int32)
    return repro.Splits(train={"image": images, "label": labels},
                        test={"image": images[:16], "label": labels[:16]})


def test_repro_trains_a_max_pool_task_to_the_bits_it_gets_without_the_rewrite(tmp_path,
                                                                             monkeypatch):
  def train(name):
    config = repro.Config(output=str(tmp_path / name), batch_size=16, max_steps=6,
                          chunk_steps=3, checkpoint_every=6, progress=False)
    repro.run(config, task=MaxPoolTask(), log=lambda _: None)
    return restore_state(tmp_path / name / "6"), read_losses(tmp_path / name)

  state, losses = train("rewritten")
  monkeypatch.setattr(rewrites, "fast", lambda fn: fn)
  state_as_traced, losses_as_traced = train("as_traced")
  assert_bitwise_equal(state, state_as_traced)
  assert losses == losses_as_traced


CONVS = {  # input shape, kernel shape, arguments; each differentiated for both operands
    "2d": ((8, 10, 10, 4), (3, 3, 4, 6), dict(window_strides=(1, 1), padding="SAME")),
    "2d-stride2": ((8, 10, 10, 4), (5, 5, 4, 6), dict(window_strides=(2, 2), padding="SAME")),
    "2d-dilated": ((8, 12, 12, 4), (3, 3, 4, 6),
                   dict(window_strides=(1, 1), padding="VALID", rhs_dilation=(2, 2))),
    "2d-groups": ((8, 10, 10, 4), (3, 3, 2, 6),
                  dict(window_strides=(1, 1), padding="SAME", feature_group_count=2)),
    "1d": ((8, 20, 4), (5, 4, 6), dict(window_strides=(1,), padding="SAME")),
    "3d": ((4, 6, 6, 6, 2), (3, 3, 3, 2, 4), dict(window_strides=(1, 1, 1), padding="SAME")),
}
# Gradients the layout rewrite does not take: a strided convolution's input gradient
# dilates its input (the DILATED rewrite's, tested below); a grouped one's kernel gradient
# has batch groups (left to XLA, element by element in a loop).
LEFT = {"2d-stride2": 0, "2d-groups": 1}


def _conv_gradients(name: str):
  shape, kernel_shape, arguments = CONVS[name]
  letters = "DHW"[-(len(shape) - 2):]
  specs = jax.lax.conv_dimension_numbers(shape, kernel_shape,
                                         (f"N{letters}C", f"{letters}IO", f"N{letters}C"))
  rs = np.random.default_rng(3)
  x = jnp.asarray(rs.normal(size=shape).astype(np.float32))
  kernel = jnp.asarray(rs.normal(size=kernel_shape).astype(np.float32))
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, dimension_numbers=specs, **arguments)
  return jax.grad(lambda x, k: (conv(x, k) ** 2).sum(), argnums=(0, 1)), (x, kernel)


@pytest.mark.parametrize("name", sorted(CONVS))
def test_a_convolutions_gradients_have_the_same_bits_in_the_canonical_layout(name):
  grads, args = _conv_gradients(name)
  with rewrites.recording() as applied:
    got = jax.jit(rewrites.fast(grads))(*args)
  assert applied == ({rewrites.CONV, rewrites.DILATED} if name == "2d-stride2" else
                     {rewrites.CONV})
  for i, (a, b) in enumerate(zip(got, jax.jit(grads)(*args))):
    if name != "2d-stride2" or i != LEFT[name]:
      np.testing.assert_array_equal(_bits(a), _bits(b))
  # In a loop, where XLA:CPU leaves other layouts to element-by-element sums, the
  # rewritten gradients are those of the loop-free program.
  in_loop = jax.jit(lambda *args: jax.lax.scan(
      lambda c, _: (c, rewrites.fast(grads)(*args)), 0.0, None, length=2)[1])(*args)
  for i, (a, b) in enumerate(zip(in_loop, got)):
    if LEFT.get(name) != i:
      np.testing.assert_array_equal(_bits(a[1]), _bits(b))


DILATED = {  # input shape, kernel shape, lhs_dilation, padding: a ConvTranspose's forward pass
    "2d": ((4, 7, 7, 3), (3, 3, 3, 5), (2, 2), ((2, 1), (2, 1))),     # 3x3, stride 2, SAME
    "2d-odd": ((2, 7, 9, 4), (4, 3, 4, 3), (3, 2), ((3, 3), (2, 2))),  # 4x3, stride 3x2, VALID
    "2d-cropped": ((2, 6, 6, 2), (5, 5, 2, 2), (2, 2), ((-1, 0), (1, -2))),  # negative padding
    "2d-sparse": ((2, 5, 5, 2), (2, 2, 2, 3), (4, 4), ((1, 1), (1, 1))),  # taps miss phases
    "2d-small": ((2, 2, 2, 2), (3, 3, 2, 2), (3, 3), ((0, 0), (0, 0))),  # phases with no output
    "1d": ((4, 11, 3), (5, 3, 2), (3,), ((4, 4),)),
    "3d": ((2, 4, 4, 4, 2), (3, 3, 3, 2, 2), (2, 2, 2), ((1, 1), (1, 1), (1, 1))),
}


def _input_dilations(fn, *args) -> set[tuple]:
  """The lhs_dilation of every convolution that fn's jaxpr runs (calls included)."""
  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        yield tuple(eqn.params["lhs_dilation"])
      for inner in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from walk(inner)
  return set(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.parametrize("name", sorted(DILATED))
def test_a_dilated_inputs_convolution_and_its_gradients_are_computed_by_phases(name):
  """Not the primitive's bits (another order of additions), its values, and the same bits in
  a loop as outside one."""
  shape, kernel_shape, dilation, padding = DILATED[name]
  letters = "DHW"[-(len(shape) - 2):]
  specs = jax.lax.conv_dimension_numbers(shape, kernel_shape,
                                         (f"N{letters}C", f"{letters}IO", f"N{letters}C"))
  rs = np.random.default_rng(4)
  x = jnp.asarray(rs.normal(size=shape).astype(np.float32))
  kernel = jnp.asarray(rs.normal(size=kernel_shape).astype(np.float32))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1,) * len(dilation), padding, lhs_dilation=dilation, dimension_numbers=specs)
  value_and_grads = lambda x, k: (conv(x, k), jax.grad(lambda x, k: (conv(x, k) ** 2).sum(),
                                                        argnums=(0, 1))(x, k))
  with rewrites.recording() as applied:
    got = jax.jit(rewrites.fast(value_and_grads))(x, kernel)
  assert rewrites.DILATED in applied
  assert _input_dilations(value_and_grads, x, kernel) != {(1,) * len(dilation)}
  assert _input_dilations(rewrites.fast(value_and_grads), x, kernel) == {(1,) * len(dilation)}
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(jax.jit(value_and_grads)(x, kernel))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()))
  in_loop = jax.jit(lambda x, k: jax.lax.scan(
      lambda c, _: (c, rewrites.fast(value_and_grads)(x, k)), 0.0, None, length=2)[1])(x, kernel)
  for a, b in zip(jax.tree.leaves(in_loop), jax.tree.leaves(got)):
    np.testing.assert_array_equal(_bits(a[1]), _bits(b))


def _identity(tmp_path, name: str, task, **overrides) -> dict:
  config = repro.Config(output=str(tmp_path / name), batch_size=16, max_steps=2,
                        checkpoint_every=2, progress=False, **overrides)
  repro.run(config, task=task, log=lambda _: None)
  return json.loads((tmp_path / name / "2" / "manifest" / "metadata").read_text())["identity"]


def test_a_scan_of_convolutions_records_the_layout_and_other_runs_do_not(tmp_path):
  """The rewrite changes the bits of convolutions in a loop only: their runs say so."""
  assert _identity(tmp_path, "scan", MaxPoolTask(), program="scan")[
      identity.CONV_LAYOUT] == rewrites.CONV_SCHEME
  assert identity.CONV_LAYOUT not in _identity(tmp_path, "step", MaxPoolTask(), program="step")
  assert identity.CONV_LAYOUT not in _identity(tmp_path, "no_conv", tiny_tasks.regression(),
                                               program="scan")


class UpNet(nnx.Module):
  """A strided convolution down and an nnx.ConvTranspose up, as an autoencoder's are."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
    self.down = nnx.Conv(4, 8, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
    self.up = nnx.ConvTranspose(8, 4, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(4, 10, rngs=rngs)

  def __call__(self, x):
    x = self.up(nnx.relu(self.down(nnx.relu(self.stem(x)))))
    return self.head(x.mean(axis=(1, 2)))


@dataclasses.dataclass
class UpTask(MaxPoolTask):
  name = "up_cnn"

  def model(self, rngs):
    return UpNet(rngs)


def test_a_dilated_inputs_convolutions_are_recorded_in_every_program(tmp_path):
  """They have other bits than the primitive's, in a loop or not: every run with them says so,
  and a checkpoint without the record is refused, naming it."""
  for program in ("step", "scan"):
    found = _identity(tmp_path, program, UpTask(), program=program)
    assert found[identity.DILATED_CONV] == rewrites.DILATED_SCHEME
  assert identity.DILATED_CONV not in _identity(tmp_path, "pool", MaxPoolTask(), program="step")
  manifest = tmp_path / "step" / "2" / "manifest" / "metadata"
  recorded = json.loads(manifest.read_text())
  del recorded["identity"][identity.DILATED_CONV]  # as a checkpoint of an earlier version
  manifest.write_text(json.dumps(recorded))
  config = repro.Config(output=str(tmp_path / "step"), batch_size=16, max_steps=4,
                        checkpoint_every=2, progress=False, program="step")
  with pytest.raises(repro.ReproError, match=identity.DILATED_CONV):
    repro.run(config, task=UpTask(), log=lambda _: None)
