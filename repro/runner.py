"""run(config, task) -> Result: the edges of a run, around the trainer.

Resolve the task, check the output directory, load the data, plan (build and
check everything; nothing is written yet), take the lock, start or resume
(repro.train.checkpointer, reading through repro.train.resume), train
(repro.train.trainer), and say how it ended. The loop is
repro.train.trainer; the numerics, which touch no file, are repro.train.core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import jax
from flax import nnx

from repro.machine import backend
from repro.train import components
from repro.train import core
from repro.machine import environment
from repro.train import identity as identity_lib
from repro.checkpoints import lock as lock_lib
from repro.machine import parallel
from repro.train import plan as plan_lib
from repro.train import optim
from repro.train import programs
from repro.train import rng
from repro.data import adapters
from repro.data import splits as splits_lib
from repro.train import state as state_lib
from repro import task as task_lib
from repro.train import warmstart
from repro.config import Config
from repro.errors import CheckpointWriteError, PeerLost, ReproError, squeezed
from repro.metrics import TEST, VAL
from repro.train.checkpointer import Checkpointer
from repro.train.runstate import Hook, RunState
from repro.train.stop import StopRequests
from repro.train.trainer import Ending, Trainer

# What a run directory may hold; anything else means --output points at
# somebody else's files, which a run must not mix itself into.
_OURS = re.compile(r"^(\d+|\d+\.orbax-checkpoint-tmp.*|corrupt-\d+(-\d+)?|config\.json|"
                   r"(metrics|trace|events|timings)\.jsonl(\.tmp)?|tensorboard|\.repro\.lock)$")
# What a failed collective of a multi-process run says when a peer is gone
# (gloo's and the coordination service's words), as opposed to, say, running
# out of memory.
_PEER_GONE = re.compile(r"[Cc]onnection (reset|closed|refused)|[Bb]roken pipe|peer|[Gg]loo|"
                        r"UNAVAILABLE|DEADLINE_EXCEEDED|heartbeat|[Ss]ocket closed|"
                        r"coordination service|task .* (died|failed|disconnected)")


@dataclasses.dataclass(frozen=True)
class Result:
  """What a run ended with.

  Attributes:
    step: global steps completed (the cursor).
    loss: training loss of the last step.
    test: every test metric of the final state ('test_loss', ...), empty when
      the task has no test split or a signal stopped the run early.
    output: the run directory.
    checkpoint: the directory of the last checkpoint step.
    digest: sha256 over every leaf of that checkpoint's state (repro.checkpoints.digest).
    resumed_from: the step this invocation resumed from, or None.
    already_complete: True if the run had already reached its target and
      nothing was trained or written.
    stopped_by: 'SIGTERM' or 'SIGINT' if a signal stopped the run early (a
      checkpoint was saved; rerun to resume), else None.
    stopped_early: True if early stopping (config.patience) ended the run.
    best_step: the step of the best validation result (config.monitor), whose
      checkpoint is kept; None without validation.
    best_value: that result.
    ms_step: mean wall time of a step in this invocation, after its first
      (compiling) chunk; None if nothing was trained (speed only, never bits).
  """

  step: int
  loss: float
  test: dict
  output: str
  checkpoint: str
  digest: str
  resumed_from: int | None
  already_complete: bool
  stopped_by: str | None = None
  stopped_early: bool = False
  best_step: int | None = None
  best_value: float | None = None
  ms_step: float | None = None

  @property
  def test_accuracy(self) -> float:
    return self.test.get("test_accuracy", float("nan"))

  @property
  def test_loss(self) -> float:
    return self.test.get("test_loss", float("nan"))


def resolve(config: Config, task: task_lib.Task | None = None) -> tuple[Config, task_lib.Task]:
  """The validated config and its task; config.task/task_options then describe the task.

  Without `task`, config.task ('package.module:attr') is imported and given
  config.task_options. With one, the config records its spec and options.
  """
  config.validate()
  if task is None:
    task = task_lib.recorded(config)
  elif not isinstance(task, task_lib.Task):
    raise ReproError(f"task must be a repro.Task, got {type(task).__name__}")
  else:
    config = config.replace(task=task_lib.spec_of(task))
  clash = sorted(set(task.options()) & identity_lib.reserved_names())
  if clash:
    raise ReproError(f"task {task_lib.task_name(task)}: option(s) {', '.join(clash)} would "
                     f"mix with repro's own settings: rename them")
  init_from = warmstart.absolute(config.init_from) if config.init_from else None
  return config.replace(task_options=task.options(), program=_program(config, task),
                        init_from=init_from), task


def _program(config: Config, task: task_lib.Task) -> str:
  """config.program, with 'auto' resolved from the task's model and the platform."""
  if config.program != "auto":
    return config.program
  model = state_lib.abstract_model(task, rng.streams(config.seed))
  if not isinstance(model, nnx.Module):
    return "scan"  # repro.train.state.build says what is wrong with it
  return programs.resolve(config.program, model, jax.default_backend(), config.micro_shards)


