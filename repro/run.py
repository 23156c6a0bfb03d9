"""run(config, task) -> Result: resume or initialise, then train chunk by chunk.

The edges of a run live here: the task and its data, the output directory
and its lock, the restore, the components that act between chunks
(repro.components) and the Result. The loop is repro.loop; the numerics,
which touch no file, are repro.train.
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
import numpy as np
from flax import nnx

from repro import checkpoint
from repro import components as parts
from repro import control as control_lib
from repro import digest
from repro import environment
from repro import feed as feed_lib
from repro import identity as identity_lib
from repro import lock as lock_lib
from repro import loop
from repro import metrics
from repro import parallel
from repro import resume
from repro import rng
from repro import shuffle
from repro import source as source_lib
from repro import splits as splits_lib
from repro import state as state_lib
from repro import task as task_lib
from repro import train
from repro.config import Config
from repro.errors import CheckpointWriteError, PeerLost, ReproError
from repro.stop import StopRequests

MANIFEST_FORMAT = 2  # 2: tasks (the data section describes any task's splits)
# What a run directory may hold; anything else means --output points at
# somebody else's files, which a run must not mix itself into.
_OURS = re.compile(r"^(\d+|\d+\.orbax-checkpoint-tmp.*|corrupt-\d+(-\d+)?|config\.json|"
                   r"(metrics|trace|events)\.jsonl(\.tmp)?|tensorboard|\.repro\.lock)$")
# Names an option of a task may not take: they would mix with repro's own
# fields in the identity.
_RESERVED = {f.name for f in dataclasses.fields(Config)} | {
    "architecture", "shuffle", "rng_streams", "data_fingerprint", "module_rngs"}


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
    digest: sha256 over every leaf of that checkpoint's state (repro.digest).
    resumed_from: the step this invocation resumed from, or None.
    already_complete: True if the run had already reached its target and
      nothing was trained or written.
    stopped_by: 'SIGTERM' or 'SIGINT' if a signal stopped the run early (a
      checkpoint was saved; rerun to resume), else None.
    stopped_early: True if early stopping (config.patience) ended the run.
    best_step: the step of the best validation result (config.monitor), whose
      checkpoint is kept; None without validation.
    best_value: that result.
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
    task = task_lib.with_options(task_lib.resolve(config.task), config.task_options, config.task)
  elif not isinstance(task, task_lib.Task):
    raise ReproError(f"task must be a repro.Task, got {type(task).__name__}")
  else:
    config = config.replace(task=task_lib.spec_of(task))
  clash = sorted(set(task.options()) & _RESERVED)
  if clash:
    raise ReproError(f"task {task_lib.task_name(task)}: option(s) {', '.join(clash)} would "
                     f"mix with repro's own settings: rename them")
  return config.replace(task_options=task.options()), task


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
        log: Callable[[str], None] = print,
        components: Sequence[loop.Component] = ()) -> Result:
  """Trains `task` under `config` to its target step, resuming `config.output` if it holds a run.

  Args:
    config: the run; validated first (ReproError on bad values).
    task: a repro.Task; None means config.task with config.task_options.
    log: receives one line per event (resume, checkpoint warnings, early stop).
    components: extra repro.loop.Components; they act after repro's own at
      every chunk boundary.

  Returns:
    The Result of the final state, bitwise identical whatever interruptions
    the run went through. SIGTERM or SIGINT during the run stop it at the next
    chunk boundary with a checkpoint (Result.stopped_by says which).
  """
  config, task = resolve(config, task)
  mesh = parallel.make_mesh(config.devices, config.micro_shards, config.batch_size)
  primary = parallel.is_primary()
  log = log if primary else (lambda _: None)  # one process speaks
  output = _check_output(config, task)
  data = _prepare_data(task, config, primary, log)
  environment.enable_compilation_cache()
  training = _Run(config, task, output, data, mesh, log)  # builds and checks; writes nothing
  if primary:
    output.mkdir(parents=True, exist_ok=True)
  run_lock = lock_lib.RunLock(output) if primary else None
  parallel.barrier("repro-output")
  try:
    if run_lock and run_lock.stale_owner:
      log(f"took over the lock of a run that died ({run_lock.stale_owner})")
    if mesh is not None:
      log(f"data-parallel over {mesh.size} devices ({jax.process_count()} process"
          f"{'es' if jax.process_count() > 1 else ''})" + (
              f", topology-invariant with {config.micro_shards} micro-shards"
              if config.micro_shards else ""))
    with StopRequests() as stop:
      return training.train(stop, list(components))
  finally:
    if run_lock:
      run_lock.release()


class _Run:
  """One invocation's training: the built state, its components and its Result."""

  def __init__(self, config: Config, task: task_lib.Task, output: Path,
               data: splits_lib.Prepared, mesh, log: Callable[[str], None]):
    config = config.replace(data_path=_data_path(config, data))  # recorded as resolved
    self.config, self.task, self.output, self.data, self.mesh = config, task, output, data, mesh
    self.log, self.primary = log, parallel.is_primary()
    self.spe = shuffle.steps_per_epoch(len(data.train), config.batch_size)
    self.total = config.epochs * self.spe
    self.target = min(self.total, config.max_steps) if config.max_steps else self.total
    keys = rng.streams(config.seed)
    self.built = state_lib.build(task, config, keys, self.total, mesh)
    self.eval_names, reported = state_lib.check_task(task, self.built, data.train.features(),
                                                     config.batch_size)
    if data.validation is not None and config.monitor[4:] not in reported:
      raise ReproError(f"--monitor={config.monitor} is not a metric of task "
                       f"{task_lib.task_name(task)}: pass one of " +
                       ", ".join(f"--monitor=val_{m}" for m in reported))
    self.shuffle_key = keys["shuffle"]
    self.keys = parallel.replicate(keys, mesh)
    self.settings = control_lib.Settings.of(config, task.higher_is_better)
    self.identity = identity_lib.of(config, task, data.fingerprints, self.built.module_streams)
    self.env = environment.describe(devices_used=mesh.size if mesh is not None else 1)
    self.evaluate_batch = train.make_evaluate_batch(self.built.graphdef, task)

  def put(self, tree):
    return parallel.replicate(tree, self.mesh)

  def evaluate(self, state, split, prefix: str) -> dict[str, float]:
    """The task's metrics over `split`, as process 0 computed them, prefixed.

    Process 0 evaluates on its first device, batches fed from the host
    (repro.feed.evaluate): one single-device program on every topology and
    data path, so the same bits; the others receive its results.
    """
    values = np.zeros(len(self.eval_names), np.float32)
    if self.primary:
      means = feed_lib.evaluate(self.evaluate_batch, parallel.on_one_device(state), split,
                                train.EVAL_BATCH)
      values = np.array([means[k] for k in self.eval_names], np.float32)
    values = parallel.from_primary(values)
    summary = self.task.summarize({k: float(v) for k, v in zip(self.eval_names, values)})
    return {prefix + k: float(v) for k, v in summary.items()}

  def train(self, stop: StopRequests, extra: list[loop.Component]) -> Result:
    """Resumes or starts, runs the loop, and returns the Result (see run)."""
    store = checkpoint.Store(self.output, self.config.max_to_keep,
                             best_monitor=self.config.monitor if self.data.validation else None,
                             maximize=self.settings.maximize)
    events = metrics.MetricsLog(self.output / metrics.EVENTS_FILENAME, None) if (
        self.primary) else None
    abandoned = False  # the store is left to die with the process, unfinished saves and all
    try:
      ctx, resumed_from = self._start(store, events)
      if ctx.finished:
        return self._result(ctx, store, resumed_from, already_complete=True)
      self._loop(ctx, store, events, stop, extra)
      store.wait()
    except CheckpointWriteError:
      abandoned = True  # its writer threads may wait for what will never come
      raise
    except jax.errors.JaxRuntimeError as err:
      if jax.process_count() == 1:
        raise
      abandoned = True  # a peer died: the store's barriers would wait for it
      raise _peer_lost(err, self.output) from None
    finally:
      if events is not None:
        events.close()
      if not abandoned:
        store.close()
    return self._result(ctx, store, resumed_from)

  def _start(self, store: checkpoint.Store, events) -> tuple[loop.Context, int | None]:
    """The context to train from: the newest intact checkpoint's, or a fresh one."""
    control = control_lib.ControlState.from_json(None, self.settings)
    ctx = loop.Context(step=0, target=self.target, state=self.built.state, control=control)
    found = resume.latest(store, self.output, self.built.template, self.identity, self.env,
                          self.config.strict, bool(self.config.micro_shards), self.log)
    if found is not None:
      restored, ctx.saved_step = found
      ctx.state = state_lib.restore(self.built, restored.state)
      ctx.step = int(restored.cursor["step"])
      ctx.control = control_lib.ControlState.from_json(restored.cursor.get("control"),
                                                       self.settings)
      ctx.manifest = restored.manifest
      if ctx.finished:
        why = "stopped early" if ctx.control.stopped_early else f"target {self.target}"
        self.log(f"run in {self.output} is already complete at step {ctx.step} ({why}); nothing "
                 f"to do" + ("" if ctx.control.stopped_early else ": raise --epochs to train "
                             "further"))
        return ctx, ctx.step
      epoch, within = divmod(ctx.step, self.spe)
      self.log(f"resuming {self.output} from step {ctx.step} (epoch {epoch}, step {within} of "
               f"{self.spe})")
    if self.primary:
      (self.output / "config.json").write_text(self.config.to_json() + "\n")
      events.append([{"event": "resume" if found else "start", "step": ctx.step,
                      "time": parts.now()}])
    return ctx, (ctx.step if found else None)

  def _loop(self, ctx: loop.Context, store, events, stop: StopRequests,
            extra: list[loop.Component]) -> None:
    signals = parts.StopOnSignal(stop)
    components = self._components(ctx, store, events, signals) + extra
    chunk, feed = self._chunk()
    try:
      ctx.stop = signals.poll()
      loop.train(ctx, chunk, components, self.config.chunk_steps)
      if ctx.stop and events is not None:
        events.append([{"event": "stop", "signal": ctx.stop, "step": ctx.step,
                        "time": parts.now()}])
    finally:
      if feed is not None:
        feed.close()
      for component in components:
        component.close()

  def _chunk(self):
    """(chunk(state, first_step, num_steps) -> (state, trace), the host feed or None)."""
    host_fed = self.config.data_path == "host"
    fn = train.make_train_chunk(
        self.built.graphdef, self.task, chunk_steps=self.config.chunk_steps,
        num_examples=len(self.data.train), batch_size=self.config.batch_size,
        mesh=self.mesh, micro_shards=self.config.micro_shards, host_fed=host_fed)
    keys = self.keys
    if not host_fed:
      data = self.put(self.data.resident("train"))
      return (lambda state, step, n: fn(state, data, keys, np.int32(step), np.int32(n))), None
    feed = feed_lib.HostFeed(self.data.train, self.shuffle_key, self.config.batch_size,
                             self.config.chunk_steps, self.mesh)

    def chunk(state, step, n):
      out = fn(state, feed.get(step), keys, np.int32(step), np.int32(n))  # dispatched, not done
      if step + n < self.target:
        feed.prefetch(step + n)  # gathered while the devices compute
      return out

    return chunk, feed

  def _components(self, ctx: loop.Context, store, events, signals) -> list[loop.Component]:
    """repro's own components, in the order they act (see repro.components)."""
    config, step = self.config, ctx.step
    all_finite = lambda state: bool(train.all_finite(parallel.on_one_device(state)))
    found = [signals, parts.FiniteGuard(all_finite, config.allow_nonfinite, store.step_path,
                                        self.log)]
    if self.data.validation is not None:
      found.append(parts.Validation(self.evaluate, self.data.validation, config, self.settings,
                                    self.spe, self.total, self.put, self.log))
    found.append(parts.FinalTest(self.evaluate, self.data.test))
    syncs = []
    if self.primary:
      initial = lambda: train.fingerprint(ctx.state["model"])
      logs, board = parts.Logs(self.output, step, initial), parts.TensorBoard(self.output, step)
      found += [logs, board]
      syncs = [logs.sync, board.sync]
    found.append(parts.Checkpointer(store, config.checkpoint_every, self._describe, syncs,
                                    events))
    if self.primary:
      found.append(parts.Progress(ctx.target, step, self.spe, f"seed {config.seed}",
                                  config.progress))
    return found

  def _describe(self, ctx: loop.Context, pure: dict) -> tuple[dict, dict]:
    """The cursor and the manifest of a checkpoint of ctx.state (whose pure dict is `pure`)."""
    epoch, within = divmod(ctx.step, self.spe)
    cursor = {"step": ctx.step, "epoch": epoch, "step_in_epoch": within,
              "steps_per_epoch": self.spe, "num_train_examples": len(self.data.train),
              "batch_size": self.config.batch_size, "shuffle": shuffle.SCHEME,
              "control": ctx.control.to_json()}
    manifest = {
        "format": MANIFEST_FORMAT, "created": parts.now(), "config": self.config.to_dict(),
        "identity": self.identity,
        "data": {**self.data.info, "path": self.config.data_path,
                 "changes_watched_by": source_lib.CHANGE_RULE},
        "environment": self.env,
        "metrics": dict(ctx.metrics),
        "best": {"monitor": self.config.monitor, "step": ctx.control.best_step,
                 "value": ctx.control.best},
        "leaf_digests": digest.leaf_digests(pure), "state_digest": digest.tree_digest(pure)}
    return cursor, manifest

  def _result(self, ctx: loop.Context, store, resumed_from: int | None,
              already_complete: bool = False) -> Result:
    manifest = ctx.manifest or {}
    if not already_complete and ctx.manifest is None:  # stopped before the first step
      self.log(f"stopped by {ctx.stop} before the first step; nothing was saved")
    elif not already_complete and ctx.step < ctx.target:
      self.log(f"stopped by {ctx.stop} at step {ctx.step}; checkpoint saved to "
               f"{store.step_path(ctx.saved_step)}; rerun the same command to resume")
    values = manifest.get("metrics", {})
    return Result(
        step=ctx.step, loss=values.get("loss", float("nan")),
        test={k: v for k, v in values.items() if k.startswith("test_")}, output=str(self.output),
        checkpoint=str(store.step_path(ctx.saved_step)) if ctx.saved_step is not None else "",
        digest=manifest.get("state_digest", ""), resumed_from=resumed_from,
        already_complete=already_complete,
        stopped_by=ctx.stop if ctx.step < ctx.target else None,
        stopped_early=ctx.control.stopped_early, best_step=ctx.control.best_step,
        best_value=ctx.control.best)


def _data_path(config: Config, data: splits_lib.Prepared) -> str:
  """'device' or 'host': config.data_path, or by the budget when it is 'auto'."""
  if config.data_path != "auto":
    return config.data_path
  return "host" if data.train.nbytes > config.data_budget_mb * 2**20 else "device"


def _peer_lost(err: Exception, output: Path) -> PeerLost:
  first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
  return PeerLost(
      f"a process of this {jax.process_count()}-process run failed ({first}); the steps "
      f"since the last checkpoint in {output} are lost: restart every process to resume")
