"""Every knob of a run in one frozen dataclass, with validation and JSON I/O.

Each field is defined once, here: its default, its help text (which is also
its --flag's help, see repro.cli), and its bounds or choices (which validate()
checks). The task's own options live in `task_options` (see repro.task). Which
fields decide the bits is said in one place, repro.train.identity.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from repro.machine import backend
from repro.errors import ReproError
from repro.metrics import VAL

# The task a run trains when none is named (package.module:attr; repro.task resolves it).
# Here, not in repro.task: a command line is read and checked without importing JAX.
DEFAULT_TASK = "repro.tasks.cnn:CNN"

SCHEDULES = ("constant", "cosine", "warmup_cosine", "plateau")

# Fields of configs from before tasks existed, now options of the default task.
_LEGACY_TASK_FIELDS = ("dataset", "data_dir", "tfds_dir", "dropout")


def _field(default, help: str, **meta):
  return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class Config:
  """The full description of a training run; each field's `help` metadata documents it."""

  seed: int = _field(0, "The one seed: init, data order and every per-step key derive from "
                     "it.", min=0)
  epochs: int = _field(3, "Passes over the training split; may be raised when resuming.", min=1)
  batch_size: int = _field(64, "Examples per step; the last partial batch of an epoch is "
                           "dropped.", min=1)
  learning_rate: float = _field(1e-3, "Peak learning rate given to the task's optimizer.")
  task: str = _field(DEFAULT_TASK, "The task, as package.module:attr (see repro.task).")
  task_options: dict = _field(None, "The task's options (its dataclass fields).")
  output: str | None = _field(None, "Run directory; resumed if it holds checkpoints. Default: "
                              "runs/seed<seed>-<digest of the settings that decide the bits>.")
  init_from: str | None = _field(
      None, "Start the model from another model's weights (a warm start, a fine-tune): a run "
      "directory (its newest checkpoint; PATH:best or PATH:<step> for another), a step "
      "directory, an export (bin/export) or an Orbax checkpoint of a model's pure dict. "
      "Weights are matched by path and shape; the optimizer is fresh and the step 0. The "
      "source's weights digest, step and task enter the run's identity.")
  checkpoint_every: int = _field(500, "Save a checkpoint every N global steps (and at the "
                                 "end).", min=1)
  max_to_keep: int = _field(3, "Checkpoints to keep (>= 1).", min=1)
  max_steps: int | None = _field(None, "Stop after this global step, with a checkpoint there.",
                                 min=1)
  chunk_steps: int = _field(100, "Steps per chunk: between two host syncs (speed only; never "
                            "the bits).", min=1)
  program: str = _field("auto", "What runs a chunk: 'scan' (one compiled lax.scan of the "
                        "chunk's steps), 'step' (one compiled step, dispatched per step) or "
                        "'auto' (step on CPU for a model with a convolution without "
                        "--micro_shards, else scan). The two give different bits; the choice "
                        "is part of the run's identity.",
                        choices=("auto", "scan", "step"))
  progress: bool = _field(True, "Show a progress bar.")
  strict: bool = _field(False, "Refuse to resume a checkpoint written with other package "
                        "versions or on another platform (default: warn).")
  allow_nonfinite: bool = _field(False, "Train on after a NaN or infinite loss (default: stop "
                                 "at the first one, exit 3; no non-finite state is saved).")
  validation_examples: int = _field(0, "Hold out the last N training examples as a static "
                                    "validation set (for tasks without a validation split).",
                                    min=0)
  eval_every: int = _field(0, "Also evaluate every N steps (validation is evaluated at each "
                           "epoch end anyway).", min=0)
  monitor: str = _field("val_loss", "What early stopping, plateau and the kept best checkpoint "
                        "look at: val_<any metric the task reports>.")
  patience: int = _field(0, "Stop after N evaluations without improvement (0: never).", min=0)
  schedule: str = _field("constant", "Learning-rate schedule.", choices=SCHEDULES)
  warmup_steps: int = _field(0, "Warmup steps of warmup_cosine.", min=0)
  plateau_patience: int = _field(2, "Evaluations without improvement before plateau decays "
                                 "the rate.", min=1)
  plateau_factor: float = _field(0.5, "Plateau decay factor, in (0, 1).")
  data_path: str = _field("auto", "Where the train split lives: 'device' (the whole split on "
                          "the device), 'host' (each chunk's batches gathered on the host and "
                          "fed, for data larger than device memory) or 'auto' (host if the "
                          "split exceeds --data_budget_mb). The same bits either way.",
                          choices=("auto", "device", "host"))
  data_budget_mb: int = _field(2048, "Device memory the train split may take on the device "
                               "path (--data_path=auto); 0: always the host.", min=0)
  devices: int = _field(0, "Train data-parallel on the first N devices (0: all, of every "
                        "process). CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N "
                        "makes N.", min=0)
  cpu_threads: int = _field(
      backend.DEFAULT_THREADS, "Threads of XLA:CPU's pool (on CPU; max(N, --micro_shards)). The "
      "bits follow this number, never the machine's CPU count: the same command gives the same "
      "bits on 1 CPU or 64. More threads than CPUs costs time; fewer leaves CPUs idle. Part of "
      "the run's identity.", min=1)
  micro_shards: int = _field(0, "0: the bits follow the device count. M: topology-invariant "
                             "mode, the same bits on every device count dividing M (the batch "
                             "is cut into M micro-shards summed in one order).", min=0)

  def __post_init__(self):
    if self.task_options is None:
      object.__setattr__(self, "task_options", {})

  def validate(self) -> "Config":
    """Raises ReproError naming the first bad field and its fix; returns self."""
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if "min" in field.metadata and not (value is None and field.default is None):
        _need_int(field.name, value, field.metadata["min"])
      if "choices" in field.metadata and value not in field.metadata["choices"]:
        raise ReproError(f"unknown {field.name} {value!r}: pass --{field.name}=" +
                         f" or --{field.name}=".join(field.metadata["choices"]))
    if self.seed >= 2**32:
      raise ReproError(f"seed must be < 2**32, got {self.seed}")
    if self.micro_shards and self.program == "step":
      raise ReproError("--program=step cannot give topology-invariant bits (measured: its bits "
                       "follow the device count): pass --program=scan or --program=auto with "
                       "--micro_shards")
    if self.micro_shards and self.batch_size % self.micro_shards:
      raise ReproError(
          f"--batch_size={self.batch_size} cannot be cut into --micro_shards="
          f"{self.micro_shards} equal parts: pass a micro_shards that divides the batch size")
    lr = self.learning_rate
    if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
      raise ReproError(f"learning_rate must be a positive finite number, got {lr!r}")
    if not _is_number(self.plateau_factor) or not 0 < self.plateau_factor < 1:
      raise ReproError(f"plateau_factor must be in (0, 1), got {self.plateau_factor!r}")
    if not isinstance(self.monitor, str) or not self.monitor.startswith(VAL):
      raise ReproError(f"--monitor={self.monitor} must name a validation metric: val_loss, "
                       f"val_accuracy, or val_<a metric of the task>")
    if self.schedule == "warmup_cosine" and self.warmup_steps < 1:
      raise ReproError("--schedule=warmup_cosine needs --warmup_steps=N with N >= 1")
    if self.init_from is not None and (not isinstance(self.init_from, str)
                                       or not self.init_from.strip()):
      raise ReproError(f"--init_from must name a run, a step, an export or an Orbax "
                       f"checkpoint, got {self.init_from!r}")
    if not isinstance(self.task_options, dict):
      raise ReproError(f"task_options must be a dict, got {type(self.task_options).__name__}")
    return self

  def needs_validation(self) -> str | None:
    """The flag that needs a validation set, if any."""
    if self.patience:
      return "--patience"
    if self.schedule == "plateau":
      return "--schedule=plateau"
    return "--eval_every" if self.eval_every else None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "Config":
    """Builds a Config, refusing unknown keys with their names.

    Configs written before tasks existed carry dataset, data_dir, tfds_dir and
    dropout at the top: they become options of the default task.
    """
    values = dict(values)
    legacy = {k: values.pop(k) for k in _LEGACY_TASK_FIELDS if k in values}
    if legacy:
      if values.get("task", DEFAULT_TASK) != DEFAULT_TASK:
        raise ReproError(f"config field(s) {', '.join(legacy)} are options of the default task, "
                         f"not of {values['task']}: put the task's options under task_options")
      values["task_options"] = {**legacy, **(values.get("task_options") or {})}
    unknown = sorted(set(values) - set(_names()))
    if unknown:
      raise ReproError(
          f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(_names())}")
    return cls(**values)

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)


def _names() -> list[str]:
  return sorted(f.name for f in dataclasses.fields(Config))


def _is_number(value) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, float))


def _need_int(name: str, value, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ReproError(f"{name} must be an integer, got {value!r}")
  if value < low:
    raise ReproError(f"{name} must be >= {low}, got {value}: pass --{name}=N with N >= {low}")