def _check_output(config: Config, task: task_lib.Task) -> Path:
  """The absolute output path, refused if unusable; nothing is created here."""
  output = Path(config.output or identity_lib.default_output(config, task)).expanduser().absolute()
  if output.exists():
    if not output.is_dir():
      raise ReproError(f"--output {output} is a file, not a directory: pass a directory path")
    foreign = sorted(p.name for p in output.iterdir() if not _OURS.match(p.name))
    if foreign:
      raise ReproError(
          f"--output {output} holds files that are not part of a repro run "
          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): pass a new or "
          f"empty directory")
    if not os.access(output, os.W_OK | os.X_OK):
      raise ReproError(f"--output {output} is not writable: pass a writable directory")
    return output
  parent = output.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise ReproError(f"cannot create --output {output}: {parent} is a file; pass a directory path")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ReproError(f"cannot create --output {output}: {parent} is not writable")
  return output


class _Forward(logging.Handler):
  def __init__(self, log: Callable[[str], None]):
    super().__init__(logging.INFO)
    self.log = log

  def emit(self, record: logging.LogRecord) -> None:
    self.log(record.getMessage())


@contextlib.contextmanager
def _notes_to(log: Callable[[str], None]):
  """Meanwhile, what repro's own modules say on the logger "repro" goes to `log`."""
  notes, handler = logging.getLogger("repro"), _Forward(log)
  level, propagate = notes.level, notes.propagate
  notes.addHandler(handler)
  notes.setLevel(logging.INFO)
  notes.propagate = False
  try:
    yield
  finally:
    notes.removeHandler(handler)
    notes.setLevel(level)
    notes.propagate = propagate


def _prepare_data(task: task_lib.Task, config: Config, primary: bool,
                  log: Callable[[str], None]) -> splits_lib.Prepared:
  """The task's splits, checked, with the validation examples held out.

  The primary process loads first (a task may prepare a cache, such as a TFDS
  copy), then the others read what it prepared.
  """
  if not config.progress:
    adapters.quiet_progress()
  if not primary:
    parallel.barrier("repro-data")
  with _notes_to(log):
    given = task_lib.guarded("data()", task, task.data)
  if primary:
    parallel.barrier("repro-data")
  prepared = splits_lib.prepare(given, task_lib.task_name(task), config.validation_examples,
                                config.batch_size)
  needs = config.needs_validation()
  if needs and prepared.validation is None:
    raise ReproError(f"{needs} needs a validation set: pass --validation_examples=N")
  return prepared


