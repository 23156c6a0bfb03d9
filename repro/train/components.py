"""The phases of a chunk boundary, each a small unit with one job (see repro.train.trainer).

  StopOnSignal  a SIGTERM/SIGINT to any process of the run, agreed on by all
  FiniteGuard   a NaN or infinite loss or state stops the run before anything
                of the chunk is logged or saved
  Decisions     early stopping, the plateau schedule and the best checkpoint,
                from a validation result (repro.train.control, a pure state machine)
  Logs, TensorBoard, Progress   what a boundary reports (Reporters: all three)
  Checkpointer  a checkpoint of the RunState, with its cursor and manifest

None reads what another wrote: each takes its inputs as arguments, and the
trainer calls them in the order they act.
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from flax import nnx
from tqdm import tqdm

from repro.train import control as control_lib
from repro import metrics as metrics_lib
from repro.train import optim
from repro.machine import parallel
from repro.errors import NonFiniteLoss
from repro.metrics import TRAIN, VAL
from repro.train.runstate import Chunk, RunState, StepInfo


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def hex32(value) -> str:
  return f"{int(value):08x}"


class StopOnSignal:
  """Whether a SIGTERM or SIGINT asked any process of the run to stop.

  Every process must take the same branches, so a stop asked of any one is
  agreed on by all (one tiny collective per poll).
  """

  def __init__(self, requests):
    self.requests = requests

  def poll(self) -> str | None:
    if parallel.any_process(bool(self.requests.signal_name)):
      return self.requests.signal_name or "a stop in another process"
    return None


class FiniteGuard:
  """Stops the run at the first NaN or infinite loss, or a non-finite state.

  The losses are the chunk's trace, already on the host; the state is
  checked once per chunk (the last step's update may make it non-finite while
  its loss is still finite). It runs before anything is logged or saved, so no
  non-finite state is ever saved and no finite checkpoint is rotated away.
  With allow (--allow_nonfinite) it warns once and lets the run go on.
  """

  def __init__(self, all_finite: Callable, allow: bool, checkpoint_path: Callable,
               log: Callable):
    self.all_finite, self.allow, self.checkpoint_path = all_finite, allow, checkpoint_path
    self.log, self.warned = log, False

  def check(self, chunk: Chunk, state: RunState, saved_step: int | None) -> None:
    losses = np.asarray(chunk.trace["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
      what = f"the loss became {losses[bad[0]]} at step {chunk.first + 1 + int(bad[0])}"
    elif not self.all_finite(state.arrays):
      what = f"the model or optimizer state became non-finite by step {state.step}"
    else:
      return
    if self.allow:
      if not self.warned:
        self.log(f"warning: {what}; training on (--allow_nonfinite)")
        self.warned = True
      return
    last = (f"the last finite checkpoint is {self.checkpoint_path(saved_step)}"
            if saved_step is not None else "no checkpoint was saved")
    raise NonFiniteLoss(f"{what}: stopped, nothing non-finite was saved and {last}: rerun with "
                        f"a lower --learning_rate (or gradient clipping in the task's "
                        f"optimizer) and a new --output, or pass --allow_nonfinite to train on")


class Decisions:
  """The run state after a validation result: best so far, early stop, plateau decay."""

  def __init__(self, settings: control_lib.Settings, config, total_steps: int, put: Callable,
               log: Callable):
    self.settings, self.config, self.total, self.put, self.log = (
        settings, config, total_steps, put, log)

  def __call__(self, state: RunState, results: dict | None
               ) -> tuple[RunState, dict | None, bool]:
    """(state, the evaluation record for the logs, whether the monitor improved)."""
    if results is None:
      return state, None, False
    control = control_lib.observe(state.control, self.settings, state.step, results)
    arrays = state.arrays
    if control.lr != state.control.lr:  # the plateau schedule decays from the next step on
      arrays = _with_learning_rate(arrays, control.lr, self.put)
      self.log(f"step {state.step}: no improvement of {self.settings.monitor} in "
               f"{self.settings.plateau_patience} evaluations; learning rate -> "
               f"{control.lr:.3g}")
    if control.stopped_early:
      self.log(f"early stop at step {state.step}: no improvement of {self.settings.monitor} in "
               f"{self.settings.patience} evaluations; best {control.best:.4f} at step "
               f"{control.best_step}")
    lr = optim.learning_rate(self.config, self.total, state.step, control.lr)
    record = {"step": state.step, **results, "lr": lr}
    return (state.replace(control=control, arrays=arrays), record,
            control_lib.improved(state.control, control))


def _with_learning_rate(train, lr: float, put: Callable):
  pure = nnx.to_pure_dict(train)
  tree = pure
  for key in optim.PLATEAU_PATH[:-1]:
    tree = tree[key]
  tree[optim.PLATEAU_PATH[-1]] = put(np.float32(lr))
  nnx.replace_by_pure_dict(train, pure)
  return train


class Logs:
  """metrics.jsonl (per-step loss and metrics, evaluations) and trace.jsonl.

  On resume both are cut back to the resumed step, so that a resumed run's
  files equal an uninterrupted run's line for line.
  """

  def __init__(self, output: Path, step: int, initial_params: Callable | None):
    # A fresh start keeps nothing: a run killed before its first checkpoint left a
    # step-0 line (and perhaps more) that this start writes again (measured by
    # tools/fault_sweep.py: a kill at the first unlink doubled trace.jsonl's first line).
    kept = step if step > 0 else -1
    self.metrics = metrics_lib.MetricsLog(output / metrics_lib.FILENAME, kept)
    self.trace = metrics_lib.MetricsLog(output / metrics_lib.TRACE_FILENAME, kept)
    if step == 0:  # the initial parameters: where seeds 0 and 1 already differ
      self.trace.append([{"step": 0, "params": hex32(initial_params())}])

  def write(self, info: StepInfo) -> None:
    t, steps, losses = info.chunk.trace, info.chunk.steps, info.chunk.losses
    extra = [{f"{TRAIN}{k}": float(v[i]) for k, v in t["metrics"].items()}
             for i in range(len(losses))]
    self.metrics.append({"step": s, "loss": x, **extra[i]}
                        for i, (s, x) in enumerate(zip(steps, losses)))
    self.trace.append({"step": s, "loss": x, "batch": hex32(t["batch"][i]),
                       "params": hex32(t["params"][i])}
                      for i, (s, x) in enumerate(zip(steps, losses)))
    if info.evaluation is not None:
      self.metrics.append([info.evaluation])

  def sync(self) -> None:
    self.metrics.sync()
    self.trace.sync()

  def close(self) -> None:
    self.metrics.close()
    self.trace.close()


class TensorBoard:
  """The training loss, the learning rate and every evaluation, for TensorBoard.

  On resume, events written after the resumed step are purged.
  """

  def __init__(self, output: Path, step: int):
    from tensorboardX import SummaryWriter
    # Its own warnings (e.g. "NaN or Inf found in input tensor" under
    # --allow_nonfinite) are not for the user: repro says what happened.
    logging.getLogger("tensorboardX").setLevel(logging.ERROR)
    self.writer = SummaryWriter(logdir=str(output / "tensorboard"),
                                purge_step=step + 1 if step else None, flush_secs=30)

  def write(self, info: StepInfo) -> None:
    for step, loss in zip(info.chunk.steps, info.chunk.losses):
      self.writer.add_scalar("train/loss", loss, step)
    for name, value in (info.evaluation or {}).items():
      if name != "step":
        self.writer.add_scalar("train/lr" if name == "lr" else f"val/{name.removeprefix(VAL)}",
                               value, info.step)

  def sync(self) -> None:
    with metrics_lib.writing(Path(self.writer.logdir)):
      self.writer.flush()

  def close(self) -> None:
    with metrics_lib.writing(Path(self.writer.logdir)):
      self.writer.close()


class Timings:
  """timings.jsonl: each chunk's wall time on the host (never cut back: a history).

  The first chunk of an invocation includes compiling its program. Kept out of
  metrics.jsonl, which must be equal line for line between a resumed and an
  uninterrupted run.
  """

  def __init__(self, output: Path):
    self.log = metrics_lib.MetricsLog(output / metrics_lib.TIMINGS_FILENAME, None)
    self.chunks = []

  def write(self, info: StepInfo) -> None:
    steps, took = len(info.chunk.steps), info.chunk.seconds
    self.chunks.append((steps, took))
    self.log.append([{"step": info.step, "steps": steps, "seconds": round(took, 6),
                      "ms_step": round(1000 * took / steps, 3), "first": len(self.chunks) == 1,
                      "time": now()}])

  def ms_step(self) -> float | None:
    """Mean ms a step of this invocation's chunks after the first (which compiles); None
    when only the first ran."""
    steps = sum(n for n, _ in self.chunks[1:])
    return 1000 * sum(t for _, t in self.chunks[1:]) / steps if steps else None

  def sync(self) -> None:
    self.log.sync()

  def close(self) -> None:
    self.log.close()


class Progress:
  """A tqdm bar on stderr: step, epoch, loss and the last chunk's ms a step."""

  def __init__(self, target: int, step: int, steps_per_epoch: int, label: str, enabled: bool):
    self.spe = steps_per_epoch
    self.bar = tqdm(total=target, initial=step, unit="step", disable=not enabled,
                    desc=label + (f" (resumed at {step})" if step else ""), file=sys.stderr,
                    dynamic_ncols=True)

  def write(self, info: StepInfo) -> None:
    self.bar.set_postfix(loss=f"{info.loss:.4f}", epoch=info.step // self.spe,
                         ms_step=f"{1000 * info.chunk.seconds / len(info.chunk.steps):.1f}",
                         refresh=False)
    self.bar.update(len(info.chunk.steps))

  def sync(self) -> None:
    pass

  def close(self) -> None:
    self.bar.close()


