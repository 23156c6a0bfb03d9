"""Every knob of a run in one frozen dataclass, with validation and JSON I/O."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from repro.errors import ReproError

DATASETS = ("mnist", "fashion_mnist")

# The fields whose values decide the bits of the trained state. A checkpoint
# may only be resumed under a config that agrees with it on all of these.
BIT_FIELDS = ("seed", "batch_size", "learning_rate", "dataset")


@dataclasses.dataclass(frozen=True)
class Config:
  """The full description of a training run.

  Attributes:
    seed: the one seed every random stream (init, data order) is derived from.
    epochs: passes over the training split; may be raised when resuming.
    batch_size: examples per step; the last partial batch of an epoch is dropped.
    learning_rate: Adam's learning rate.
    dataset: 'fashion_mnist' (default; Debian's dataset-fashion-mnist) or 'mnist'.
    data_dir: directory holding the four IDX files (optionally gzipped). None
      means the dataset's standard location (see repro.data).
    tfds_dir: where tensorflow_datasets keeps the prepared copy. None means
      $TFDS_DATA_DIR or ~/tensorflow_datasets.
    output: run directory (an Orbax CheckpointManager root). None means
      runs/seed<seed>-<digest of the bit-deciding fields>.
    checkpoint_every: save a checkpoint every this many global steps (and at
      the end).
    max_to_keep: how many checkpoints to retain (at least 1).
    max_steps: stop after this global step, with a checkpoint there. None means
      train all epochs.
    chunk_steps: steps per compiled scan chunk. Does not change the bits.
    progress: show a tqdm progress bar.
    strict: refuse (instead of warn) to resume a checkpoint written with other
      package versions or on another platform.
  """

  seed: int = 0
  epochs: int = 3
  batch_size: int = 64
  learning_rate: float = 1e-3
  dataset: str = "fashion_mnist"
  data_dir: str | None = None
  tfds_dir: str | None = None
  output: str | None = None
  checkpoint_every: int = 500
  max_to_keep: int = 3
  max_steps: int | None = None
  chunk_steps: int = 100
  progress: bool = True
  strict: bool = False

  def validate(self) -> "Config":
    """Raises ReproError naming the first bad field and its fix; returns self."""
    def need_int(name: str, low: int, optional: bool = False) -> None:
      value = getattr(self, name)
      if optional and value is None:
        return
      if isinstance(value, bool) or not isinstance(value, int):
        raise ReproError(f"{name} must be an integer, got {value!r}")
      if value < low:
        raise ReproError(
            f"{name} must be >= {low}, got {value}: pass --{name}=N with N >= {low}")

    need_int("seed", 0)
    need_int("epochs", 1)
    need_int("batch_size", 1)
    need_int("checkpoint_every", 1)
    need_int("max_to_keep", 1)
    need_int("max_steps", 1, optional=True)
    need_int("chunk_steps", 1)
    if self.seed >= 2**32:
      raise ReproError(f"seed must be < 2**32, got {self.seed}")
    lr = self.learning_rate
    if (isinstance(lr, bool) or not isinstance(lr, (int, float))
        or not math.isfinite(lr) or lr <= 0):
      raise ReproError(
          f"learning_rate must be a positive finite number, got {lr!r}")
    if self.dataset not in DATASETS:
      raise ReproError(
          f"unknown dataset {self.dataset!r}: pass --dataset=" + " or --dataset=".join(DATASETS))
    return self

  def bit_fields(self) -> dict[str, Any]:
    """The fields that decide the trained bits (see BIT_FIELDS)."""
    return {name: getattr(self, name) for name in BIT_FIELDS}

  def default_output(self) -> str:
    """runs/seed<seed>-<8 hex digits of the bit-deciding fields>."""
    blob = json.dumps(self.bit_fields(), sort_keys=True).encode()
    return f"runs/seed{self.seed}-{hashlib.sha256(blob).hexdigest()[:8]}"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "Config":
    """Builds a Config, refusing unknown keys with their names."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ReproError(
          f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)
