"""A task's data splits: checked, fingerprinted, and cut into train and validation.

A split is a dict of host arrays sharing their leading dimension, a
repro.data.source.Source read by index (for data larger than memory), or a
Grain MapDataset or Hugging Face Dataset (wrapped in its Source). Prepared
holds every split as a Source (a dict becomes Arrays, without a copy). The
fingerprint of a dict is a sha256 over its features in name order (each
feature's dtype, shape and bytes), so the same bytes give the same
fingerprint whatever produced them; a Source's is its own (repro.data.source),
cheap for large data. Neither depends on the data path.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from repro.data import adapters
from repro.errors import ReproError
from repro.data.source import Arrays, Grain, HuggingFace, Source, Subset
from repro.task import Splits

HOLD_OUT_RULE = "the last validation_examples examples of the train split, in its stored order"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """The arrays a run trains and evaluates on, and what the manifest says of them."""

  train: Source
  validation: Source | None
  test: Source | None
  fingerprints: dict[str, str]  # of the task's splits as given (before any hold-out)
  info: dict

  def resident(self, name: str) -> dict[str, np.ndarray]:
    """A split's arrays in memory (views where it already is), for the device path."""
    split = getattr(self, name)
    views = _views(split)
    return views if views is not None else split.gather(np.arange(len(split)))


def _views(split: Source) -> dict[str, np.ndarray] | None:
  """The arrays of an Arrays source (or of a Subset of one) without a copy, else None."""
  if isinstance(split, Arrays):
    return split.arrays
  if isinstance(split, Subset) and isinstance(split.source, Arrays):
    return {k: v[split.start:split.stop] for k, v in split.source.arrays.items()}
  return None


def fingerprint(split: dict[str, np.ndarray]) -> str:
  """sha256 over the features of a split in name order: dtype, shape and bytes of each."""
  digest = hashlib.sha256()
  for name in sorted(split):
    array = split[name]
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))  # no copy
  return digest.hexdigest()


def _wrapped(name: str, split, task: str) -> Source | None:
  """A Grain or Hugging Face dataset in its Source (one line on what it cannot give), else None."""
  library = adapters.library_of(split)
  if library is None:
    return None
  wrap = Grain if library == "grain" else HuggingFace
  try:
    return wrap(split, what=f"the {name} split")
  except ReproError as err:
    raise ReproError(f"task {task}: {err}") from None


def _checked_split(name: str, split, task: str) -> Source:
  wrapped = _wrapped(name, split, task)
  split = split if wrapped is None else wrapped
  if isinstance(split, Source):
    if not len(split):
      raise ReproError(f"task {task}: the {name} split is empty")
    return split
  if not isinstance(split, dict) or not split:
    raise ReproError(f"task {task}: the {name} split must be a non-empty dict of arrays, a "
                     f"repro.data.source.Source, a Grain MapDataset or a Hugging Face Dataset, "
                     f"got {type(split).__name__}")
  arrays = {}
  for feature, value in split.items():
    array = np.asarray(value)
    if array.dtype == object or array.ndim == 0:
      raise ReproError(f"task {task}: feature {feature!r} of the {name} split is not a numeric "
                       f"array with a leading example dimension")
    arrays[str(feature)] = array
  lengths = {feature: len(array) for feature, array in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ReproError(f"task {task}: the features of the {name} split disagree in length "
                     f"({', '.join(f'{k} {v}' for k, v in lengths.items())}): give every "
                     f"feature one entry per example")
  if not next(iter(lengths.values())):
    raise ReproError(f"task {task}: the {name} split is empty")
  return Arrays(arrays)


def _same_features(name: str, split: Source, train: Source, task: str) -> None:
  layout = lambda s: {k: (np.dtype(d).str, tuple(shape)) for k, (d, shape) in
                      s.features().items()}
  if layout(split) != layout(train):
    raise ReproError(f"task {task}: the {name} split's features {layout(split)} differ from "
                     f"the train split's {layout(train)}")


def check(splits: Splits, task: str) -> dict[str, Source]:
  """The task's splits as Sources; ReproError names the first problem."""
  if not isinstance(splits, Splits):
    raise ReproError(f"task {task}: data() must return a repro.Splits, got "
                     f"{type(splits).__name__}")
  checked = {name: _checked_split(name, split, task) for name, split in splits.named().items()}
  for name, split in checked.items():
    _same_features(name, split, checked["train"], task)
  return checked


def prepare(splits: Splits, task: str, validation_examples: int, batch_size: int) -> Prepared:
  """Checks the splits and holds out the validation examples; see Prepared."""
  given = check(splits, task)
  train, validation = given["train"], given.get("validation")
  if validation_examples:
    if validation is not None:
      raise ReproError(f"task {task} has its own validation split: leave "
                       f"--validation_examples at 0")
    keep = len(train) - validation_examples
    if keep < batch_size:
      raise ReproError(f"--batch_size={batch_size} is larger than what the {len(train)} "
                       f"training examples less --validation_examples={validation_examples} leave "
                       f"({max(keep, 0)}): pass a smaller --batch_size or --validation_examples")
    train, validation = Subset(train, 0, keep), Subset(train, keep, len(train))
  elif len(train) < batch_size:
    raise ReproError(f"--batch_size={batch_size} is larger than the {len(train)} training "
                     f"examples of task {task}: pass a smaller --batch_size")
  full = {name: isinstance(split, dict) for name, split in splits.named().items()}
  fingerprints = {name: _fingerprint(split, full[name]) for name, split in given.items()}
  return Prepared(train=train, validation=validation, test=given.get("test"),
                  fingerprints=fingerprints,
                  info=_info(splits, given, train, validation, validation_examples, fingerprints,
                             full))


def _fingerprint(split: Source, full: bool) -> str:
  """Every byte's sha256 for what a task gave as arrays in memory, else the Source's own."""
  return fingerprint(_views(split)) if full else split.fingerprint()


def _info(splits: Splits, given: dict, train: Source, validation: Source | None,
          held_out: int, fingerprints: dict, full: dict[str, bool]) -> dict:
  """What the manifest records of the data."""
  features = {k: f"{np.dtype(d)}{list(s)}" for k, (d, s) in given["train"].features().items()}
  info = {"source": splits.source, "features": features, "num_train": len(train),
          "splits": {name: {"examples": len(split), "fingerprint": fingerprints[name],
                            "rule": "sha256 of every byte" if full[name] else split.rule,
                            **split.describe()}
                     for name, split in given.items()}}
  if validation is not None:
    origin = "train" if held_out else "validation"
    info["validation"] = {"rule": HOLD_OUT_RULE if held_out else "the task's validation split",
                          "examples": len(validation),
                          "fingerprint": _fingerprint(validation, full[origin])}
  return info
