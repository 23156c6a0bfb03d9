"""Splits that stay on the host or on disk, read by index: for data larger than device memory.

A task may give a split as a Source instead of a dict of in-memory arrays:

    Splits(train=repro.data.source.Arrays({"image": np.load(path, mmap_mode="r"), ...}))
    Splits(train=repro.data.source.TFDS("my_dataset", "train", data_dir=...))

repro then feeds each chunk from the host (repro.data.feed): the batch of step s is
gathered by the same counter-based indices as on the device, so both paths
give the same bits. A source's fingerprint covers its content cheaply (its
size and a fixed sample of examples, the rule in the manifest), and
check_unchanged() catches a file that changed while the run reads it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import numpy as np

from repro.errors import ReproError, squeezed

SAMPLES = 64  # examples hashed into a source's fingerprint
FINGERPRINT_RULE = (f"sha256 over the number of examples, each feature's dtype and shape, and "
                    f"the bytes of the {SAMPLES} examples at positions i * n // {SAMPLES}")
CHANGE_RULE = "each file's size and modification time, checked at every chunk"


class Source:
  """A split read by index. Subclasses give __len__, features, gather and files."""

  def __len__(self) -> int:
    raise NotImplementedError

  def features(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape of one example)}."""
    raise NotImplementedError

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at `indices`, each feature stacked: shape (len(indices),) + example shape."""
    raise NotImplementedError

  def files(self) -> list[Path]:
    """The files the source reads (their size and time are watched)."""
    return []

  def _check_range(self, indices: np.ndarray, what: str) -> None:
    """One line (ReproError) if an index falls outside 0..len(self) - 1."""
    if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
      bad = int(indices.min()) if indices.min() < 0 else int(indices.max())
      raise ReproError(f"index {bad} is out of range for {what} of {len(self)} examples: "
                       f"the source shrank or its length is wrong")

  @property
  def nbytes(self) -> int:
    return len(self) * sum(np.dtype(d).itemsize * int(np.prod(s))
                           for d, s in self.features().values())

  def fingerprint(self) -> str:
    """A sha256 of the content by FINGERPRINT_RULE: the same on either data path."""
    digest = hashlib.sha256(str(len(self)).encode())
    for name, (dtype, shape) in sorted(self.features().items()):
      digest.update(f"{name}:{np.dtype(dtype).str}{tuple(shape)}".encode())
    positions = np.unique(np.arange(SAMPLES, dtype=np.int64) * len(self) // SAMPLES)
    sample = self.gather(positions)
    for name in sorted(sample):
      digest.update(memoryview(np.ascontiguousarray(sample[name])).cast("B"))
    return digest.hexdigest()

  def stamps(self) -> dict[str, tuple[int, int]]:
    """{file: (size, modification time in ns)} now."""
    found = {}
    for path in self.files():
      try:
        stat = os.stat(path)
      except OSError as err:
        raise ReproError(f"data file {path} is unreadable ({err.strerror}): restore it") from None
      found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


class Arrays(Source):
  """A dict of arrays with a common leading dimension: in memory, or np.memmap on disk."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    if not arrays:
      raise ReproError("a source needs at least one feature")
    self.arrays = {str(k): v if isinstance(v, np.ndarray) else np.asarray(v)
                   for k, v in arrays.items()}
    lengths = {k: len(v) for k, v in self.arrays.items()}
    if len(set(lengths.values())) > 1:
      raise ReproError(f"the features of a source disagree in length ({lengths}): give every "
                       f"feature one entry per example")

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def features(self):
    return {k: (v.dtype, v.shape[1:]) for k, v in self.arrays.items()}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    self._check_range(indices, "a source")
    try:
      return {k: _read_rows(v, indices) if _whole_file_map(v) else np.asarray(v[indices])
              for k, v in self.arrays.items()}
    except IndexError as err:  # fewer examples than the source says it has
      raise ReproError(f"index out of range reading the data ({err}): the source claims "
                       f"{len(self)} examples; fix its length or its files") from None
    except (OSError, ValueError) as err:  # a memmap over a file truncated since
      raise ReproError(f"reading the data failed ({err}): the file is truncated or "
                       f"unreadable; restore it") from None
    finally:
      self._release()

  def _release(self) -> None:
    """Unmaps the pages a gather touched through a memmap view (they stay in the page
    cache): a memmap read at random would keep every page it ever touched."""
    for value in self.arrays.values():
      mapped = getattr(value, "_mmap", None)
      if mapped is not None and not mapped.closed:
        mapped.madvise(mmap.MADV_DONTNEED)

  def files(self) -> list[Path]:
    return [Path(v.filename) for v in self.arrays.values()
            if isinstance(v, np.memmap) and v.filename]


