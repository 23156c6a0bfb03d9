"""Everything one invocation of a run is built from, before anything is written.

make(config, task, output, data, mesh) builds the task's model and optimizer,
traces its loss and metrics once (one line for a task that does not fit its
data), and gathers what the phases of the loop need: the schedule, the key
streams, the identity, the environment, the evaluator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from repro.train import control as control_lib
from repro.train import core
from repro.machine import environment
from repro.data import feed as feed_lib
from repro.train import identity as identity_lib
from repro.machine import parallel
from repro.train import rng
from repro.data import shuffle
from repro.data import splits as splits_lib
from repro.train import state as state_lib
from repro import task as task_lib
from repro.train import warmstart
from repro.config import Config
from repro.errors import ReproError
from repro.metrics import VAL
from repro.train.runstate import RunState
from repro.train.schedule import Schedule


class Evaluator:
  """The task's metrics over a split, as process 0 computes them, prefixed.

  Process 0 evaluates on its first device, batches fed from the host
  (repro.data.feed.evaluate): one single-device program on every topology and data
  path, so the same bits; the other processes receive its results.
  """

  def __init__(self, graphdef, task: task_lib.Task, names: list[str]):
    self.batch, self.task, self.names = core.make_evaluate_batch(graphdef, task), task, names

  def __call__(self, train_state, split, prefix: str) -> dict[str, float]:
    values = np.zeros(len(self.names), np.float32)
    if parallel.is_primary():
      means = feed_lib.evaluate(self.batch, parallel.on_one_device(train_state), split,
                                core.EVAL_BATCH)
      values = np.array([means[k] for k in self.names], np.float32)
    values = parallel.from_primary(values)
    summary = self.task.summarize({k: float(v) for k, v in zip(self.names, values)})
    return {prefix + k: float(v) for k, v in summary.items()}


@dataclasses.dataclass(frozen=True)
class Plan:
  """The built, checked parts of a run (nothing written yet)."""

  config: Config
  task: task_lib.Task
  output: Path
  data: splits_lib.Prepared
  mesh: Any
  built: state_lib.Built
  keys: dict  # the key streams, on the run's device(s)
  shuffle_key: jax.Array
  settings: control_lib.Settings
  schedule: Schedule
  identity: dict
  env: dict
  evaluate: Evaluator
  warm: warmstart.WarmStart | None  # the --init_from source and what it gave
  entry: dict  # the shapes of one step's trace entry (core.trace_step)

  def lineage(self) -> list[dict]:
    """The ancestors of this run's model, nearest first (none without --init_from)."""
    return self.warm.lineage() if self.warm else []

  def fresh(self) -> RunState:
    """The RunState of step 0: the initialised model and optimizer."""
    return RunState(step=0, arrays=self.built.state,
                    control=control_lib.ControlState.from_json(None, self.settings))


def data_path(config: Config, data: splits_lib.Prepared) -> str:
  """'device' or 'host': config.data_path, or by the budget when it is 'auto'."""
  if config.data_path != "auto":
    return config.data_path
  return "host" if data.train.nbytes > config.data_budget_mb * 2**20 else "device"


def make(config: Config, task: task_lib.Task, output: Path, data: splits_lib.Prepared, mesh,
         hooks=()) -> Plan:
  """Builds and checks the run's parts; ReproError (one line) for a task that does not fit."""
  config = config.replace(data_path=data_path(config, data))  # recorded as resolved
  spe = shuffle.steps_per_epoch(len(data.train), config.batch_size)
  schedule = Schedule.of(config, spe, data.validation is not None, hooks)
  keys = rng.streams(config.seed)
  warm = warmstart.WarmStart.of(config.init_from, task) if config.init_from else None
  built = state_lib.build(task, config, keys, schedule.total, mesh, warm)
  eval_names, reported = state_lib.check_task(task, built, data.train.features(),
                                              config.batch_size)
  rewritten, entry = task_lib.guarded(
      "a training step (the loss's gradient and the update, traced)", task,
      lambda: core.trace_step(built.graphdef, task, built.state, keys, data.train.features(),
                              config.batch_size))
  monitored = config.monitor.removeprefix(VAL)
  if data.validation is not None and monitored not in reported:
    raise ReproError(f"--monitor={config.monitor} is not a metric of task "
                     f"{task_lib.task_name(task)}: pass one of " +
                     ", ".join(f"--monitor=val_{m}" for m in reported))
  return Plan(
      config=config, task=task, output=output, data=data, mesh=mesh, built=built,
      keys=parallel.replicate(keys, mesh), shuffle_key=keys["shuffle"],
      settings=control_lib.Settings.of(config, task.higher_is_better), schedule=schedule,
      identity=identity_lib.of(config, task, data.fingerprints, built.module_streams,
                               warm.identity() if warm else None, rewritten), warm=warm,
      env=environment.describe(devices_used=mesh.size if mesh is not None else 1),
      evaluate=Evaluator(built.graphdef, task, eval_names), entry=entry)
