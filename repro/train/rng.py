"""One seed -> named, independent key streams. No global random state anywhere.

Per-step randomness is a function of (seed, step, micro-shard) alone:
`step_key` folds the global step (and the micro-shard) into the 'dropout'
stream, and `reseed` gives every nnx.RngStream a model holds a key folded
from that and from the stream's own path in the model. So a module that
carries its own nnx.Rngs (nnx.Dropout, say) draws the same numbers at step s
however often the program ran before, and two such modules never share a key.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
from flax import nnx

# Each stream is fold_in(root, index). The indices are part of the bit
# contract: renumbering them changes every trained weight.
STREAMS = {"params": 0, "shuffle": 1, "dropout": 2, "augment": 3}
# Recorded with the identity of every run whose model holds RngStreams.
RESEED_SCHEME = "fold_in(fold_in(dropout, step)[, micro_shard], crc32(stream path))"


def streams(seed: int) -> dict[str, jax.Array]:
  """Returns {'params': key, 'shuffle': key, 'dropout': key, 'augment': key} derived from seed.

  Example:
    >>> keys = streams(0)
    >>> sorted(keys)
    ['augment', 'dropout', 'params', 'shuffle']
  """
  root = jax.random.key(seed)
  return {name: jax.random.fold_in(root, index) for name, index in STREAMS.items()}


def init_rngs(keys: dict[str, jax.Array]) -> nnx.Rngs:
  """The nnx.Rngs a task's model is built from: 'params', and a default stream.

  Streams a module keeps (e.g. nnx.Dropout's) fork from the default one at
  init; repro reseeds them before every step, so that value matters only for
  the initial state.
  """
  return nnx.Rngs(params=keys["params"], default=keys["dropout"])


def step_key(keys: dict[str, jax.Array], step, shard=None) -> jax.Array:
  """The key of global step `step`, and of micro-shard (or device) `shard` if given."""
  key = jax.random.fold_in(keys["dropout"], step)
  return key if shard is None else jax.random.fold_in(key, shard)


def example_key(keys: dict[str, jax.Array], epoch, index) -> jax.Array:
  """The key that augments the example at position `index` of the train split in `epoch`.

  A function of (seed, epoch, example) alone: not of the example's slot in the batch, the
  device, the micro-shard or the process count (traceable; `index` may be an array).
  """
  return jax.random.fold_in(jax.random.fold_in(keys["augment"], epoch), index)


def _path_id(path: tuple) -> int:
  return zlib.crc32("/".join(map(str, path)).encode()) & 0x7FFFFFFF


def reseed(model: nnx.Module, key: jax.Array) -> None:
  """Sets every RngStream in `model` to fold_in(key, its path) with count 0 (traceable)."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.RngStream):
      new = jax.random.fold_in(key, _path_id(path))
      shape = node.key.shape
      if shape:  # a stream split for vmapped modules: one key per slot
        new = jax.random.split(new, shape)
      node.key.set_value(new)
      node.count.set_value(jnp.zeros(shape, jnp.uint32))


def has_streams(model: nnx.Module) -> bool:
  return any(isinstance(node, nnx.RngStream) for _, node in nnx.iter_graph(model))
