"""A task's data splits: checked, fingerprinted, and cut into train and validation.

Every split is a dict of host arrays sharing their leading dimension. The
fingerprint of a split is a sha256 over its features in name order (each
feature's dtype, shape and bytes), so the same bytes give the same
fingerprint whatever produced them.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from repro.errors import ReproError
from repro.task import Splits

HOLD_OUT_RULE = "the last validation_examples examples of the train split, in its stored order"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """The arrays a run trains and evaluates on, and what the manifest says of them."""

  train: dict[str, np.ndarray]
  validation: dict[str, np.ndarray] | None
  test: dict[str, np.ndarray] | None
  fingerprints: dict[str, str]  # of the task's splits as given (before any hold-out)
  info: dict


def fingerprint(split: dict[str, np.ndarray]) -> str:
  """sha256 over the features of a split in name order: dtype, shape and bytes of each."""
  digest = hashlib.sha256()
  for name in sorted(split):
    array = split[name]
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))  # no copy
  return digest.hexdigest()


def size(split: dict[str, np.ndarray]) -> int:
  return len(next(iter(split.values())))


def _checked_split(name: str, split, task: str) -> dict[str, np.ndarray]:
  if not isinstance(split, dict) or not split:
    raise ReproError(f"task {task}: the {name} split must be a non-empty dict of arrays, got "
                     f"{type(split).__name__}")
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
  return arrays


def _same_features(name: str, split: dict, train: dict, task: str) -> None:
  layout = lambda s: {k: (v.dtype.str, v.shape[1:]) for k, v in s.items()}
  if layout(split) != layout(train):
    raise ReproError(f"task {task}: the {name} split's features {layout(split)} differ from "
                     f"the train split's {layout(train)}")


def check(splits: Splits, task: str) -> dict[str, dict[str, np.ndarray]]:
  """The task's splits as NumPy arrays; ReproError names the first problem."""
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
    keep = size(train) - validation_examples
    if keep < batch_size:
      raise ReproError(f"--batch_size={batch_size} is larger than what the {size(train)} "
                       f"training examples less --validation_examples={validation_examples} leave "
                       f"({max(keep, 0)}): pass a smaller --batch_size or --validation_examples")
    train, validation = ({k: v[:keep] for k, v in train.items()},
                         {k: v[keep:] for k, v in train.items()})
  elif size(train) < batch_size:
    raise ReproError(f"--batch_size={batch_size} is larger than the {size(train)} training "
                     f"examples of task {task}: pass a smaller --batch_size")
  fingerprints = {name: fingerprint(split) for name, split in given.items()}
  return Prepared(train=train, validation=validation, test=given.get("test"),
                  fingerprints=fingerprints, info=_info(splits, given, train, validation,
                                                        validation_examples, fingerprints))


def _info(splits: Splits, given: dict, train: dict, validation: dict | None,
          held_out: int, fingerprints: dict) -> dict:
  """What the manifest records of the data."""
  features = {k: f"{v.dtype}{list(v.shape[1:])}" for k, v in given["train"].items()}
  info = {"source": splits.source, "features": features, "num_train": size(train),
          "splits": {name: {"examples": size(split), "fingerprint": fingerprints[name]}
                     for name, split in given.items()}}
  if validation is not None:
    info["validation"] = {"rule": HOLD_OUT_RULE if held_out else "the task's validation split",
                          "examples": size(validation), "fingerprint": fingerprint(validation)}
  return info
