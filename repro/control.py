"""Decisions taken on validation results: best so far, early stopping, plateau decay.

A pure state machine over plain JSON (saved in every checkpoint's cursor), so
a resumed run replays exactly the decisions of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from repro.config import Config


@dataclasses.dataclass(frozen=True)
class ControlState:
  best: float | None = None  # best value of config.monitor so far
  best_step: int | None = None
  evals_since_best: int = 0
  plateau_evals: int = 0  # evaluations without improvement since the last decay
  lr: float | None = None  # the plateau schedule's current learning rate
  stopped_early: bool = False

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, values: dict[str, Any] | None, config: Config) -> "ControlState":
    if not values:
      return cls(lr=config.learning_rate if config.schedule == "plateau" else None)
    return cls(**values)


def observe(state: ControlState, config: Config, step: int,
            results: dict[str, float]) -> ControlState:
  """The state after the evaluation `results` at `step`."""
  value = results[config.monitor]
  better = state.best is None or (
      value < state.best if config.monitor == "val_loss" else value > state.best)
  if better:
    best, best_step, since, plateau = value, step, 0, 0
  else:
    best, best_step = state.best, state.best_step
    since, plateau = state.evals_since_best + 1, state.plateau_evals + 1
  lr = state.lr
  if config.schedule == "plateau" and plateau >= config.plateau_patience:
    lr, plateau = lr * config.plateau_factor, 0
  stop = bool(config.patience) and since >= config.patience
  return ControlState(best=best, best_step=best_step, evals_since_best=since,
                      plateau_evals=plateau, lr=lr, stopped_early=stop)


def improved(before: ControlState, after: ControlState) -> bool:
  return after.best_step is not None and after.best_step != before.best_step
