"""The components of a run: each acts at chunk boundaries (see repro.loop).

repro.run builds them in this order, which is the order they act in:
  StopOnSignal  a SIGTERM/SIGINT (in any process) stops the run at this boundary
  FiniteGuard   a NaN or infinite loss or state stops the run before anything
                of this chunk is logged or saved
  Validation    evaluates at epoch ends and every eval_every steps; early
                stopping, the plateau schedule, the best checkpoint
  FinalTest     evaluates the test split once the target step is reached
  Logs          metrics.jsonl and trace.jsonl
  TensorBoard   the same scalars for TensorBoard
  Checkpointer  saves every checkpoint_every steps, at the end, on a stop and
                at each improvement
  Progress      the progress bar
User components (repro.run's `components`) act after these.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from flax import nnx
from tqdm import tqdm

from repro import control as control_lib
from repro import metrics as metrics_lib
from repro import optim
from repro import parallel
from repro.errors import NonFiniteLoss
from repro.loop import Component, Context


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _next_multiple(step: int, every: int) -> float:
  return (step // every + 1) * every if every else math.inf


def hex32(value) -> str:
  return f"{int(value):08x}"


class StopOnSignal(Component):
  """Stops the run at the boundary after a SIGTERM or SIGINT to any of its processes.

  Every process must take the same branches, so a stop asked of any one is
  agreed on by all at each boundary (one tiny collective).
  """

  def __init__(self, requests):
    self.requests = requests

  def poll(self) -> str | None:
    if parallel.any_process(bool(self.requests.signal_name)):
      return self.requests.signal_name or "a stop in another process"
    return None

  def at_boundary(self, ctx: Context) -> None:
    ctx.stop = ctx.stop or self.poll()


class FiniteGuard(Component):
  """Stops the run at the first NaN or infinite loss, or a non-finite state.

  The losses are the trace's, already on the host once per chunk (no extra
  sync per step); the state is checked once per chunk (the last step's update
  may make it non-finite while its loss is still finite). It acts before the
  logs and the checkpointer, so no non-finite state is ever saved and no
  finite checkpoint is rotated away. With allow (--allow_nonfinite) it warns
  once and lets the run go on.
  """

  def __init__(self, all_finite: Callable, allow: bool, checkpoint_path: Callable,
               log: Callable):
    self.all_finite, self.allow, self.checkpoint_path = all_finite, allow, checkpoint_path
    self.log, self.warned = log, False

  def at_boundary(self, ctx: Context) -> None:
    losses = np.asarray(ctx.trace["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
      what = f"the loss became {losses[bad[0]]} at step {ctx.first + 1 + int(bad[0])}"
    elif not self.all_finite(ctx.state):
      what = f"the model or optimizer state became non-finite by step {ctx.step}"
    else:
      return
    if self.allow:
      if not self.warned:
        self.log(f"warning: {what}; training on (--allow_nonfinite)")
        self.warned = True
      return
    last = (f"the last finite checkpoint is {self.checkpoint_path(ctx.saved_step)}"
            if ctx.saved_step is not None else "no checkpoint was saved")
    raise NonFiniteLoss(f"{what}: stopped, nothing non-finite was saved and {last}: rerun with "
                        f"a lower --learning_rate (or gradient clipping in the task's "
                        f"optimizer) and a new --output, or pass --allow_nonfinite to train on")


class Validation(Component):
  """Evaluates the validation split at points fixed by the step alone.

  Those points are the epoch ends and the multiples of eval_every, never
  interruptions or checkpoints, so that an interrupted run observes exactly
  what an uninterrupted one does. The results steer early stopping, the
  plateau schedule and the kept best checkpoint (repro.control).
  """

  def __init__(self, evaluate: Callable, split, config, settings: control_lib.Settings,
               steps_per_epoch: int, total_steps: int, put: Callable, log: Callable):
    self.evaluate, self.split, self.config = evaluate, split, config
    self.settings, self.spe, self.total = settings, steps_per_epoch, total_steps
    self.put, self.log = put, log

  def next_boundary(self, step: int) -> float:
    return min(_next_multiple(step, self.spe), _next_multiple(step, self.config.eval_every))

  def at_boundary(self, ctx: Context) -> None:
    if ctx.step % self.spe and not (self.config.eval_every and
                                    ctx.step % self.config.eval_every == 0):
      return
    results = self.evaluate(ctx.state, self.split, "val_")
    before = ctx.control
    ctx.control = control_lib.observe(before, self.settings, ctx.step, results)
    if ctx.control.lr != before.lr:  # the plateau schedule decays from the next step on
      ctx.state = _with_learning_rate(ctx.state, ctx.control.lr, self.put)
      self.log(f"step {ctx.step}: no improvement of {self.settings.monitor} in "
               f"{self.settings.plateau_patience} evaluations; learning rate -> "
               f"{ctx.control.lr:.3g}")
    lr = optim.learning_rate(self.config, self.total, ctx.step, ctx.control.lr)
    ctx.records.append({"step": ctx.step, **results, "lr": lr})
    ctx.metrics.update(results)
    ctx.save = ctx.save or control_lib.improved(before, ctx.control)
    if ctx.control.stopped_early:
      self.log(f"early stop at step {ctx.step}: no improvement of {self.settings.monitor} in "
               f"{self.settings.patience} evaluations; best {ctx.control.best:.4f} at step "
               f"{ctx.control.best_step}")
      ctx.target = ctx.step


def _with_learning_rate(state, lr: float, put: Callable):
  pure = nnx.to_pure_dict(state)
  tree = pure
  for key in optim.PLATEAU_PATH[:-1]:
    tree = tree[key]
  tree[optim.PLATEAU_PATH[-1]] = put(np.float32(lr))
  nnx.replace_by_pure_dict(state, pure)
  return state


class FinalTest(Component):
  """Evaluates the test split (if the task has one) when the run reaches its target."""

  def __init__(self, evaluate: Callable, split):
    self.evaluate, self.split = evaluate, split

  def at_boundary(self, ctx: Context) -> None:
    if ctx.step == ctx.target and self.split is not None:
      ctx.metrics.update(self.evaluate(ctx.state, self.split, "test_"))


class Logs(Component):
  """metrics.jsonl (per-step loss and metrics, evaluations) and trace.jsonl.

  On resume both are cut back to the resumed step, so that a resumed run's
  files equal an uninterrupted run's line for line.
  """

  def __init__(self, output: Path, step: int, initial_params: Callable | None):
    self.metrics = metrics_lib.MetricsLog(output / metrics_lib.FILENAME, step)
    self.trace = metrics_lib.MetricsLog(output / metrics_lib.TRACE_FILENAME, step)
    if step == 0:  # the initial parameters: where seeds 0 and 1 already differ
      self.trace.append([{"step": 0, "params": hex32(initial_params())}])

  def at_boundary(self, ctx: Context) -> None:
    t, first = ctx.trace, ctx.first
    extra = [{f"train_{k}": float(v[i]) for k, v in t["metrics"].items()}
             for i in range(len(t["loss"]))]
    self.metrics.append({"step": first + 1 + i, "loss": x, **extra[i]}
                        for i, x in enumerate(ctx.losses))
    self.trace.append({"step": first + 1 + i, "loss": x, "batch": hex32(t["batch"][i]),
                       "params": hex32(t["params"][i])} for i, x in enumerate(ctx.losses))
    self.metrics.append(ctx.records)

  def sync(self) -> None:
    self.metrics.sync()
    self.trace.sync()

  def close(self) -> None:
    self.metrics.close()
    self.trace.close()


class TensorBoard(Component):
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

  def at_boundary(self, ctx: Context) -> None:
    for i, loss in enumerate(ctx.losses):
      self.writer.add_scalar("train/loss", loss, ctx.first + 1 + i)
    for record in ctx.records:
      for name, value in record.items():
        if name != "step":
          self.writer.add_scalar("train/lr" if name == "lr" else f"val/{name[4:]}", value,
                                 record["step"])

  def sync(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class Checkpointer(Component):
  """Saves a checkpoint every `every` steps, at the target, on a stop and when asked.

  `describe(ctx, pure)` gives the (cursor, manifest) of the state; the logs are
  made durable first, so that a checkpoint never refers to steps they lack.
  """

  def __init__(self, store, every: int, describe: Callable, syncs: list[Callable],
               events: metrics_lib.MetricsLog | None):
    self.store, self.every, self.describe = store, every, describe
    self.syncs, self.events = syncs, events

  def next_boundary(self, step: int) -> float:
    return _next_multiple(step, self.every)

  def at_boundary(self, ctx: Context) -> None:
    if ctx.step % self.every and ctx.step != ctx.target and not ctx.stop and not ctx.save:
      return
    pure = nnx.to_pure_dict(ctx.state)
    cursor, manifest = self.describe(ctx, pure)
    for sync in self.syncs:
      sync()
    validation = {k: v for k, v in ctx.metrics.items() if k.startswith("val_")}
    self.store.save(ctx.step, pure, cursor, manifest,
                    metrics={"step": ctx.step, **validation} if validation else None)
    if self.events is not None:
      self.events.append([{"event": "checkpoint", "step": ctx.step, "time": now()}])
    ctx.saved_step, ctx.manifest = ctx.step, manifest


class Progress(Component):
  """A tqdm bar on stderr: step, epoch and loss (and where a resumed run started)."""

  def __init__(self, target: int, step: int, steps_per_epoch: int, label: str, enabled: bool):
    self.spe = steps_per_epoch
    self.bar = tqdm(total=target, initial=step, unit="step", disable=not enabled,
                    desc=label + (f" (resumed at {step})" if step else ""), file=sys.stderr,
                    dynamic_ncols=True)

  def at_boundary(self, ctx: Context) -> None:
    self.bar.set_postfix(loss=f"{ctx.metrics['loss']:.4f}", epoch=ctx.step // self.spe,
                         refresh=False)
    self.bar.update(ctx.step - ctx.first)

  def close(self) -> None:
    self.bar.close()
