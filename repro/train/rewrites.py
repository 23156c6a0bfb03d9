"""Rewrites of the primitives XLA:CPU runs slowly, inside repro's training step.

A training step's loss and gradient are traced to a jaxpr (everything the
task's code does) and evaluated again with some equations replaced by other
operations that compute the same bits, faster. A step with nothing to
rewrite runs as traced, untouched. Each rewrite is proven bit for bit against
the primitive it replaces (tests/test_rewrites.py):

- MAX_POOL: the gradient of max pooling over windows that do not overlap
  (nnx.max_pool(x, (2, 2), strides=(2, 2)) and the like) is a
  `select_and_scatter_add`, which XLA:CPU runs element by element: measured
  on a BatchNorm CNN with two 2x2 poolings, 60% of its step. The same
  gradient is the window's first maximum (XLA's `ge` selection keeps the
  first) receiving the cotangent and every other element zero: an argmax and
  a select, vectorized. The same bits everywhere.
- CONV: a convolution whose operands are not in the layout Eigen's
  convolution takes (NHWC input, HWIO kernel): the gradients of every
  convolution. Outside loops XLA:CPU transposes them into that layout itself,
  and the rewrite, which does the same, changes no bit there. Inside a loop
  (the scan program, micro-shards) XLA:CPU does not, and runs them element by
  element: measured, a 3x3 convolution's kernel gradient took 480 ms a step
  in a scan and 3.3 ms rewritten. There the rewrite changes the bits (from
  the element-by-element sums to Eigen's), so a scan run with it records
  CONV_SCHEME in its identity (repro.train.identity).

Equal bits of one operation are not enough: XLA fuses new operations with
their neighbours, and a fused neighbour may then round differently (measured:
a BatchNorm's bias after one step). So each rewrite sits between optimization
barriers, its inputs and its output materialized as the primitive's are.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

MAX_POOL, CONV = "max_pool_gradient", "conv_layout"
CONV_SCHEME = "a loop's convolutions in Eigen's layout (repro.train.rewrites)"
_CALLS = ("jit", "pjit", "closed_call", "core_call")
_applied: contextvars.ContextVar[set | None] = contextvars.ContextVar("applied", default=None)


def fast(fn: Callable) -> Callable:
  """fn with its slow primitives rewritten; fn itself if there are none."""

  def rewritten(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    names = _targets(closed.jaxpr)
    if not names:
      return fn(*args)
    if _applied.get() is not None:
      _applied.get().update(names)
    flat = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)

  return rewritten


@contextlib.contextmanager
def recording() -> Iterator[set]:
  """Collects the names of the rewrites applied while tracing inside the block."""
  applied: set = set()
  token = _applied.set(applied)
  try:
    yield applied
  finally:
    _applied.reset(token)


def _targets(jaxpr) -> set[str]:
  """The names of the rewrites that apply to equations of `jaxpr` (or of calls in it)."""
  names = set()
  for eqn in jaxpr.eqns:
    rule = _rewrite_of(eqn)
    if rule is not None:
      names.add(rule[0])
    elif eqn.primitive.name in _CALLS:
      names |= _targets(eqn.params["jaxpr"].jaxpr)
  return names


def _rewrite_of(eqn) -> tuple[str, Callable] | None:
  """(name, replacement) for this equation, or None where it runs as it is."""
  if eqn.primitive.name == "conv_general_dilated":
    return _canonical_conv(eqn.params)
  if eqn.primitive.name == "select_and_scatter_add":
    return _scatter_to_first_max(eqn.params)
  return None


def _between_barriers(fn: Callable) -> Callable:
  return lambda *args: jax.lax.optimization_barrier(fn(*jax.lax.optimization_barrier(args)))


def _eval(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr` as traced, each rewritable equation replaced (calls inlined only
  where they hold one)."""
  env = {}
  read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    rule = _rewrite_of(eqn)
    if rule is not None:
      out = [_between_barriers(rule[1])(*values)]
    elif eqn.primitive.name in _CALLS and _targets(eqn.params["jaxpr"].jaxpr):
      inner = eqn.params["jaxpr"]
      out = _eval(inner.jaxpr, inner.consts, values)
    else:
      with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
      out = out if eqn.primitive.multiple_results else [out]
    env.update(zip(eqn.outvars, out))
  return [read(v) for v in jaxpr.outvars]


def _scatter_to_first_max(params: dict) -> tuple[str, Callable] | None:
  window, strides = tuple(params["window_dimensions"]), tuple(params["window_strides"])
  if (params["select_prim"] is not jax.lax.ge_p or window != strides
      or any(lo or hi for lo, hi in params["padding"])):
    return None  # overlapping or padded windows: the primitive's own order of additions
  return MAX_POOL, lambda source, operand: scatter_to_first_max(source, operand, window)


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


def canonical_specs(spatial: int) -> jax.lax.ConvDimensionNumbers:
  """The layout of Eigen's convolution: NHWC input, HWIO kernel, NHWC output."""
  last = spatial + 1
  around = tuple(range(1, last))
  return jax.lax.ConvDimensionNumbers((0, last) + around, (last, spatial) + tuple(range(spatial)),
                                      (0, last) + around)


def _canonical_conv(params: dict) -> tuple[str, Callable] | None:
  """A convolution in another layout as the canonical one between transposes; None if it
  is canonical already or not one Eigen runs (a dilated input, batch groups)."""
  specs = params["dimension_numbers"]
  spatial = len(specs.lhs_spec) - 2
  if (specs == canonical_specs(spatial) or params["batch_group_count"] != 1
      or any(d != 1 for d in params["lhs_dilation"])):
    return None
  lhs, rhs, out = specs
  lhs_order = (lhs[0],) + tuple(lhs[2:]) + (lhs[1],)
  rhs_order = tuple(rhs[2:]) + (rhs[1], rhs[0])
  out_order = tuple(np.argsort((out[0],) + tuple(out[2:]) + (out[1],)))
  canonical = {**params, "dimension_numbers": canonical_specs(spatial)}

  def conv(x, kernel):
    y = jax.lax.conv_general_dilated_p.bind(jnp.transpose(x, lhs_order),
                                            jnp.transpose(kernel, rhs_order), **canonical)
    return jnp.transpose(y, out_order)

  return CONV, conv
