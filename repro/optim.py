"""The optimizer: the task's optax transformation (Adam by default) with repro's schedule.

constant, cosine and warmup_cosine are functions of Adam's own step count,
which lives in the optimizer state, so they resume with it. plateau keeps the
current learning rate in the optimizer state too (optax.inject_hyperparams),
where repro.control lowers it between chunks; the decisions that lower it are
checkpointed with the cursor.
"""

from __future__ import annotations

from typing import Callable

import optax

from repro.config import Config

PLATEAU_PATH = ("optimizer", "opt_state", "hyperparams", "learning_rate")


def make_tx(config: Config, total_steps: int,
            factory: Callable[..., optax.GradientTransformation] = optax.adam
            ) -> optax.GradientTransformation:
  """factory(learning_rate) with config.schedule over a run of total_steps steps.

  factory is the task's optimizer (Task.optimizer); for 'plateau' it is
  wrapped in optax.inject_hyperparams, so it must take `learning_rate` by name.
  """
  lr = config.learning_rate
  if config.schedule == "constant":
    return factory(lr)  # a plain float: the reference bits
  if config.schedule == "cosine":
    return factory(optax.cosine_decay_schedule(lr, decay_steps=total_steps))
  if config.schedule == "warmup_cosine":
    return factory(optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=config.warmup_steps,
        decay_steps=max(total_steps, config.warmup_steps + 1)))
  return optax.inject_hyperparams(factory)(learning_rate=lr)  # plateau


def learning_rate(config: Config, total_steps: int, step: int, plateau_lr: float | None) -> float:
  """The learning rate in force at `step` (for logs and plots)."""
  if config.schedule == "plateau":
    return float(plateau_lr)
  if config.schedule == "constant":
    return config.learning_rate
  if config.schedule == "cosine":
    return float(optax.cosine_decay_schedule(config.learning_rate, total_steps)(step))
  return float(optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps,
      max(total_steps, config.warmup_steps + 1))(step))
