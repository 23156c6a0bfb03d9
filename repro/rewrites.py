"""Bitwise-equal rewrites of the primitives XLA:CPU runs slowly, inside repro's step.

A training step is traced to a jaxpr (the loss, its gradient, everything the
task's code does) and evaluated again with some equations replaced by other
operations that compute exactly the same bits, faster. Only a rewrite proven
bit for bit against the primitive it replaces belongs here (tests/test_rewrites.py);
a step with nothing to rewrite runs as traced, untouched.

The one rewrite today: the gradient of max pooling over windows that do not
overlap (nnx.max_pool(x, (2, 2), strides=(2, 2)) and the like) is a
`select_and_scatter_add`, which XLA:CPU runs element by element: measured on
a BatchNorm CNN with two 2x2 poolings, 60% of the step's time. The same
gradient is the window's first maximum (XLA's `ge` selection keeps the first)
receiving the cotangent, every other element zero: an argmax and a select,
vectorized.

Equal bits of one operation are not enough: XLA fuses the new operations
with their neighbours, and a fused neighbour may then round differently
(measured: a BatchNorm's bias after one step). So each rewrite sits between
optimization barriers, its inputs and its output materialized as the
primitive's are, and a whole model trained with and without it is compared
bit for bit in the tests.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

_SCATTER = "select_and_scatter_add"
_CALLS = ("jit", "pjit", "closed_call", "core_call")


def fast(fn: Callable) -> Callable:
  """fn with its slow primitives rewritten (the same bits); fn itself if there are none."""

  def rewritten(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    if not _has_target(closed.jaxpr):
      return fn(*args)
    flat = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)

  return rewritten


def _has_target(jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if _rewrite_of(eqn) is not None:
      return True
    if eqn.primitive.name in _CALLS and _has_target(eqn.params["jaxpr"].jaxpr):
      return True
  return False


def _rewrite_of(eqn) -> Callable | None:
  """The rewrite for this equation, or None where it runs as it is."""
  if eqn.primitive.name != _SCATTER or eqn.params["select_prim"] is not jax.lax.ge_p:
    return None
  window, strides = eqn.params["window_dimensions"], eqn.params["window_strides"]
  if tuple(window) != tuple(strides) or any(lo or hi for lo, hi in eqn.params["padding"]):
    return None  # overlapping or padded windows: the primitive's own order of additions
  return lambda source, operand: jax.lax.optimization_barrier(
      scatter_to_first_max(*jax.lax.optimization_barrier((source, operand)), tuple(window)))


def _eval(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr` as traced, each rewritable equation replaced (calls inlined only
  where they hold one)."""
  env = {}
  read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    rewrite = _rewrite_of(eqn)
    if rewrite is not None:
      out = [rewrite(*values)]
    elif eqn.primitive.name in _CALLS and _has_target(eqn.params["jaxpr"].jaxpr):
      inner = eqn.params["jaxpr"]
      out = _eval(inner.jaxpr, inner.consts, values)
    else:
      with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
      out = out if eqn.primitive.multiple_results else [out]
    for var, value in zip(eqn.outvars, out):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]


def scatter_to_first_max(source, operand, window: tuple) -> jax.Array:
  """select_and_scatter_add(source, operand, ge, window, strides=window, no padding).

  Each window's first largest element gets the window's cotangent, as
  `0 + g`: a zero cotangent of either sign lands as +0.0, as the primitive's
  addition leaves it. Elements past the last whole window get zero.
  """
  tiles = [size // w for size, w in zip(operand.shape, window)]
  covered = tuple(t * w for t, w in zip(tiles, window))
  nd = operand.ndim
  order = list(range(0, 2 * nd, 2)) + list(range(1, 2 * nd, 2))  # tiles first, then window
  x = operand[tuple(slice(0, c) for c in covered)]
  x = x.reshape([v for t, w in zip(tiles, window) for v in (t, w)]).transpose(order)
  x = x.reshape(tiles + [-1])
  first = jnp.argmax(x, axis=-1)[..., None] == jnp.arange(x.shape[-1])
  g = source[..., None]
  out = jnp.where(first & (g != 0), g, jnp.zeros((), source.dtype))
  out = out.reshape(tiles + list(window)).transpose(np.argsort(order)).reshape(covered)
  return jnp.pad(out, [(0, size - c) for size, c in zip(operand.shape, covered)])
