"""When everything happens: one table of periods, a function of the config alone.

    event        period             ends a chunk   due at a step when
    chunk        chunk_steps        yes            chunk_steps after the chunk's start
    epoch        steps_per_epoch    with validation   a multiple (an epoch end)
    evaluation   eval_every         with validation   a multiple
    checkpoint   checkpoint_every   yes            a multiple, the end, or an improvement
    hook <i>     each hook's every  yes            a multiple (every hook's at_boundary runs
                                                   at every boundary: `every` adds boundaries)
    end          the target         yes            the target (or an early stop)
    stop         a signal           at the boundary it is seen after; saves there if it did not

Early stopping and the plateau decay act on evaluations (repro.train.control),
so they come at the evaluation steps. A boundary is where the host acts: the
nearest step at which an event is due. Every event is fixed by the step
alone, never by where a run was interrupted, so an interrupted run observes
exactly what an uninterrupted one does; the chunk programs take their length
from `chunk_steps` here, and chunk lengths never change the bits.
"""

from __future__ import annotations

import dataclasses
import math

from repro.train.runstate import RunState


def next_multiple(step: int, every: int) -> float:
  """The first multiple of `every` after `step` (inf for every=0)."""
  return (step // every + 1) * every if every else math.inf


@dataclasses.dataclass(frozen=True)
class Due:
  """What is due at a boundary's step, read from the table."""

  evaluation: bool  # validation: an epoch end or a multiple of eval_every
  checkpoint: bool  # by the checkpoint interval (improvements and the end add more)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The table of a run's events.

  Attributes:
    target: the step the run trains to (min(total, max_steps)).
    total: epochs * steps_per_epoch, what the learning-rate schedule spans.
    steps_per_epoch, chunk_steps, checkpoint_every, eval_every: the config's.
    validates: whether the run has a validation split.
    hook_every: the `every` of each user hook that asks for boundaries.
  """

  target: int
  total: int
  steps_per_epoch: int
  chunk_steps: int
  checkpoint_every: int
  eval_every: int = 0
  validates: bool = False
  hook_every: tuple[int, ...] = ()

  @classmethod
  def of(cls, config, steps_per_epoch: int, validates: bool, hooks=()) -> "Schedule":
    total = config.epochs * steps_per_epoch
    return cls(target=min(total, config.max_steps) if config.max_steps else total, total=total,
               steps_per_epoch=steps_per_epoch, chunk_steps=config.chunk_steps,
               checkpoint_every=config.checkpoint_every, eval_every=config.eval_every,
               validates=validates, hook_every=tuple(h.every for h in hooks if h.every))

  def periods(self) -> dict[str, int]:
    """{event: period in steps} of the events due at multiples (0 or absent: never)."""
    table = {"checkpoint": self.checkpoint_every}
    if self.validates:
      table.update(epoch=self.steps_per_epoch, evaluation=self.eval_every)
    table.update({f"hook {i}": every for i, every in enumerate(self.hook_every)})
    return table

  def next_boundary(self, step: int) -> int:
    """The step after `step` at which the next chunk ends: the nearest event."""
    found = [step + self.chunk_steps, self.target]
    found += [next_multiple(step, every) for every in self.periods().values()]
    return int(min(found))

  def due(self, step: int) -> Due:
    """What the table makes due at `step`."""
    at = {event for event, every in self.periods().items() if every and step % every == 0}
    return Due(evaluation=bool(at & {"epoch", "evaluation"}), checkpoint="checkpoint" in at)

  def saves(self, step: int, improved: bool, finished: bool) -> bool:
    """A checkpoint is saved at `step`: by the interval, on an improvement of the monitor, or
    at the end (the target or an early stop)."""
    return self.due(step).checkpoint or improved or finished

  def saves_at_stop(self, saved: bool) -> bool:
    """A stop (SIGTERM, SIGINT) seen after a boundary saves there, unless the boundary saved."""
    return not saved

  def finished(self, state: RunState) -> bool:
    """The run reached its target, or early stopping ended it."""
    return state.step >= self.target or state.control.stopped_early

  def epoch(self, step: int) -> tuple[int, int]:
    """(epoch, step within it) of a global step."""
    return divmod(step, self.steps_per_epoch)
