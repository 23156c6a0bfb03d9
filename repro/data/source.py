"""Splits that stay on the host or on disk, read by index: for data larger than device memory.

A task may give a split as a Source instead of a dict of in-memory arrays:

    Splits(train=repro.data.source.Arrays({"image": np.load(path, mmap_mode="r"), ...}))
    Splits(train=repro.data.source.TFDS("my_dataset", "train", data_dir=...))
    Splits(train=grain_map_dataset)      # or repro.data.source.Grain(grain_map_dataset)
    Splits(train=hugging_face_dataset)   # or repro.data.source.HuggingFace(hugging_face_dataset)

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
import threading
from pathlib import Path

import numpy as np

from repro.data import adapters
from repro.errors import DataReadError, ReproError, disk_failed, os_cause, squeezed

SAMPLES = 64  # examples hashed into a source's fingerprint
FINGERPRINT_RULE = (f"sha256 over the number of examples, each feature's dtype and shape, and "
                    f"the bytes of the {SAMPLES} examples at positions i * n // {SAMPLES}")
CHANGE_RULE = "each file's size and modification time, checked at every chunk"


def unreadable(what: str, err: Exception, fix: str) -> Exception:
  """The one-line error for a read that raised `err`: the file system failing
  (repro.errors.disk_failed: DataReadError, exit 74), else the data damaged or gone
  (ReproError, exit 2, with `fix`)."""
  if disk_failed(err):
    return DataReadError(f"reading {what} failed ({os_cause(err)}): the file system failed, "
                         f"not the data; rerun once it is healthy (the run resumes from its "
                         f"newest checkpoint)")
  return ReproError(f"reading {what} failed ({type(err).__name__}: {squeezed(err)}): {fix}")


class Source:
  """A split read by index. Subclasses give __len__, features, gather and files."""

  rule = FINGERPRINT_RULE  # what fingerprint() reads (the manifest says it)

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

  def describe(self) -> dict:
    """What the manifest records of the source besides its fingerprint (its reader, say)."""
    return {}

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
      raise unreadable(f"TFDS {self.name} {self.split}", err,
                       "its files are damaged or gone; prepare it again") from None
    return {k: np.stack([np.asarray(e[k]) for e in examples]).astype(dtype, copy=False)
            for k, (dtype, _) in self._features.items()}

  def files(self) -> list[Path]:
    return sorted(Path(p) for p in Path(self.builder.data_dir).glob("*.array_record*"))


class Grain(Source):
  """A Grain MapDataset, read by index: its per-example transforms run as repro gathers.

  repro owns the order (its permutation of range(len(dataset)) each epoch) and
  the batches: a shuffle or batch in the pipeline is refused, and so are a
  filter (its holes) and a repeat() without a count. Elements are dicts (or
  namedtuples, dataclasses) of fixed-shape numeric arrays; the features are
  element 0's, and every element gathered is checked against them. A
  random_map draws from Grain's seed by the example's index: the same draw
  every epoch (Task.augment draws anew each epoch).
  """

  def __init__(self, dataset, what: str = "the Grain dataset"):
    adapters.require("grain")
    self.pipeline = adapters.grain_pipeline(dataset, what)
    if not len(dataset):
      raise ReproError(f"{what} is empty: its Grain pipeline gives no element")
    self.dataset, self.what = dataset, what
    self._lock = threading.Lock()  # the feed's thread and an evaluation may read at once
    self._features = adapters.layout(adapters.named(self._read([0])[0], f"element 0 of {what}"))

  def __len__(self) -> int:
    return len(self.dataset)

  def features(self):
    return self._features

  def describe(self) -> dict:
    return {"reader": adapters.version("grain"), "pipeline": self.pipeline}

  def _read(self, indices) -> list:
    """The pipeline's elements at `indices` (in one batched read where Grain has one)."""
    indices = [int(i) for i in indices]
    try:
      with self._lock:
        read = getattr(self.dataset, "_getitems", None)  # Grain's batched read (ArrayRecord)
        return list(read(indices)) if read else [self.dataset[i] for i in indices]
    except ReproError:
      raise
    except Exception as err:  # the user's source or transforms
      raise ReproError(f"reading {self.what} failed ({type(err).__name__}: {squeezed(err)}): "
                       f"the error is its pipeline's (its source or a transform)") from None

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    self._check_range(indices, self.what)
    examples = []
    for i, element in zip(indices, self._read(indices)):
      where = f"element {int(i)} of {self.what}"
      examples.append(adapters.named(element, where))
      adapters.check_like(examples[-1], self._features, where, "element 0")
    return adapters.stacked(examples, self._features)


