"""The loop of one invocation: chunk after chunk, each boundary's phases in the order they act.

    while not stopped and not finished:
      run a chunk -> check it is finite -> evaluate if due -> decide (early
      stop, plateau) -> test at the end -> write the logs -> save if due ->
      the user's hooks -> stop on a signal (with a checkpoint)

Each phase takes what it needs as arguments and returns what it produced; the
order is the order of the code. The chunk program (repro.train.programs) is the only
part that computes; the rest acts on the host.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

from repro.train import components
from repro.train.checkpointer import Checkpointer
from repro.train.runstate import Chunk, Hook, RunState, StepInfo
from repro.train.schedule import Schedule


@dataclasses.dataclass(frozen=True)
class Ending:
  """How the loop ended: the final state, the last boundary, a stop's signal, the speed."""

  state: RunState
  last: StepInfo | None
  stop: str | None
  ms_step: float | None = None


@dataclasses.dataclass
class Trainer:
  """The phases of a run, and the loop that calls them.

  Attributes:
    program: chunk(train_state, first_step, num_steps) -> (train_state, trace).
    schedule: which steps are boundaries, and what is due at each.
    guard: the finite check.
    validate: RunState -> {'val_*': value}, called when the schedule makes an
      evaluation due (never without a validation split).
    decide: repro.train.components.Decisions.
    test: RunState -> {'test_*': value} ({} without a test split).
    reporters: the logs, TensorBoard, the progress bar and the timings.
    checkpoints: repro.train.checkpointer.Checkpointer.
    signals: the stop requests.
    hooks: the user's read-only hooks.
  """

  program: Callable
  schedule: Schedule
  guard: components.FiniteGuard
  validate: Callable
  decide: components.Decisions
  test: Callable
  reporters: components.Reporters
  checkpoints: Checkpointer
  signals: components.StopOnSignal
  hooks: Sequence[Hook] = ()

  def run(self, state: RunState) -> Ending:
    """Trains from `state` to the schedule's end, or to a stop with a checkpoint."""
    stop, last = self.signals.poll(), None
    while stop is None and not self.schedule.finished(state):
      last = self.boundary(state)
      state = last.state
      if not self.schedule.finished(state):
        stop = self.signals.poll()                                    # stop on a signal
        if stop is not None and self.schedule.saves_at_stop(last.checkpoint):
          self.save(last)
    return Ending(state=state, last=last, stop=stop)

  def boundary(self, state: RunState) -> StepInfo:
    """One chunk from state.step, then the phases of the boundary after it."""
    first, last = state.step, self.schedule.next_boundary(state.step)
    started = time.perf_counter()
    arrays, trace = self.program(state.arrays, first, last - first)  # run a chunk
    chunk = Chunk.of(first, last, trace, started)                     # its one host sync
    state = state.replace(step=last, arrays=arrays)
    self.guard.check(chunk, state)                                    # finite, or stop here
    due = self.schedule.due(last)
    state, evaluation, improved = self.decide(state, self.validate(state) if due.evaluation
                                              else None)              # evaluate, decide
    finished = self.schedule.finished(state)
    info = StepInfo(state=state, chunk=chunk, evaluation=evaluation,
                    test=self.test(state) if finished else {},       # test at the end
                    checkpoint=self.schedule.saves(last, improved, finished))
    self.reporters.write(info)                                        # write the logs
    if info.checkpoint:                                               # save if due
      self.save(info)
    for hook in self.hooks:                                           # the user's hooks
      hook.at_boundary(info)
    return info

  def save(self, info: StepInfo) -> None:
    self.reporters.sync()  # a checkpoint never refers to steps the logs lack
    self.checkpoints.save(info)
