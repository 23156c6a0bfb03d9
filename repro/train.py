"""The pure training core: a step, a scanned chunk of steps, and evaluation.

State is the nnx.State of {'model', 'optimizer'} (a pytree of arrays); the
graphdef is static. One chunk is one compiled program that scans a fixed number
of steps and masks the tail, so every run (interrupted or not, whatever its
checkpoint interval) executes every step with the same program and gets the
same bits.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
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

    def body(state, i):
      def run(state):
        idx = shuffle.batch_from_permutations(
            first_epoch, perms, first_step + i, num_examples, batch_size)
        step_key = jax.random.fold_in(keys["dropout"], first_step + i) if dropout else None
        state, loss = train_step(graphdef, state, images[idx], labels[idx], step_key)
        return state, {"loss": loss, "batch": fingerprint(idx),
                       "params": fingerprint(state["model"])}

      def skip(state):
        return state, {"loss": jnp.zeros((), jnp.float32), "batch": jnp.uint32(0),
                       "params": jnp.uint32(0)}

      return jax.lax.cond(i < num_steps, run, skip, state)

    return jax.lax.scan(body, state, jnp.arange(chunk_steps, dtype=jnp.int32))

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
