"""What repro reads of other libraries' datasets: Grain's MapDataset and Hugging Face's Dataset.

Neither library is a dependency of repro (they are the extras repro[grain] and
repro[hf]): an object of theirs is recognized by its classes' names and
modules, without importing anything, and the library is imported only when
such an object is given. Everything here says what is wrong in one line
(ReproError) and how to fix it. repro.data.source's Grain and HuggingFace
sources are built on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Mapping

import numpy as np

from repro.errors import ReproError, squeezed

# library: (module, pip extra, what its datasets are called)
LIBRARIES = {"grain": ("grain", "repro[grain]", "Grain MapDataset"),
             "hf": ("datasets", "repro[hf]", "Hugging Face Dataset")}
_CLASSES = {"grain": ("grain.", ("MapDataset", "IterDataset")),
            "hf": ("datasets.", ("Dataset", "DatasetDict", "IterableDataset",
                                 "IterableDatasetDict"))}


def quiet_progress() -> None:
  """Hugging Face datasets' progress bars off (a run with --noprogress: nothing on stderr but
  repro's own lines; measured: a first build's "Generating train split" and "Map" bars came
  before the one line of a refused split). Imports nothing: the variable reaches a later
  import of datasets, the call one already made."""
  os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
  if "datasets" in sys.modules:
    sys.modules["datasets"].disable_progress_bars()


# Grain transformations that take what repro owns: the order and the batches.
_ORDER = {"ShuffleMapDataset": "shuffle()", "WindowShuffleMapDataset": "a window shuffle",
          "BatchMapDataset": "batch()"}
# Grain transformations that leave holes (None elements) in a MapDataset.
_HOLES = {"FilterMapDataset": "filter()", "FlatMapMapDataset": "flat_map()"}
# dtype kinds a feature cannot have: objects, strings, bytes, dates and times.
NOT_NUMERIC = "OUSMm"


def library_of(obj) -> str | None:
  """'grain' or 'hf' for a dataset of that library (by its classes; nothing imported), else None."""
  for library, (prefix, names) in _CLASSES.items():
    if any(c.__name__ in names and c.__module__.startswith(prefix) for c in type(obj).__mro__):
      return library
  return None


def require(library: str):
  """The library's module; one line naming the extra that installs it if it is missing."""
  module, extra, what = LIBRARIES[library]
  try:
    return importlib.import_module(module)
  except ImportError as err:
    raise ReproError(f"reading a {what} needs the {module} package, which is not installed "
                     f"({squeezed(err, 80)}): pip install '{extra}'") from None


def version(library: str) -> str:
  """'module version' of the library, for the manifest."""
  module = LIBRARIES[library][0]
  try:
    return f"{module} {importlib.metadata.version(module)}"
  except importlib.metadata.PackageNotFoundError:
    return f"{module} (version unknown)"


def _class_names(node) -> set[str]:
  return {c.__name__ for c in type(node).__mro__}


def grain_pipeline(dataset, what: str) -> list[str]:
  """Each step of a Grain MapDataset's pipeline, outermost first; one line refuses a shuffle,
  a batch, a filter, an IterDataset or an infinite length (repro owns order, batches, epochs)."""
  if library_of(dataset) != "grain" or "MapDataset" not in _class_names(dataset):
    kind = "a Grain IterDataset" if library_of(dataset) == "grain" else type(dataset).__name__
    raise ReproError(f"{what} is {kind}, not a Grain MapDataset: repro reads a split by index; "
                     f"give it the MapDataset before to_iter_dataset() (repro owns the order, "
                     f"the batches and the prefetch)")
  steps, todo = [], [dataset]
  while todo:
    node = todo.pop(0)
    names = _class_names(node)
    for name in sorted(names & set(_ORDER))[:1]:
      raise ReproError(f"{what}'s Grain pipeline has a {_ORDER[name]}: leave shuffling and "
                       f"batching to repro (it visits its own permutation of every example "
                       f"each epoch, in batches of --batch_size); remove it from the pipeline")
    for name in sorted(names & set(_HOLES))[:1]:
      raise ReproError(f"{what}'s Grain pipeline has a {_HOLES[name]}, which leaves holes "
                       f"(None elements) that repro cannot batch: drop those examples from "
                       f"the source before MapDataset.source(...), or keep them all")
    steps.append(squeezed(str(node), 200))
    todo.extend(getattr(node, "parents", ()))
  if len(dataset) >= sys.maxsize:
    raise ReproError(f"{what}'s Grain pipeline has no end (repeat() without a count): leave "
                     f"epochs to repro (--epochs or --max_steps); remove the repeat()")
  return steps


def named(element, where: str) -> dict[str, np.ndarray]:
  """An element (a dict, a namedtuple or a dataclass) as {feature name: numeric array}."""
  if element is None:
    raise ReproError(f"{where} is None (a filter leaves such holes): every index must give an "
                     f"example; drop unwanted examples from the source itself")
  if isinstance(element, Mapping):
    items = list(element.items())
  elif hasattr(element, "_asdict"):
    items = list(element._asdict().items())
  elif dataclasses.is_dataclass(element) and not isinstance(element, type):
    items = [(f.name, getattr(element, f.name)) for f in dataclasses.fields(element)]
  else:
    raise ReproError(f"{where} is a {type(element).__name__}, whose parts have no names: make "
                     f"each element a dict of arrays, e.g. .map(lambda e: {{'image': e[0], "
                     f"'label': e[1]}})")
  arrays = {}
  for name, value in items:
    try:
      array = np.asarray(value)
    except ValueError:  # a ragged list
      array = np.asarray(None)
    if array.dtype.kind in NOT_NUMERIC or isinstance(value, Mapping):
      raise ReproError(f"feature {name!r} of {where} is not a numeric array "
                       f"({type(value).__name__}): make every feature a fixed-shape array of "
                       f"numbers in a map (pad or tokenize it), or drop it")
    arrays[str(name)] = array
  if not arrays:
    raise ReproError(f"{where} has no features: make each element a dict of arrays")
  return arrays


