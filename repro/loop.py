"""The training loop: chunks of steps, and components acting at chunk boundaries.

    while step < target and not stopping:
      stop_at = min(step + chunk_steps, target, *(c.next_boundary(step) for c in components))
      state, trace = chunk(state, step, stop_at - step)       # one compiled lax.scan
      for c in components: c.at_boundary(ctx)                  # checkpoint, evaluate, log, ...

A component is a small named unit (repro.components) that says which step it
needs a boundary at and acts there; the order of the list is the order in
which they act. The numerics never see them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from repro import control as control_lib
from repro import parallel


@dataclasses.dataclass
class Context:
  """What the components of a run share; the loop advances it chunk by chunk.

  Attributes:
    step: global steps done.
    target: the step the run trains to (early stopping lowers it).
    state: the train state on the device(s).
    control: the decisions taken on evaluations (checkpointed with the cursor).
    first: the first step of the chunk just run.
    trace: that chunk's per-step trace on the host: 'loss', 'batch', 'params'
      and 'metrics', each cut to the steps that ran.
    metrics: what this boundary observed ('loss', then 'val_*', 'test_*').
    records: evaluation records for the metrics log at this boundary.
    save: a component asks for a checkpoint at this boundary.
    stop: why the run stops before its target (a signal), or None.
    saved_step, manifest: the last checkpoint written and its manifest.
  """

  step: int
  target: int
  state: Any
  control: control_lib.ControlState
  first: int = 0
  trace: dict = dataclasses.field(default_factory=dict)
  metrics: dict = dataclasses.field(default_factory=dict)
  records: list = dataclasses.field(default_factory=list)
  save: bool = False
  stop: str | None = None
  saved_step: int | None = None
  manifest: dict | None = None

  def advance(self, state, trace, stop_at: int) -> None:
    """Takes the chunk's results: one host sync for the whole trace."""
    length = stop_at - self.step
    host = parallel.to_host_tree(trace)
    self.trace = {k: (v[:length] if k != "metrics" else {m: x[:length] for m, x in v.items()})
                  for k, v in host.items()}
    self.first, self.step, self.state = self.step, stop_at, state
    self.metrics = {"loss": float(self.trace["loss"][-1])}
    self.records, self.save = [], False

  @property
  def finished(self) -> bool:
    """The run reached its target, or early stopping ended it."""
    return self.step >= self.target or self.control.stopped_early

  @property
  def losses(self) -> list[float]:
    return [float(x) for x in self.trace["loss"]]


class Component:
  """A unit that acts at chunk boundaries. Override what it needs."""

  def next_boundary(self, step: int) -> float:
    """The next step after `step` at which this component must act (inf: none)."""
    del step
    return math.inf

  def at_boundary(self, ctx: Context) -> None:
    """Acts once the chunk ending at ctx.step has run."""

  def close(self) -> None:
    """Releases files and writers (also after an error)."""


def train(ctx: Context, chunk: Callable, components: list[Component], chunk_steps: int) -> None:
  """Runs chunks until ctx.target or a stop; every component acts at every boundary."""
  while ctx.step < ctx.target and ctx.stop is None:
    stop_at = int(min([ctx.step + chunk_steps, ctx.target] +
                      [c.next_boundary(ctx.step) for c in components]))
    state, trace = chunk(ctx.state, ctx.step, stop_at - ctx.step)
    ctx.advance(state, trace, stop_at)
    for component in components:
      component.at_boundary(ctx)
