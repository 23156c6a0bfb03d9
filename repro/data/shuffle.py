"""Counter-based data order: the batch of any global step from the step alone.

Epoch e visits the training examples in the order
jax.random.permutation(fold_in(shuffle_key, e), n); global step s is batch
s % steps_per_epoch of epoch s // steps_per_epoch. The last partial batch of an
epoch is dropped. Nothing but the step needs saving to resume the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCHEME = "fold_in_permutation_v1"  # recorded in every cursor


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def epoch_permutation(shuffle_key: jax.Array, epoch, num_examples: int) -> jax.Array:
  """The order of the training examples in `epoch` (traceable)."""
  return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples)


def batch_indices(shuffle_key: jax.Array, step, num_examples: int, batch_size: int) -> jax.Array:
  """Indices of the examples of global step `step` (0-based; traceable)."""
  spe = steps_per_epoch(num_examples, batch_size)
  epoch, within = jnp.divmod(step, spe)
  perm = epoch_permutation(shuffle_key, epoch, num_examples)
  return jax.lax.dynamic_slice_in_dim(perm, within * batch_size, batch_size)


def chunk_permutations(shuffle_key: jax.Array, first_step, chunk_steps: int,
                       num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """The permutations of every epoch a chunk of steps can touch.

  Returns (first_epoch, perms) with perms[j] the order of epoch first_epoch + j.
  The number of epochs is static, so a chunk computes each permutation once
  instead of once per step.
  """
  spe = steps_per_epoch(num_examples, batch_size)
  span = (chunk_steps - 1) // spe + 2
  first_epoch = first_step // spe
  perms = jnp.stack([
      epoch_permutation(shuffle_key, first_epoch + j, num_examples) for j in range(span)])
  return first_epoch, perms


def batch_from_permutations(first_epoch, perms: jax.Array, step, num_examples: int,
                            batch_size: int) -> jax.Array:
  """Same indices as batch_indices(step), read from chunk_permutations' output."""
  spe = steps_per_epoch(num_examples, batch_size)
  epoch, within = jnp.divmod(step, spe)
  perm = perms[epoch - first_epoch]
  return jax.lax.dynamic_slice_in_dim(perm, within * batch_size, batch_size)
