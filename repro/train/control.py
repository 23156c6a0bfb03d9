"""Decisions taken on validation results: best so far, early stopping, plateau decay.

A pure state machine over plain JSON (saved in every checkpoint's cursor), so
a resumed run replays exactly the decisions of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from repro.metrics import VAL


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the decisions depend on: the monitored metric, its direction, patiences."""

  monitor: str = "val_loss"
  maximize: bool = False  # True for metrics where larger is better (accuracy)
  patience: int = 0
  plateau: bool = False
  plateau_patience: int = 2
  plateau_factor: float = 0.5
  learning_rate: float = 1e-3

  @classmethod
  def of(cls, config, higher_is_better: tuple[str, ...]) -> "Settings":
    """From a repro.Config and the task's higher_is_better metric names."""
    return cls(monitor=config.monitor,
               maximize=config.monitor.removeprefix(VAL) in higher_is_better,
               patience=config.patience, plateau=config.schedule == "plateau",
               plateau_patience=config.plateau_patience, plateau_factor=config.plateau_factor,
               learning_rate=config.learning_rate)


@dataclasses.dataclass(frozen=True)
class ControlState:
  best: float | None = None  # best value of the monitored metric so far
  best_step: int | None = None
  evals_since_best: int = 0
  plateau_evals: int = 0  # evaluations without improvement since the last decay
  lr: float | None = None  # the plateau schedule's current learning rate
  stopped_early: bool = False

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, values: dict[str, Any] | None, settings: Settings) -> "ControlState":
    if not values:
      return cls(lr=settings.learning_rate if settings.plateau else None)
    return cls(**values)


def observe(state: ControlState, settings: Settings, step: int,
            results: dict[str, float]) -> ControlState:
  """The state after the evaluation `results` at `step`."""
  value = results[settings.monitor]
  better = state.best is None or (value > state.best if settings.maximize else value < state.best)
  if better:
    best, best_step, since, plateau = value, step, 0, 0
  else:
    best, best_step = state.best, state.best_step
    since, plateau = state.evals_since_best + 1, state.plateau_evals + 1
  lr = state.lr
  if settings.plateau and plateau >= settings.plateau_patience:
    lr, plateau = lr * settings.plateau_factor, 0
  stop = bool(settings.patience) and since >= settings.patience
  return ControlState(best=best, best_step=best_step, evals_since_best=since,
                      plateau_evals=plateau, lr=lr, stopped_early=stop)


def improved(before: ControlState, after: ControlState) -> bool:
  return after.best_step is not None and after.best_step != before.best_step