class Reporters:
  """What a boundary reports, in order: each reporter's write, sync and close."""

  def __init__(self, reporters: list):
    self.reporters = reporters

  def write(self, info: StepInfo) -> None:
    for reporter in self.reporters:
      reporter.write(info)

  def sync(self) -> None:
    """Makes what was written durable (before each checkpoint)."""
    for reporter in self.reporters:
      reporter.sync()

  def close(self) -> None:
    for reporter in self.reporters:
      reporter.close()


class Checkpointer:
  """Saves checkpoints of the RunState: the state, its cursor and its manifest.

  describe(state, metrics, pure) gives the (cursor, manifest) of a RunState
  whose train state's pure dict is `pure`. saved: the (step, manifest) of the
  checkpoint the run resumed from, if any.
  """

  def __init__(self, store, describe: Callable, events: metrics_lib.MetricsLog | None,
               saved: tuple[int, dict] | None = None):
    self.store, self.describe, self.events = store, describe, events
    self.saved_step, self.manifest = saved if saved is not None else (None, None)

  def save(self, info: StepInfo) -> None:
    pure = nnx.to_pure_dict(info.state.arrays)
    cursor, manifest = self.describe(info.state, info.metrics, pure)
    validation = {k: v for k, v in info.metrics.items() if k.startswith(VAL)}
    self.store.save(info.step, pure, cursor, manifest,
                    metrics={"step": info.step, **validation} if validation else None)
    if self.events is not None:
      self.events.append([{"event": "checkpoint", "step": info.step, "time": now()}])
    self.saved_step, self.manifest = info.step, manifest
