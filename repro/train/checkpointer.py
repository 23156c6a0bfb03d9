"""The run's checkpoints: the store, the events log, and what was saved last.

The Checkpointer owns the checkpoint store (repro.checkpoints.store) and the
events log (events.jsonl, written by process 0 alone): it starts a run from
the newest intact checkpoint (repro.train.resume), saves the RunState with its
cursor and manifest (repro.train.manifest), records the run's events, and
gives the path and digest of what it saved last. Used as a context manager,
it closes the store on the way out, except after a failed write, whose writer
threads may wait for what will never come: those are left to die with the
process (abandon()).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from flax import nnx

from repro import metrics as metrics_lib
from repro.checkpoints import store as checkpoint
from repro.errors import CheckpointWriteError, PeerLost
from repro.metrics import VAL, now
from repro.train import manifest as manifest_lib
from repro.train import resume
from repro.train.runstate import RunState, StepInfo


class Checkpointer:
  """Saves and restores the RunState of the run that `plan` describes.

  Attributes:
    store: the checkpoint store of plan.output.
    events: events.jsonl on process 0 (`primary`), else None.
    saved_step, manifest: the newest checkpoint's step and manifest (the one the run
      resumed from until it saves), or None.
    resumed_from: the step this invocation resumed from, or None for a fresh start.
  """

  def __init__(self, plan, primary: bool, store: checkpoint.Store | None = None):
    config = plan.config
    self.plan = plan
    self.store = store if store is not None else checkpoint.Store(
        plan.output, config.max_to_keep,
        best_monitor=config.monitor if plan.data.validation is not None else None,
        maximize=plan.settings.maximize)
    self.events = (metrics_lib.MetricsLog(plan.output / metrics_lib.EVENTS_FILENAME, None)
                   if primary else None)
    self.saved_step = self.manifest = self.resumed_from = None
    self.abandoned = False

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, kind, err, traceback) -> None:
    if isinstance(err, (CheckpointWriteError, PeerLost)):
      self.abandon()
    self.close()

  def start(self, log: Callable[[str], None]) -> RunState:
    """The RunState to train from: the newest intact compatible checkpoint, or step 0."""
    # The history says which of its checkpoints are gone (bin/plot marks the others), even
    # when the resume then fails: the store has removed them already.
    for step in self.store.discarded:
      log(f"discarded the half-written checkpoint of step {step} (its write was cut short); "
          f"the finalized steps are kept")
      self.record("discarded", step, why="half-written")
    try:
      state, manifest = resume.start(self.store, self.plan, log)
    finally:
      for step in self.store.set_aside_steps:
        self.record("discarded", step, why="corrupt: set aside as corrupt-<step>")
    if manifest is not None:
      self.saved_step = self.resumed_from = state.step
      self.manifest = manifest
    return state

  def record(self, event: str, step: int, **fields) -> None:
    """An entry of events.jsonl (process 0)."""
    if self.events is not None:
      self.events.append([{"event": event, "step": step, **fields, "time": now()}])

  def save(self, info: StepInfo) -> None:
    pure = nnx.to_pure_dict(info.state.arrays)
    cursor, manifest = manifest_lib.describe(self.plan, info.state, info.metrics, pure)
    validation = {k: v for k, v in info.metrics.items() if k.startswith(VAL)}
    self.store.save(info.step, pure, cursor, manifest,
                    metrics={"step": info.step, **validation} if validation else None)
    self.record("checkpoint", info.step)
    self.saved_step, self.manifest = info.step, manifest

  def path(self, step: int) -> Path:
    return self.store.step_path(step)

  @property
  def saved_path(self) -> str:
    """The directory of the newest checkpoint, or '' if none."""
    return str(self.path(self.saved_step)) if self.saved_step is not None else ""

  @property
  def digest(self) -> str:
    """The state digest of the newest checkpoint (repro.checkpoints.digest), or ''."""
    return (self.manifest or {}).get("state_digest", "")

  def finish(self) -> None:
    """Waits until every save is durable."""
    self.store.wait()

  def abandon(self) -> None:
    """Leaves the store's writer threads to die with the process (after a failed write or a
    lost peer, whose barriers would wait for ever)."""
    self.abandoned = True

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
    if not self.abandoned:
      self.store.close()
