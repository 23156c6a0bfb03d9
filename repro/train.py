"""The pure training core: a step, a scanned chunk of steps, and evaluation.

State is the nnx.State of {'model', 'optimizer'} (a pytree of arrays); the
graphdef is static. One chunk is one compiled program that scans a fixed number
of steps and masks the tail, so every run (interrupted or not, whatever its
checkpoint interval) executes every step with the same program and gets the
same bits.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from repro import shuffle

EVAL_BATCH = 1000
_GOLDEN = 2654435761  # Knuth's multiplicative hash constant (uint32)


def fingerprint(arrays) -> jax.Array:
  """A uint32 fingerprint of the exact bits of a pytree of arrays (traceable).

  Integer arithmetic wraps modulo 2**32 and is associative, so the result
  does not depend on reduction order: equal bits give equal fingerprints on
  any backend, and a changed bit changes it (up to 2**-32 collisions).
  Position-weighted, so permuted elements count as a change.
  """
  total = jnp.uint32(0)
  for leaf in jax.tree.leaves(arrays):
    bits = leaf.ravel()
    if bits.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(bits, jnp.uint32)
    bits = bits.astype(jnp.uint32)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(_GOLDEN) + jnp.uint32(1)
    total = total * jnp.uint32(31) + jnp.sum(bits * weights, dtype=jnp.uint32)
  return total


def loss_fn(model: nnx.Module, images: jax.Array, labels: jax.Array,
            dropout_key: jax.Array | None = None) -> jax.Array:
  logits = model(images, dropout_key)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array,
               labels: jax.Array, dropout_key: jax.Array | None = None
               ) -> tuple[nnx.State, jax.Array]:
  """One Adam step on one batch: (state, images, labels) -> (state, loss)."""
  objects = nnx.merge(graphdef, state)
  loss, grads = nnx.value_and_grad(loss_fn)(objects["model"], images, labels, dropout_key)
  objects["optimizer"].update(objects["model"], grads)
  return nnx.state(objects), loss


def make_train_chunk(graphdef: nnx.GraphDef, *, chunk_steps: int, num_examples: int,
                     batch_size: int, dropout: bool = False) -> Callable:
  """A jitted fn(state, images, labels, keys, first_step, num_steps) -> (state, trace).

  Runs global steps first_step .. first_step + num_steps - 1 (num_steps <=
  chunk_steps) over the device-resident data; keys holds the 'shuffle' and
  'dropout' streams, and step s (0-based) draws its dropout mask from
  fold_in(keys['dropout'], s). trace is {'loss', 'batch', 'params'}, each with
  chunk_steps entries of which the first num_steps are real: the loss of each
  step, the fingerprint of its batch indices, and the fingerprint of the model
  parameters after it.
  """

  @jax.jit
  def train_chunk(state, images, labels, keys, first_step, num_steps):
    shuffle_key = keys["shuffle"]
    first_epoch, perms = shuffle.chunk_permutations(
        shuffle_key, first_step, chunk_steps, num_examples, batch_size)

    def step(state, global_step):
      idx = shuffle.batch_from_permutations(
          first_epoch, perms, global_step, num_examples, batch_size)
      step_key = jax.random.fold_in(keys["dropout"], global_step) if dropout else None
      state, loss = train_step(graphdef, state, images[idx], labels[idx], step_key)
      return state, loss, idx

    return _scan_steps(step, state, first_step, num_steps, chunk_steps)

  return train_chunk


def _scan_steps(step: Callable, state, first_step, num_steps, chunk_steps: int):
  """Scans step(state, global_step) -> (state, loss, batch indices) over a chunk.

  Steps past num_steps are masked (lax.cond), so one program serves every
  chunk length; the trace holds each step's loss and the fingerprints of its
  batch and of the parameters after it.
  """

  def body(state, i):
    def run(state):
      state, loss, idx = step(state, first_step + i)
      return state, {"loss": loss, "batch": fingerprint(idx),
                     "params": fingerprint(state["model"])}

    def skip(state):
      return state, {"loss": jnp.zeros((), jnp.float32), "batch": jnp.uint32(0),
                     "params": jnp.uint32(0)}

    return jax.lax.cond(i < num_steps, run, skip, state)

  return jax.lax.scan(body, state, jnp.arange(chunk_steps, dtype=jnp.int32))


def make_sharded_train_chunk(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *,
                             chunk_steps: int, num_examples: int, batch_size: int,
                             dropout: bool = False, micro_shards: int = 0) -> Callable:
  """make_train_chunk's function, data-parallel over the devices of `mesh`.

  Every device holds the whole state and data set (replicated) and computes the
  same global batch indices; device d takes its slice of the global batch.
  The loss is the mean over the global batch, as on one device.

  micro_shards=0: device d computes the gradient of its batch_size/D examples
  and the gradients are summed with psum. The reduction order follows the
  device count, so the bits depend on it (each count is repeatable).

  micro_shards=M (topology-invariant mode): the global batch is cut into M
  fixed micro-shards of batch_size/M examples; micro-shard m always holds the
  same examples and draws its dropout mask from fold_in(step key, m). Each
  device runs the same micro-shard program over its M/D micro-shards in a
  loop whose trip count is a run-time value (so XLA compiles one body for
  every device count), the per-micro-shard gradients are all-gathered, and
  summed in the order 0, 1, ..., M-1 on every device. The result is the same
  bits on any device count dividing M.
  """
  axis = mesh.axis_names[0]
  num_devices = mesh.shape[axis]
  shards = micro_shards or num_devices
  shard_size = batch_size // shards
  local_shards = shards // num_devices

  def loss_sum(model_state, model_def, images, labels, key):
    model = nnx.merge(model_def, model_state)
    logits = model(images, key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

  def chunk(state, images, labels, keys, first_step, num_steps, trip):
    first_epoch, perms = shuffle.chunk_permutations(
        keys["shuffle"], first_step, chunk_steps, num_examples, batch_size)
    device = jax.lax.axis_index(axis)

    def step(state, global_step):
      idx = shuffle.batch_from_permutations(first_epoch, perms, global_step, num_examples,
                                            batch_size)
      objects = nnx.merge(graphdef, state)
      model_def, model_state = nnx.split(objects["model"])
      step_key = jax.random.fold_in(keys["dropout"], global_step) if dropout else None

      def micro(k, acc):
        m = device * local_shards + k
        part = jax.lax.dynamic_slice_in_dim(idx, m * shard_size, shard_size)
        key = jax.random.fold_in(step_key, m) if dropout else None
        loss, grads = jax.value_and_grad(loss_sum)(model_state, model_def, images[part],
                                                   labels[part], key)
        return jax.tree.map(lambda buf, x: buf.at[k].set(x), acc, (loss, grads))

      acc = jax.tree.map(lambda x: jnp.zeros((local_shards,) + x.shape, x.dtype),
                         (jnp.zeros((), jnp.float32), model_state))
      losses, grads = jax.lax.fori_loop(0, trip, micro, acc)
      if micro_shards:
        losses, grads = jax.lax.all_gather((losses, grads), axis, tiled=True)
        total = lambda x: functools.reduce(jnp.add, [x[m] for m in range(shards)])
      else:
        total = lambda x: jax.lax.psum(x[0], axis)
      loss = total(losses) / batch_size
      grads = jax.tree.map(lambda g: total(g) / batch_size, grads)
      objects["optimizer"].update(objects["model"], grads)
      return nnx.state(objects), loss, idx

    return _scan_steps(step, state, first_step, num_steps, chunk_steps)

  replicated = jax.sharding.PartitionSpec()
  sharded = jax.jit(jax.shard_map(chunk, mesh=mesh, in_specs=replicated,
                                  out_specs=replicated, check_vma=False))

  def train_chunk(state, images, labels, keys, first_step, num_steps):
    return sharded(state, images, labels, keys, first_step, num_steps,
                   np.int32(local_shards))

  return train_chunk


def make_evaluate(graphdef: nnx.GraphDef) -> Callable:
  """A jitted fn(state, images, labels) -> (accuracy, mean loss) over every example."""

  @jax.jit
  def evaluate(state, images, labels):
    model = nnx.merge(graphdef, state)["model"]
    n = images.shape[0]
    batch = min(EVAL_BATCH, n)
    num_batches = -(-n // batch)
    pad = num_batches * batch - n
    images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
    labels = jnp.pad(labels, (0, pad))
    valid = jnp.arange(num_batches * batch) < n

    def body(totals, b):
      sl = lambda x: jax.lax.dynamic_slice_in_dim(x, b * batch, batch)
      logits = model(sl(images))
      mask = sl(valid)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, sl(labels))
      correct = (jnp.argmax(logits, -1) == sl(labels)) & mask
      return (totals[0] + correct.sum(), totals[1] + jnp.where(mask, losses, 0).sum()), None

    (correct, loss), _ = jax.lax.scan(
        body, (jnp.int32(0), jnp.float32(0)), jnp.arange(num_batches))
    return correct / n, loss / n

  return evaluate