class HuggingFace(Source):
  """A Hugging Face datasets.Dataset (or the directory save_to_disk wrote), read by index.

  Every column (or those set_format chose) is a feature: numeric, of a fixed
  shape (a column of text, of variable length or with missing values is
  refused, named, with the fix). Batches are read by index, each column in
  its own dtype: columns of numbers or nested lists of numbers straight from
  Arrow (with_format("arrow"); lists of one length become axes), the others
  (images, Array2D, ...) with with_format("numpy", dtype=None) (the default
  numpy format widens integers to int64 and narrows floats to float32, and
  converts nested lists row by row). The dataset's own fingerprint joins the
  content's in fingerprint() (the run's identity), and its cache files are
  watched for changes (files()).
  """

  rule = (f"{FINGERPRINT_RULE}, and the Hugging Face dataset's own fingerprint "
          f"(Dataset._fingerprint)")

  def __init__(self, dataset, what: str = "the Hugging Face dataset"):
    datasets = adapters.require("hf")
    if isinstance(dataset, (str, os.PathLike)):
      dataset = _load_from_disk(datasets, dataset, what)
    self.dataset, self.what = adapters.hf_dataset(dataset, what), what
    columns = dataset.format.get("columns") or dataset.column_names  # set_format's choice
    if not len(dataset) or not columns:
      raise ReproError(f"{what} is empty ({len(dataset)} rows, columns {columns})")
    for name in columns:
      problem = adapters.hf_column_problem(dataset, name)
      if problem:
        raise ReproError(f"column {name!r} of {what} {problem}")
    self._plain = adapters.hf_plain_columns(dataset, columns)
    self._arrow = dataset.with_format("arrow", columns=self._plain) if self._plain else None
    decoded = [name for name in columns if name not in self._plain]
    self._numpy = dataset.with_format("numpy", columns=decoded, dtype=None) if decoded else None
    self._lock = threading.Lock()
    first = self._read(np.array([0]))
    self._features = {name: (value.dtype, value.shape[1:]) for name, value in first.items()}
    for name, value in first.items():
      if value.dtype.kind in adapters.NOT_NUMERIC:
        raise ReproError(f"column {name!r} of {what} is not numeric ({value.dtype}): make it "
                         f"fixed-shape numbers in a map, or drop it (ds.remove_columns)")

  def __len__(self) -> int:
    return len(self.dataset)

  def features(self):
    return self._features

  def files(self) -> list[Path]:
    return [Path(f["filename"]) for f in self.dataset.cache_files]

  def describe(self) -> dict:
    return {"reader": adapters.version("hf"), "hf_fingerprint": self.dataset._fingerprint,
            "cache_files": [str(p) for p in self.files()]}

  def fingerprint(self) -> str:
    content = super().fingerprint()
    return hashlib.sha256((content + self.dataset._fingerprint).encode()).hexdigest()

  def _read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    rows = [int(i) for i in indices]
    try:
      with self._lock:
        batch = adapters.arrow_arrays(self._arrow[rows], self._plain) if self._arrow else {}
        return {**batch, **(dict(self._numpy[rows]) if self._numpy is not None else {})}
    except Exception as err:  # Arrow's errors on a damaged or vanished cache file
      raise unreadable(self.what, err, "its cache files are damaged or gone; build it again") \
          from None

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    self._check_range(indices, self.what)
    batch = self._read(indices)
    for name, (dtype, shape) in self._features.items():
      value = batch[name]
      if value.dtype != dtype or value.shape[1:] != tuple(shape):
        raise ReproError(f"column {name!r} of {self.what} read as {value.dtype}"
                         f"{list(value.shape[1:])} at some of the indices {_few(indices)}, "
                         f"not {np.dtype(dtype)}{list(shape)} as at row 0: every row must have "
                         f"one shape (pad it in a map)")
    return batch


def _load_from_disk(datasets, path, what: str):
  """The Dataset that Dataset.save_to_disk wrote at `path`."""
  try:
    return datasets.load_from_disk(str(path))
  except (FileNotFoundError, ValueError, OSError) as err:
    raise ReproError(f"{what}: cannot load a saved Hugging Face dataset from {path} "
                     f"({squeezed(err)})") from None


def _few(indices: np.ndarray) -> str:
  shown = [int(i) for i in np.asarray(indices)[:5]]
  return ", ".join(map(str, shown)) + (", ..." if len(indices) > 5 else "")
