"""A directory of .npy arrays, each verified against the sha256 recorded when it was written.

write() writes every array atomically, then the fingerprints last: a write cut
short leaves no fingerprints, so it reads as missing. read_verified() hashes
each file and parses the very bytes it hashed, in place (no copy): nothing is
returned that differs from what was written. lock() serialises the processes
that check and (re)build one cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

FINGERPRINTS = "fingerprints.json"


def _write_atomic(path: Path, blob: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(blob)
  os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def write(cache: Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes each array to cache/<name> as .npy, then the sha256 of every file."""
  cache.mkdir(parents=True, exist_ok=True)
  recorded = {}
  for name, array in arrays.items():
    blob = _npy_bytes(array)
    _write_atomic(cache / name, blob)
    recorded[name] = hashlib.sha256(blob).hexdigest()
  # Written last: a write cut short leaves no fingerprints, so it is redone.
  _write_atomic(cache / FINGERPRINTS, json.dumps(recorded, indent=1).encode())


def read_verified(cache: Path,
                  names: tuple[str, ...]) -> tuple[list[np.ndarray] | None, str | None]:
  """The arrays `names` of `cache` if every file matches the fingerprint recorded at write().

  Returns (arrays, None), or (None, why not) naming the first file that is
  missing, unreadable or changed. The bytes parsed are the bytes hashed.
  """
  try:
    recorded = json.loads((cache / FINGERPRINTS).read_text())
  except (OSError, ValueError):
    return None, f"{cache / FINGERPRINTS} is missing or unreadable"
  arrays = []
  for name in names:
    try:
      blob = (cache / name).read_bytes()
    except OSError as err:
      return None, f"{cache / name} is unreadable ({err.strerror})"
    if hashlib.sha256(blob).hexdigest() != recorded.get(name):
      return None, f"{cache / name} does not match the fingerprint recorded when it was prepared"
    arrays.append(npy_view(blob))
  return arrays, None


def npy_view(blob: bytes) -> np.ndarray:
  """The array of an .npy file's bytes, without copying them (read-only)."""
  stream = io.BytesIO(blob)
  version = np.lib.format.read_magic(stream)
  read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}.get(version)
  if read_header is None:  # a format np.save does not write for these arrays
    return np.load(io.BytesIO(blob), allow_pickle=False)
  shape, fortran, dtype = read_header(stream)
  count = int(np.prod(shape))
  array = np.frombuffer(blob, dtype=dtype, count=count, offset=stream.tell())
  return array.reshape(shape, order="F" if fortran else "C")


@contextlib.contextmanager
def lock(guarded: Path) -> Iterator[None]:
  """Holds an exclusive flock on <guarded>.lock, beside `guarded`, while it is checked and built."""
  guarded.parent.mkdir(parents=True, exist_ok=True)
  with open(guarded.parent / f"{guarded.name}.lock", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes, or the process dies
    yield