def run(config: Config, task: task_lib.Task | None = None, *,
        log: Callable[[str], None] = print, hooks: Sequence[Hook] = ()) -> Result:
  """Trains `task` under `config` to its target step, resuming `config.output` if it holds a run.

  Args:
    config: the run; validated first (ReproError on bad values).
    task: a repro.Task; None means config.task with config.task_options.
    log: receives one line per event (resume, checkpoint warnings, early stop).
    hooks: repro.Hooks, called read-only at every chunk boundary after the
      logs are written and the checkpoint (if due) is saved.

  Returns:
    The Result of the final state, bitwise identical whatever interruptions
    the run went through. SIGTERM or SIGINT during the run stop it at the next
    chunk boundary with a checkpoint (Result.stopped_by says which).
  """
  config.validate()
  backend.ensure(config.cpu_threads, config.micro_shards)  # before anything starts the backend
  config, task = resolve(config, task)
  mesh = parallel.make_mesh(config.devices, config.micro_shards, config.batch_size)
  backend.check_devices(config.cpu_threads, config.micro_shards)
  # The one rule for the processes of a run: every process computes every chunk, joins
  # every collective and writes its part of each checkpoint; process 0 alone speaks,
  # holds the run lock and writes the logs, the events and config.json.
  primary = parallel.is_primary()
  log = log if primary else _silent
  output = _check_output(config, task)
  if config.init_from:
    warmstart.check_source(config.init_from, output)
  data = _prepare_data(task, config, primary, log)
  environment.enable_compilation_cache()
  plan = plan_lib.make(config, task, output, data, mesh, hooks)  # builds and checks; writes nothing
  with (_run_lock(output, primary, log), StopRequests() as requests,
        Checkpointer(plan, primary) as checkpoints, _peers_watched(output)):
    _say_topology(mesh, config, log)
    state = checkpoints.start(log)
    if checkpoints.resumed_from is not None and plan.schedule.finished(state):
      return _complete(plan, state, checkpoints, log)
    _record_start(plan, state, checkpoints, primary, log)
    ending = _train(plan, state, checkpoints, requests, list(hooks), primary, log)
    checkpoints.finish()
  return _ended(plan, ending, checkpoints)


def _silent(_: str) -> None:
  """The log of a process other than 0."""


@contextlib.contextmanager
def _run_lock(output: Path, primary: bool, log: Callable[[str], None]):
  """Meanwhile, the run directory exists and process 0 holds its lock (one writer)."""
  if primary:
    try:
      output.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # the file system failing (--output itself was checked before)
      raise CheckpointWriteError(f"cannot create the run directory {output}: {err.strerror}; "
                                 f"nothing was trained or changed: fix the cause and rerun "
                                 f"the same command") from None
  run_lock = lock_lib.RunLock(output) if primary else None
  parallel.barrier("repro-output")
  try:
    if run_lock and run_lock.stale_owner:
      log(f"took over the lock of a run that died ({run_lock.stale_owner})")
    yield
  finally:
    if run_lock:
      run_lock.release()


@contextlib.contextmanager
def _peers_watched(output: Path):
  """Meanwhile, a collective that failed because a peer process is gone is PeerLost."""
  try:
    yield
  except jax.errors.JaxRuntimeError as err:
    if jax.process_count() == 1 or not _PEER_GONE.search(str(err)):
      raise
    raise _peer_lost(err, output) from None


def _say_topology(mesh, config: Config, log: Callable[[str], None]) -> None:
  if mesh is not None:
    processes, plural = jax.process_count(), "s" if mesh.size > 1 else ""
    log(f"data-parallel over {mesh.size} device{plural} ({processes} process"
        f"{'es' if processes > 1 else ''})" + (
            f", topology-invariant with {config.micro_shards} micro-shards"
            if config.micro_shards else ""))


def _record_start(plan: plan_lib.Plan, state: RunState, checkpoints: Checkpointer,
                  primary: bool, log: Callable[[str], None]) -> None:
  resumed = checkpoints.resumed_from is not None
  if plan.warm and not resumed:
    log(plan.warm.summary())
  if resumed:
    epoch, within = plan.schedule.epoch(state.step)
    log(f"resuming {plan.output} from step {state.step} (epoch {epoch}, step {within} of "
        f"{plan.schedule.steps_per_epoch})")
  if primary:
    (plan.output / "config.json").write_text(plan.config.to_json() + "\n")
  checkpoints.record("resume" if resumed else "start", state.step)


