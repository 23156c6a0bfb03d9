"""The phases of a chunk boundary, each a small unit with one job (see repro.train.trainer).

  StopOnSignal  a SIGTERM/SIGINT to any process of the run, agreed on by all
  FiniteGuard   a NaN or infinite loss or state stops the run before anything
                of the chunk is logged or saved
  Decisions     early stopping, the plateau schedule and the best checkpoint,
                from a validation result (repro.train.control, a pure state machine)
  Evaluation    a split's metrics on the run state (validation, test)
  Logs, TensorBoard, Progress, Timings   what a boundary reports (Reporters)

The Checkpointer, which saves, is repro.train.checkpointer.

None reads what another wrote: each takes its inputs as arguments, and the
trainer calls them in the order they act.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from repro.train import control as control_lib
from repro.train import core
from repro import metrics as metrics_lib
from repro.train import optim
from repro.machine import parallel
from repro.errors import NonFiniteLoss
from repro.metrics import TRAIN, VAL, now
from repro.train.runstate import Chunk, RunState, StepInfo


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
  checkpoints: the run's Checkpointer, to name the last finite checkpoint.
  """

  def __init__(self, checkpoints, allow: bool, log: Callable):
    self.checkpoints, self.allow, self.log, self.warned = checkpoints, allow, log, False

  @staticmethod
  def finite(train) -> bool:
    """Whether every leaf of the train state is finite (one small device reduction)."""
    return bool(core.all_finite(parallel.on_one_device(train)))

  def check(self, chunk: Chunk, state: RunState) -> None:
    losses = np.asarray(chunk.trace["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
      what = f"the loss became {losses[bad[0]]} at step {chunk.first + 1 + int(bad[0])}"
    elif not self.finite(state.arrays):
      what = f"the model or optimizer state became non-finite by step {state.step}"
    else:
      return
    if self.allow:
      if not self.warned:
        self.log(f"warning: {what}; training on (--allow_nonfinite)")
        self.warned = True
      return
    saved = self.checkpoints.saved_step
    last = (f"the last finite checkpoint is {self.checkpoints.path(saved)}"
            if saved is not None else "no checkpoint was saved")
    raise NonFiniteLoss(f"{what}: stopped, nothing non-finite was saved and {last}: rerun with "
                        f"a lower --learning_rate (or gradient clipping in the task's "
                        f"optimizer) and a new --output, or pass --allow_nonfinite to train on")


class Evaluation:
  """The metrics of a split on the run state, prefixed ('val_', 'test_'); {} without the split.

  plan: the run's Plan (its evaluate program); split: a Source or None.
  """

  def __init__(self, plan, split, prefix: str):
    self.plan, self.split, self.prefix = plan, split, prefix

  def __call__(self, state: RunState) -> dict:
    if self.split is None:
      return {}
    return self.plan.evaluate(state.arrays, self.split, self.prefix)


class Decisions:
  """The run state after a validation result: best so far, early stop, plateau decay.

  rate: repro.train.optim.schedule()'s learning rate of the run (for the logs); mesh: where
  the train state lives (a decayed plateau rate is placed there).
  """

  def __init__(self, settings: control_lib.Settings, rate, mesh, log: Callable):
    self.settings, self.rate, self.mesh, self.log = settings, rate, mesh, log

  def __call__(self, state: RunState, results: dict | None
               ) -> tuple[RunState, dict | None, bool]:
    """(a new state, the evaluation record for the logs, whether the monitor improved)."""
    if results is None:
      return state, None, False
    control = control_lib.observe(state.control, self.settings, state.step, results)
    arrays = state.arrays
    if control.lr != state.control.lr:  # the plateau schedule decays from the next step on
      arrays = _with_learning_rate(arrays, control.lr, self.mesh)
      self.log(f"step {state.step}: no improvement of {self.settings.monitor} in "
               f"{self.settings.plateau_patience} evaluations; learning rate -> "
               f"{control.lr:.3g}")
    if control.stopped_early:
      self.log(f"early stop at step {state.step}: no improvement of {self.settings.monitor} in "
               f"{self.settings.patience} evaluations; best {control.best:.4f} at step "
               f"{control.best_step}")
    lr = optim.learning_rate(self.rate, state.step, control.lr)
    record = {"step": state.step, **results, "lr": lr}
    return (state.replace(control=control, arrays=arrays), record,
            control_lib.improved(state.control, control))


def _with_learning_rate(train, lr: float, mesh):
  """A new train state whose plateau learning rate is `lr`; `train` is left as it was."""
  pure = nnx.to_pure_dict(train)
  tree = pure
  for key in optim.PLATEAU_PATH[:-1]:
    tree = tree[key]
  tree[optim.PLATEAU_PATH[-1]] = parallel.replicate(np.float32(lr), mesh)
  new = jax.tree.map(lambda leaf: leaf, train)  # new containers, the same arrays
  nnx.replace_by_pure_dict(new, pure)
  return new


class Logs:
  """metrics.jsonl (per-step loss and metrics, evaluations) and trace.jsonl.

  On resume both are cut back to the resumed step, so that a resumed run's
  files equal an uninterrupted run's line for line.
  """

  def __init__(self, output: Path, step: int, initial_params=None):
    """initial_params: at step 0, the fingerprint of the initial model (core.fingerprint)."""
    # A fresh start keeps nothing: a run killed before its first checkpoint left a
    # step-0 line (and perhaps more) that this start writes again (measured by
    # tools/fault_sweep.py: a kill at the first unlink doubled trace.jsonl's first line).
    kept = step if step > 0 else -1
    self.metrics = metrics_lib.MetricsLog(output / metrics_lib.FILENAME, kept)
    self.trace = metrics_lib.MetricsLog(output / metrics_lib.TRACE_FILENAME, kept)
    if step == 0:  # the initial parameters: where seeds 0 and 1 already differ
      self.trace.append([{"step": 0, "params": hex32(initial_params)}])

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
    with metrics_lib.writing(output / "tensorboard"):  # it makes the directory
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