def _whole_file_map(value: np.ndarray) -> bool:
  """A C-contiguous np.memmap of its whole mapping (as np.load(mmap_mode="r") gives)."""
  return (isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap)
          and bool(value.filename) and value.flags.c_contiguous and value.ndim >= 1)


def _read_rows(value: np.memmap, indices: np.ndarray) -> np.ndarray:
  """value[indices], read with pread rather than through the mapping.

  A page fault on a mapped file maps its neighbours too (the kernel's
  fault-around, or a whole large folio): measured, gathering 6,400 random
  rows of a 4 GB memmap raised resident memory to the whole file. pread
  copies just the rows.
  """
  row = value.dtype.itemsize * int(np.prod(value.shape[1:], dtype=np.int64))
  out = np.empty((len(indices),) + value.shape[1:], value.dtype)
  flat = memoryview(out.reshape(-1).view(np.uint8))
  fd = os.open(value.filename, os.O_RDONLY)
  try:
    for k, i in enumerate(np.asarray(indices, np.int64)):
      if not 0 <= i < len(value):
        raise IndexError(f"index {i} is out of bounds for {len(value)} rows")
      if os.preadv(fd, [flat[k * row:(k + 1) * row]], value.offset + int(i) * row) != row:
        raise OSError(f"{value.filename} ended before row {i}")
  finally:
    os.close(fd)
  return out


class Subset(Source):
  """Examples [start, stop) of another source (the held-out validation examples)."""

  def __init__(self, source: Source, start: int, stop: int):
    self.source, self.start, self.stop = source, start, stop

  def __len__(self) -> int:
    return self.stop - self.start

  def features(self):
    return self.source.features()

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    self._check_range(indices, "a held-out part")
    return self.source.gather(np.asarray(indices) + self.start)

  def files(self) -> list[Path]:
    return self.source.files()


class TFDS(Source):
  """A split of a TFDS dataset prepared offline in ArrayRecord (tfds.data_source); no download."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               dtypes: dict[str, str] | None = None):
    """name: a registered dataset or a prepared directory; dtypes: casts, e.g. {"label": "int32"}."""
    from repro.data import datasets as data  # TFDS is slow to import: only for these sources
    self.builder = data.tfds_builder(name, data_dir)
    self.name, self.split, self.dtypes = name, split, dict(dtypes or {})
    self.data = self.builder.as_data_source(split=split)
    first = self.data[0]
    self._features = {k: (np.dtype(self.dtypes.get(k, np.asarray(v).dtype)), np.asarray(v).shape)
                      for k, v in first.items()}

  def __len__(self) -> int:
    return len(self.data)

  def features(self):
    return self._features

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    self._check_range(indices, f"TFDS {self.name} {self.split}")
    try:
      examples = self.data.__getitems__([int(i) for i in indices])
    except Exception as err:  # array_record raises its own types for a damaged file
      raise ReproError(f"reading TFDS {self.name} {self.split} failed ({type(err).__name__}: "
                       f"{squeezed(err)}): its files are damaged; prepare "
                       f"it again") from None
    return {k: np.stack([np.asarray(e[k]) for e in examples]).astype(dtype, copy=False)
            for k, (dtype, _) in self._features.items()}

  def files(self) -> list[Path]:
    return sorted(Path(p) for p in Path(self.builder.data_dir).glob("*.array_record*"))
