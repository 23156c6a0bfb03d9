"""sha256 digests of the leaves of a state tree, independent of key types."""

from __future__ import annotations

import hashlib

import jax
import numpy as np

from repro.machine import parallel


def _key_name(entry) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_name(path) -> str:
  """'model/conv1/kernel' of a pytree key path."""
  return "/".join(_key_name(e) for e in path)


def named_leaves(tree, to_host: bool = True) -> dict:
  """{'model/conv1/kernel': array, ...}: the leaves of a pytree as host arrays.

  Integer and string keys name the same leaf ('0' == 0), so a pure dict and its
  Orbax round trip (which turns int keys into strings) give the same names.
  PRNG keys become their key data. to_host=False leaves the leaves as they are
  (arrays, shapes or Orbax metadata).
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  convert = _host if to_host else (lambda leaf: leaf)
  return {path_name(path): convert(leaf) for path, leaf in flat}


def _host(leaf) -> np.ndarray:
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return parallel.to_host(leaf)


def leaf_digest(array: np.ndarray) -> str:
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def leaf_digests(tree) -> dict[str, str]:
  return {name: leaf_digest(leaf) for name, leaf in sorted(named_leaves(tree).items())}


def tree_digest(tree) -> str:
  """One sha256 over every leaf's name, dtype, shape and bytes."""
  digest = hashlib.sha256()
  for name, leaf_hex in leaf_digests(tree).items():
    digest.update(f"{name}={leaf_hex};".encode())
  return digest.hexdigest()
