"""repro.load: a trained model from a run directory, a checkpoint step or an export, verified.

    trained = repro.load("runs/mine")            # the newest finalized step
    logits = trained.model(images)               # in eval mode, on one device

The manifest is read first; the task is rebuilt from the spec and options it
records (or passed in); the restore goes nnx.eval_shape template -> Orbax
(onto this process's first device, whatever devices wrote it) ->
nnx.replace_by_pure_dict -> nnx.update; every leaf's checksum is verified
against the manifest. An export (repro.export) fills the model's weights,
each checked against the export's checksums, cast to the model's dtypes.
Nothing is written: it is safe while the run trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from repro.machine import backend
from repro.train import identity as identity_lib
from repro.train import rng
from repro.train import state as state_lib
from repro.checkpoints import stored as stored_lib
from repro import task as task_lib
from repro.train import warmstart
from repro.config import Config
from repro.errors import ReproError


@dataclasses.dataclass(frozen=True)
class Trained:
  """A trained model and where it came from.

  Attributes:
    model: the task's nnx.Module with the checkpoint's state, in eval mode.
    task: the repro.Task it was trained as.
    config: the run's Config.
    step: the checkpoint's global step.
    metrics: what the run observed at that step ('loss', 'val_*', 'test_*').
    manifest: the checkpoint's whole manifest (identity, versions, checksums).
    path: the checkpoint step directory.
  """

  model: nnx.Module
  task: task_lib.Task
  config: Config
  step: int
  metrics: dict
  manifest: dict
  path: Path


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint's or an export's train state, restored into its task's model and optimizer
  (an export's optimizer is fresh): what load and evaluate are made from."""

  built: state_lib.Built
  state: nnx.State
  task: task_lib.Task
  config: Config
  stored: stored_lib.Stored


def restore(path: str | Path, step: int | str | None = None, task: task_lib.Task | None = None,
            options: dict | None = None, run_pool: bool = False) -> Restored:
  """The train state that `path` (a run, a step directory or an export) holds at `step`.

  The task is the one recorded (or `task`), with `options` replacing some of its
  options; ReproError (one line) if its model does not fit the checkpoint.
  run_pool: the process must compute with the run's XLA:CPU pool (repro.machine.backend.ensure).
  """
  stored = stored_lib.find(path, step)
  if stored.kind == stored_lib.ORBAX:
    raise ReproError(f"{stored.path} is an Orbax checkpoint that repro did not write (it names "
                     f"no task): pass it to --init_from of a run, or restore it with Orbax")
  config = Config.from_dict(stored.config)
  if run_pool:
    backend.ensure(config.cpu_threads, config.micro_shards)
  if task is None:
    task = task_lib.recorded(config)
  task = task_lib.with_options(task, options or {}, config.task)
  built = state_lib.build(task, config, rng.streams(config.seed), total_steps(stored), None)
  fix = (f"the option(s) {', '.join(sorted(options))} change the model: keep the run's values"
         if options else f"pass the task it was trained as: repro.load(path, "
                         f"task={type(task).__name__}(...))")
  if stored.kind == stored_lib.EXPORT:
    _fill_exactly(built, stored, task, fix)
    state = nnx.state(built.objects)
  else:
    saved = stored_lib.state_metadata(stored.path)
    identity_lib.check_structure(stored.path.parent, stored.step, saved, built.template,
                                 action="load", fix=fix)
    pure = stored_lib.restore_state(stored.path, built.template)
    stored_lib.check_digests(stored.path, stored.meta.get("leaf_digests", {}), pure)
    state = state_lib.restore(built, pure)
  return Restored(built=built, state=state, task=task, config=config, stored=stored)


def total_steps(stored: stored_lib.Stored) -> int:
  """The run's steps in all (a schedule's length: the optimizer's shape may depend on it)."""
  if stored.kind == stored_lib.EXPORT:
    return int(stored.meta.get("total_steps", 1))
  cursor = stored_lib.read_json(stored.path, "cursor")
  return Config.from_dict(stored.config).epochs * int(cursor.get("steps_per_epoch", 1))


def _fill_exactly(built: state_lib.Built, stored: stored_lib.Stored, task: task_lib.Task,
                  fix: str) -> None:
  """The model's weights from an export, which must hold each of them and nothing else."""
  filled = warmstart.fill(built.objects["model"], stored_lib.read_tree(stored), lambda n: n)
  if filled.fresh or filled.unused:
    named = [f"  {name}: not in the export" for name in filled.fresh[:6]] + [
        f"  {name}: not in the model" for name in filled.unused[:6]]
    raise ReproError(f"cannot load {stored.path}: its weights do not fit the model of task "
                     f"{task_lib.task_name(task)}:\n" + "\n".join(named) +
                     f"\n{fix}")


def load(path: str | Path, step: int | str | None = None,
         task: task_lib.Task | None = None) -> Trained:
  """The model of a checkpoint or an export, in eval mode on one device; ReproError (one line)
  if the path, the step or the task does not fit, or a leaf does not match its checksum."""
  restored = restore(path, step, task)
  model = nnx.merge(restored.built.graphdef, restored.state)["model"]
  model.eval()
  stored = restored.stored
  return Trained(model=model, task=restored.task, config=restored.config, step=stored.step,
                 metrics=dict(stored.meta.get("metrics", {})), manifest=stored.meta,
                 path=stored.path)
