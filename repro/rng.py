"""One seed -> named, independent key streams. No global random state anywhere."""

from __future__ import annotations

import jax

# Each stream is fold_in(root, index). The indices are part of the bit
# contract: renumbering them changes every trained weight.
STREAMS = {"params": 0, "shuffle": 1, "dropout": 2}


def streams(seed: int) -> dict[str, jax.Array]:
  """Returns {'params': key, 'shuffle': key, 'dropout': key} derived from seed.

  Example:
    >>> keys = streams(0)
    >>> sorted(keys)
    ['dropout', 'params', 'shuffle']
  """
  root = jax.random.key(seed)
  return {name: jax.random.fold_in(root, index) for name, index in STREAMS.items()}