def _train(plan: plan_lib.Plan, state: RunState, checkpoints: Checkpointer,
           requests: StopRequests, hooks: list[Hook], primary: bool,
           log: Callable[[str], None]) -> Ending:
  """The trainer of this run, assembled from its phases, run from `state`."""
  config, data = plan.config, plan.data
  program = programs.PROGRAMS[config.program](plan)
  timings = components.Timings(plan.output) if primary else None
  reporters = components.Reporters(_reporters(plan, state, timings) if primary else [])
  trainer = Trainer(
      program=program, schedule=plan.schedule,
      guard=components.FiniteGuard(checkpoints, config.allow_nonfinite, log),
      validate=components.Evaluation(plan, data.validation, VAL),
      decide=components.Decisions(plan.settings, optim.schedule(config, plan.schedule.total),
                                  plan.mesh, log),
      test=components.Evaluation(plan, data.test, TEST),
      reporters=reporters, checkpoints=checkpoints, signals=components.StopOnSignal(requests),
      hooks=hooks)
  try:
    ending = trainer.run(state)
    if ending.stop:
      checkpoints.record("stop", ending.state.step, signal=ending.stop)
  finally:
    program.close()
    reporters.close()
    for hook in hooks:
      hook.close()
  return dataclasses.replace(ending, ms_step=timings.ms_step() if timings else None)


def _reporters(plan: plan_lib.Plan, state: RunState, timings: components.Timings) -> list:
  """metrics.jsonl and trace.jsonl, TensorBoard, the progress bar and timings.jsonl."""
  initial = core.fingerprint_now(state.arrays["model"]) if state.step == 0 else None
  return [components.Logs(plan.output, state.step, initial),
          components.TensorBoard(plan.output, state.step),
          components.Progress(plan.schedule.target, state.step, plan.schedule.steps_per_epoch,
                              f"seed {plan.config.seed}", plan.config.progress),
          timings]


def _complete(plan: plan_lib.Plan, state: RunState, checkpoints: Checkpointer,
              log: Callable[[str], None]) -> Result:
  """The Result of a run that had already reached its end: nothing is trained or written."""
  schedule = plan.schedule
  why = "stopped early" if state.control.stopped_early else f"target {schedule.target}"
  further = "" if state.control.stopped_early else (
      ": raise --max_steps (or drop it) to train further" if schedule.target < schedule.total
      else ": raise --epochs to train further")
  log(f"run in {plan.output} is already complete at step {state.step} ({why}); nothing to "
      f"do{further}")
  return _result(plan, state, checkpoints.manifest.get("metrics", {}), checkpoints.saved_path,
                 checkpoints.digest, resumed_from=state.step, already_complete=True)


def _ended(plan: plan_lib.Plan, ending: Ending, checkpoints: Checkpointer) -> Result:
  """The Result of this invocation's training (Result.stopped_by says if a signal stopped it;
  bin/train prints that line)."""
  metrics_now = ending.last.metrics if ending.last is not None else (
      (checkpoints.manifest or {}).get("metrics", {}))
  return _result(plan, ending.state, metrics_now, checkpoints.saved_path, checkpoints.digest,
                 resumed_from=checkpoints.resumed_from, already_complete=False,
                 stopped_by=ending.stop, ms_step=ending.ms_step)


def _result(plan: plan_lib.Plan, state: RunState, values: dict, checkpoint_path: str,
            state_digest: str, **how) -> Result:
  return Result(
      step=state.step, loss=values.get("loss", float("nan")),
      test={k: v for k, v in values.items() if k.startswith(TEST)}, output=str(plan.output),
      checkpoint=checkpoint_path, digest=state_digest, stopped_early=state.control.stopped_early,
      best_step=state.control.best_step, best_value=state.control.best, **how)


def _peer_lost(err: Exception, output: Path) -> PeerLost:
  first = squeezed(str(err).strip().splitlines()[0]) if str(err).strip() else type(err).__name__
  return PeerLost(
      f"a process of this {jax.process_count()}-process run failed ({first}); the steps "
      f"since the last checkpoint in {output} are lost: restart every process to resume")