def layout(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
  """{name: (dtype, shape)} of one example's arrays."""
  return {name: (array.dtype, array.shape) for name, array in arrays.items()}


def check_like(arrays: dict[str, np.ndarray], features: dict, where: str, first: str) -> None:
  """One line if an example's names, dtypes or shapes differ from the features of `first`."""
  if set(arrays) != set(features):
    raise ReproError(f"{where} has the features {sorted(arrays)}, {first} had "
                     f"{sorted(features)}: every example must have the same features")
  for name, array in arrays.items():
    dtype, shape = features[name]
    if array.dtype != dtype or array.shape != tuple(shape):
      raise ReproError(f"feature {name!r} of {where} is {array.dtype}{list(array.shape)}, of "
                       f"{first} {np.dtype(dtype)}{list(shape)}: every example's features must "
                       f"have the same dtype and shape (pad or cast them in a map)")


def stacked(examples: list[dict[str, np.ndarray]], features: dict) -> dict[str, np.ndarray]:
  """The examples' features stacked along a new first axis."""
  if not examples:
    return {k: np.empty((0,) + tuple(s), d) for k, (d, s) in features.items()}
  return {name: np.stack([e[name] for e in examples]) for name in features}


def hf_dataset(dataset, what: str):
  """The dataset if it is a Hugging Face Dataset (read by index); else one line on what to give."""
  names = _class_names(dataset)
  if "DatasetDict" in names or "IterableDatasetDict" in names:
    raise ReproError(f"{what} is a Hugging Face DatasetDict of the splits "
                     f"{sorted(dataset)}: give one of them, e.g. ds['train']")
  if "IterableDataset" in names:
    raise ReproError(f"{what} is a streaming Hugging Face dataset, which cannot be read by "
                     f"index: load it without streaming=True")
  if library_of(dataset) != "hf":
    raise ReproError(f"{what} is a {type(dataset).__name__}, not a Hugging Face Dataset")
  return dataset


def hf_column_problem(dataset, name: str) -> str | None:
  """What makes a column unusable as a feature (missing values, text, variable length), or None.

  Read from the Arrow table's validity and list offsets: no value is decoded.
  """
  import pyarrow as pa  # a dependency of datasets
  import pyarrow.compute as pc
  level = dataset.data.column(name)
  while True:
    if level.null_count:
      plural = "s" * (level.null_count != 1)
      return (f"has {level.null_count} missing value{plural}: fill them in a map, or drop the "
              f"examples (ds.filter before giving it to repro)")
    kind = level.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
      return ("holds text or bytes: turn it into fixed-shape numbers in a map (tokenize and "
              "pad it), or drop it (ds.remove_columns)")
    if not _is_list(kind):
      return None
    lengths = pc.min_max(pc.list_value_length(level))
    if len(level) and lengths["min"].as_py() != lengths["max"].as_py():
      return (f"has variable length ({lengths['min'].as_py()} to {lengths['max'].as_py()}): "
              f"pad it to a fixed length in a map, e.g. ds.map(lambda e: {{{name!r}: "
              f"pad(e[{name!r}], N)}})")
    level = pc.list_flatten(level)


def hf_plain_columns(dataset, columns: list[str]) -> list[str]:
  """The columns stored as numbers or (nested) lists of numbers: read straight from Arrow.

  The others (images, audio, Array2D and such) are decoded by the numpy format.
  Measured on Fashion-MNIST (28x28x1 uint8 as nested lists): the numpy format
  converts row by row, 11x the step time of the same data as arrays.
  """
  import pyarrow as pa
  plain = []
  for name in columns:
    kind = dataset.data.column(name).type
    while _is_list(kind):
      kind = kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
      plain.append(name)
  return plain


def arrow_arrays(table, names: list[str]) -> dict[str, np.ndarray]:
  """{name: array} of plain columns of an Arrow table: lists of one length become axes.

  A level of unequal lengths gives an (empty) object array, which the caller refuses as
  another dtype and shape than row 0's.
  """
  import pyarrow.compute as pc
  arrays = {}
  for name in names:
    column, shape = table.column(name), [len(table)]
    while _is_list(column.type):
      lengths = pc.min_max(pc.list_value_length(column))
      if len(column) and lengths["min"].as_py() != lengths["max"].as_py():
        arrays[name] = np.empty(len(table), object)  # rows of other shapes: refused
        break
      shape.append(lengths["max"].as_py() if len(column) else 0)
      column = pc.list_flatten(column)
    else:
      arrays[name] = column.to_numpy().reshape(shape)
  return arrays


def _is_list(kind) -> bool:
  """Whether an Arrow type is a list (of any length kind)."""
  import pyarrow as pa
  return pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
      pa.types.is_fixed_size_list(kind)
