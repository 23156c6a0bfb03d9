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
- DILATED: a convolution whose input is dilated (lhs_dilation > 1): a strided
  convolution's input gradient, an nnx.ConvTranspose and its kernel gradient.
  XLA:CPU runs their kernel and input gradients element by element, in a loop
  or not (measured, batch 64: a 3x3 stride-2 ConvTranspose's kernel gradient
  38.6 ms, a 5x5 stride-2 convolution's input gradient 60.8 ms). Output
  position o receives only the kernel taps that land on input elements, the
  same taps for every o of one phase (o mod the dilation): so each phase is an
  undilated convolution of the input with every d-th tap, in Eigen's layout
  (7.2 and 4.2 ms), and the phases interleave into the output. It sums in
  Eigen's order, not the primitive's: other bits, in every program, so a run
  with it records DILATED_SCHEME in its identity. On XLA:CPU only.

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

MAX_POOL, CONV, DILATED = "max_pool_gradient", "conv_layout", "dilated_conv"
CONV_SCHEME = "a loop's convolutions in Eigen's layout (repro.train.rewrites)"
DILATED_SCHEME = ("a dilated input's convolution as one undilated convolution per phase, "
                  "in Eigen's layout (repro.train.rewrites)")
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
    if any(d != 1 for d in eqn.params["lhs_dilation"]):
      return _phased_conv(eqn.params)
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
  is canonical already or not one Eigen runs (batch groups)."""
  specs = params["dimension_numbers"]
  spatial = len(specs.lhs_spec) - 2
  if specs == canonical_specs(spatial) or params["batch_group_count"] != 1:
    return None
  to_input, to_kernel, back = _in_canonical_layout(specs)
  canonical = {**params, "dimension_numbers": canonical_specs(spatial)}
  return CONV, lambda x, kernel: back(jax.lax.conv_general_dilated_p.bind(
      to_input(x), to_kernel(kernel), **canonical))

def _in_canonical_layout(specs) -> tuple[Callable, Callable, Callable]:
  """(input to NHWC, kernel to HWIO, NHWC output back to `specs`' layout) of a convolution."""
  lhs, rhs, out = specs
  lhs_order = (lhs[0],) + tuple(lhs[2:]) + (lhs[1],)
  rhs_order = tuple(rhs[2:]) + (rhs[1], rhs[0])
  out_order = tuple(np.argsort((out[0],) + tuple(out[2:]) + (out[1],)))
  return (lambda x: jnp.transpose(x, lhs_order), lambda k: jnp.transpose(k, rhs_order),
          lambda y: jnp.transpose(y, out_order))


def _phased_conv(params: dict) -> tuple[str, Callable] | None:
  """A convolution of a dilated input as its phases' undilated ones; None where the window
  is strided, the kernel dilated or the channels grouped (left as they are), and on other
  backends than XLA:CPU (a GPU's convolutions take dilated inputs as they are)."""
  if (any(s != 1 for s in params["window_strides"]) or any(d != 1 for d in params["rhs_dilation"])
      or params["feature_group_count"] != 1 or params["batch_group_count"] != 1
      or jax.default_backend() != "cpu"):
    return None
  to_input, to_kernel, back = _in_canonical_layout(params["dimension_numbers"])
  return DILATED, lambda x, kernel: back(phased_conv(to_input(x), to_kernel(kernel), params))


def _phase(j: int, d: int, low: int, size: int, taps: int, outputs: int) -> tuple[int, ...]:
  """Output positions j, j + d, ... of one spatial dimension: (their first kernel tap, how
  many taps they take, how many of them there are, the input's padding low and high)."""
  first = (low - j) % d  # the taps landing on input elements: first, first + d, ...
  used, count = -(-(taps - first) // d), -(-(outputs - j) // d)
  start = (j + first - low) // d  # the input element that tap `first` of position j meets
  return first, max(used, 0), max(count, 0), -start, start + count + used - 1 - size


def phased_conv(x: jax.Array, kernel: jax.Array, params: dict) -> jax.Array:
  """conv_general_dilated(x, kernel, **params) for NHWC x and HWIO kernel whose input is
  dilated (params["lhs_dilation"]), with unit window strides: an NHWC result."""
  n, d = x.ndim - 2, params["lhs_dilation"]
  sizes, taps = x.shape[1:-1], kernel.shape[:n]
  outputs = [(s - 1) * dd + lo + hi - t + 2
             for s, dd, (lo, hi), t in zip(sizes, d, params["padding"], taps)]
  tiles = [-(-o // dd) for o, dd in zip(outputs, d)]
  plain = {**params, "window_strides": (1,) * n, "padding": ((0, 0),) * n,
           "lhs_dilation": (1,) * n, "dimension_numbers": canonical_specs(n)}
  dtype = params["preferred_element_type"] or x.dtype
  pieces = []
  for js in np.ndindex(*d):
    phases = [_phase(*args) for args in zip(js, d, (lo for lo, _ in params["padding"]),
                                                 sizes, taps, outputs)]
    if all(used and count for _, used, count, _, _ in phases):
      padded = jax.lax.pad(x, jnp.zeros((), x.dtype),
                           [(0, 0, 0)] + [(lo, hi, 0) for *_, lo, hi in phases] + [(0, 0, 0)])
      every_dth = kernel[tuple(slice(first, None, dd) for (first, *_), dd in zip(phases, d))]
      y = jax.lax.conv_general_dilated_p.bind(padded, every_dth, **plain)
    else:  # no tap lands on the input
      y = jnp.zeros((x.shape[0], *(count for _, _, count, _, _ in phases), kernel.shape[-1]),
                    dtype)
    pieces.append(jnp.pad(y, [(0, 0)] + [(0, t - c) for t, c in zip(tiles, y.shape[1:-1])]
                          + [(0, 0)]))
  y = jnp.stack(pieces, axis=-1).reshape(pieces[0].shape + tuple(d))  # N, tiles, O, phases
  y = jnp.transpose(y, [0, *(v for i in range(n) for v in (1 + i, n + 2 + i)), n + 1])
  y = y.reshape((x.shape[0], *(t * dd for t, dd in zip(tiles, d)), kernel.shape[-1]))
  return y[(slice(None), *(slice(0, o) for o in outputs))]
