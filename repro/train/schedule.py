"""Which steps are chunk boundaries, and why: a function of the config alone.

A boundary is where the host acts: the end of a chunk of chunk_steps, an
epoch end or a multiple of eval_every (when there is a validation split), a
multiple of checkpoint_every, a hook's multiple, and the target. Evaluations
happen at steps fixed by the step alone, never by where a run was
interrupted, so an interrupted run observes exactly what an uninterrupted one
does; chunk lengths never change the bits.
"""

from __future__ import annotations

import dataclasses
import math

from repro.train.runstate import RunState


def next_multiple(step: int, every: int) -> float:
  """The first multiple of `every` after `step` (inf for every=0)."""
  return (step // every + 1) * every if every else math.inf


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The boundaries of a run.

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

  def next_boundary(self, step: int) -> int:
    """The step after `step` at which the next chunk ends."""
    found = [step + self.chunk_steps, self.target, next_multiple(step, self.checkpoint_every)]
    found += [next_multiple(step, every) for every in self.hook_every]
    if self.validates:
      found += [next_multiple(step, self.steps_per_epoch), next_multiple(step, self.eval_every)]
    return int(min(found))

  def evaluates(self, step: int) -> bool:
    """Validation is due at `step`: an epoch end, or a multiple of eval_every."""
    return self.validates and (step % self.steps_per_epoch == 0 or
                               bool(self.eval_every) and step % self.eval_every == 0)

  def saves(self, step: int) -> bool:
    """A checkpoint is due at `step` by the interval (improvements and the end add more)."""
    return step % self.checkpoint_every == 0

  def finished(self, state: RunState) -> bool:
    """The run reached its target, or early stopping ended it."""
    return state.step >= self.target or state.control.stopped_early

  def epoch(self, step: int) -> tuple[int, int]:
    """(epoch, step within it) of a global step."""
    return divmod(step, self.steps_per_epoch)
