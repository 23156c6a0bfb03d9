"""Every knob of a run in one frozen dataclass, with validation and JSON I/O."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from repro.errors import ReproError

DATASETS = ("mnist", "fashion_mnist")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "plateau")
MONITORS = ("val_loss", "val_accuracy")

# The fields whose values decide the bits of the trained state. A checkpoint
# may only be resumed under a config that agrees with it on all of these.
BIT_FIELDS = ("seed", "batch_size", "learning_rate", "dataset", "validation_examples",
              "schedule", "warmup_steps", "dropout")
# Identity fields that later versions added, with the value every checkpoint
# written without them was trained with (Config.bit_fields lists them only when
# they differ from it, so older runs keep their identity and output name).
IDENTITY_DEFAULTS = {"micro_shards": 0}
# Fields that decide the bits only in some configurations (see identity_fields).
_PLATEAU_FIELDS = ("plateau_patience", "plateau_factor")
_CONTROL_FIELDS = ("eval_every", "monitor")


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
    validation_examples: the last this many examples of the training split
      (in its stored order) form a static validation set, never trained on.
      0 means no validation.
    eval_every: also evaluate on the validation set every this many steps (it
      is evaluated at each epoch end anyway); 0: only there. Evaluation points
      depend on the step alone, never on interruptions or checkpoints.
    monitor: 'val_loss' or 'val_accuracy': what early stopping, the plateau
      schedule and the kept best checkpoint look at.
    patience: stop early after this many evaluations without improvement of
      `monitor`; 0 disables early stopping.
    schedule: learning-rate schedule: 'constant', 'cosine' (to 0 at the last
      step), 'warmup_cosine' (linear warmup for warmup_steps, then cosine) or
      'plateau' (multiply by plateau_factor after plateau_patience evaluations
      without improvement; its state is checkpointed).
    warmup_steps: warmup length of 'warmup_cosine'.
    plateau_patience: evaluations without improvement before 'plateau' decays.
    plateau_factor: the factor 'plateau' multiplies the learning rate by.
    dropout: dropout rate after the 256-unit layer; 0 disables it. Its masks
      come from fold_in(dropout stream, global step).
    devices: train data-parallel on this many devices (the first ones); 0
      means all (of every process, in a multi-process run). With one device
      and micro_shards=0 the program is the single-device one.
    micro_shards: 0: the gradient reduction follows the device count, so each
      count gives its own (repeatable) bits. M >= 1: topology-invariant mode:
      the global batch is cut into M fixed micro-shards whose gradients are
      summed in one fixed order, so every device count dividing M gives the
      same bits; batch_size must be divisible by M. Decides the bits.
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
  validation_examples: int = 0
  eval_every: int = 0
  monitor: str = "val_loss"
  patience: int = 0
  schedule: str = "constant"
  warmup_steps: int = 0
  plateau_patience: int = 2
  plateau_factor: float = 0.5
  dropout: float = 0.0
  devices: int = 0
  micro_shards: int = 0

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
    need_int("validation_examples", 0)
    need_int("eval_every", 0)
    need_int("patience", 0)
    need_int("warmup_steps", 0)
    need_int("plateau_patience", 1)
    need_int("devices", 0)
    need_int("micro_shards", 0)
    if self.micro_shards and self.batch_size % self.micro_shards:
      raise ReproError(
          f"--batch_size={self.batch_size} cannot be cut into --micro_shards="
          f"{self.micro_shards} equal parts: pass a micro_shards that divides the batch size")
    if self.seed >= 2**32:
      raise ReproError(f"seed must be < 2**32, got {self.seed}")
    lr = self.learning_rate
    if (isinstance(lr, bool) or not isinstance(lr, (int, float))
        or not math.isfinite(lr) or lr <= 0):
      raise ReproError(
          f"learning_rate must be a positive finite number, got {lr!r}")
    for name, low, high in (("dropout", 0.0, 1.0), ("plateau_factor", 0.0, 1.0)):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not (low <= value < high) or (name == "plateau_factor" and value == 0)):
        raise ReproError(f"{name} must be in [{low:g}, {high:g}), got {value!r}")
    if self.schedule not in SCHEDULES:
      raise ReproError(f"unknown schedule {self.schedule!r}: pass --schedule=" +
                       " or --schedule=".join(SCHEDULES))
    if self.monitor not in MONITORS:
      raise ReproError(f"unknown monitor {self.monitor!r}: pass --monitor=val_loss or "
                       f"--monitor=val_accuracy")
    if self.schedule == "warmup_cosine" and self.warmup_steps < 1:
      raise ReproError("--schedule=warmup_cosine needs --warmup_steps=N with N >= 1")
    if (self.patience or self.schedule == "plateau" or self.eval_every) and not (
        self.validation_examples):
      what = ("--patience" if self.patience else "--schedule=plateau"
              if self.schedule == "plateau" else "--eval_every")
      raise ReproError(f"{what} needs a validation set: pass --validation_examples=N")
    if self.dataset not in DATASETS:
      raise ReproError(
          f"unknown dataset {self.dataset!r}: pass --dataset=" + " or --dataset=".join(DATASETS))
    return self

  def bit_fields(self) -> dict[str, Any]:
    """The fields that always decide the trained bits (see BIT_FIELDS).

    The fields of IDENTITY_DEFAULTS decide them too, but are listed only when
    they differ from their default, so that runs from before they existed keep
    their identity and default output name.
    """
    fields = {name: getattr(self, name) for name in BIT_FIELDS}
    fields.update({name: getattr(self, name) for name, default in IDENTITY_DEFAULTS.items()
                   if getattr(self, name) != default})
    return fields

  def identity_fields(self) -> dict[str, Any]:
    """Every field a checkpoint must agree on to be resumed bit for bit.

    The cosine schedules decay over the whole run, so for them the number of
    epochs decides every step's learning rate and cannot be raised on resume.
    Early stopping and the plateau schedule act on evaluations, so for them
    when and what is evaluated decides where the run stops or decays.
    """
    fields = self.bit_fields()
    if self.schedule in ("cosine", "warmup_cosine"):
      fields["epochs"] = self.epochs
    if self.schedule == "plateau":
      fields.update({name: getattr(self, name) for name in _PLATEAU_FIELDS})
    if self.schedule == "plateau" or self.patience:
      fields.update({name: getattr(self, name) for name in _CONTROL_FIELDS + ("patience",)})
    return fields

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
