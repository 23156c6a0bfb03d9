"""The optimizer: the task's optax transformation (Adam by default) with repro's schedule.

constant, cosine and warmup_cosine are functions of Adam's own step count,
which lives in the optimizer state, so they resume with it. plateau keeps the
current learning rate in the optimizer state too (optax.inject_hyperparams),
where repro.train.control lowers it between chunks; the decisions that lower it are
checkpointed with the cursor.
"""

from __future__ import annotations

from typing import Callable

import optax

from repro.config import Config

PLATEAU_PATH = ("optimizer", "opt_state", "hyperparams", "learning_rate")


def schedule(config: Config, total_steps: int) -> float | optax.Schedule | None:
  """config.schedule over a run of total_steps steps: a float for 'constant' (the
  reference bits), an optax schedule of the step, or None for 'plateau' (its rate
  lives in the optimizer state)."""
  lr = config.learning_rate
  if config.schedule == "constant":
    return lr
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=total_steps)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=config.warmup_steps,
        decay_steps=max(total_steps, config.warmup_steps + 1))
  return None


def make_tx(config: Config, total_steps: int,
            factory: Callable[..., optax.GradientTransformation] = optax.adam
            ) -> optax.GradientTransformation:
  """factory(learning_rate) with config.schedule over a run of total_steps steps.

  factory is the task's optimizer (Task.optimizer); for 'plateau' it is
  wrapped in optax.inject_hyperparams, so it must take `learning_rate` by name.
  """
  rate = schedule(config, total_steps)
  if rate is None:  # plateau
    return optax.inject_hyperparams(factory)(learning_rate=config.learning_rate)
  return factory(rate)


def learning_rate(rate: float | optax.Schedule | None, step: int, plateau_lr: float | None
                  ) -> float:
  """The learning rate in force at `step` under `rate`, schedule()'s value (for logs and
  plots); plateau_lr is the plateau schedule's current rate."""
  if rate is None:
    return float(plateau_lr)
  return float(rate(step)) if callable(rate) else rate
