"""repro.evaluate: a checkpoint's (or an export's) metrics on a split, as the run computes them.

Options that change only what is evaluated (the test set's size, another data
directory) may differ from the run's: nothing is trained, so the identity is
not checked, only that the model fits the checkpoint. The evaluation is the
run's own program (repro.train.plan.Evaluator), so on the run's split it gives the
metrics the run recorded, bit for bit. Nothing is written into the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from repro.train import plan as plan_lib
from repro.data import splits as splits_lib
from repro.train import state as state_lib
from repro import task as task_lib
from repro.model import trained as trained_lib
from repro.errors import ReproError
from repro.metrics import TEST, TRAIN, VAL

PREFIXES = {"test": TEST, "validation": VAL, "train": TRAIN}


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What evaluate found.

  Attributes:
    path: the checkpoint step (or export) directory evaluated.
    step: its global step.
    split: 'test', 'validation' or 'train'.
    examples: how many examples of the split were evaluated.
    metrics: {'test_loss': ..., ...}: the task's metrics, prefixed as the run's.
    options: the task options that differed from the run's.
  """

  path: str
  step: int | None
  split: str
  examples: int
  metrics: dict[str, float]
  options: dict

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def evaluate(path: str | Path, step: int | str | None = None, split: str = "test",
             task: task_lib.Task | None = None, options: dict | None = None) -> Evaluation:
  """The task's evaluation metrics of `path` at `step` on `split` (see the module doc).

  Args:
    path: a run directory, a checkpoint step directory or an export.
    step: None (the newest), 'best' or an integer step.
    split: 'test', 'validation' (the run's, held out as it was) or 'train'.
    task: the task to evaluate as (default: the run's recorded task).
    options: task options to change (say {'test_examples': 10000}).
  """
  if split not in PREFIXES:
    raise ReproError(f"unknown split {split!r}: pass " + ", ".join(PREFIXES))
  restored = trained_lib.restore(path, step, task, options, run_pool=True)
  task, config = restored.task, restored.config
  name = task_lib.task_name(task)
  data = splits_lib.prepare(task_lib.guarded("data()", task, task.data), name,
                            config.validation_examples, config.batch_size)
  chosen = {"test": data.test, "validation": data.validation, "train": data.train}[split]
  if chosen is None:
    raise ReproError(f"task {name} has no {split} split here: pass --split=" + " or --split=".join(
        s for s in PREFIXES if getattr(data, s) is not None))
  names, _ = state_lib.check_task(task, restored.built, data.train.features(), config.batch_size)
  metrics = plan_lib.Evaluator(restored.built.graphdef, task, names)(
      restored.state, chosen, PREFIXES[split])
  return Evaluation(path=str(restored.stored.path), step=restored.stored.step, split=split,
                    examples=len(chosen), metrics=metrics, options=dict(options or {}))


def table(evaluation: Evaluation) -> str:
  """The evaluation as bin/eval prints it."""
  at = f"step {evaluation.step}" if evaluation.step is not None else "export"
  changed = "".join(f", --task.{k}={v}" for k, v in sorted(evaluation.options.items()))
  width = max(map(len, evaluation.metrics), default=0)
  lines = [f"{evaluation.path} ({at}), {evaluation.split} split, {evaluation.examples} "
           f"examples{changed}"]
  lines += [f"  {name:<{width}}  {value:.6g}" for name, value in sorted(evaluation.metrics.items())]
  return "\n".join(lines)
