"""The cursor and the manifest of a checkpoint: what the data order and a resume depend on.

cursor    the global step, its epoch, and what the data order depends on
manifest  the config, the identity (checked before any array is read on
          resume), the data, the environment, the metrics, the best result,
          the warm start and the lineage (repro.train.warmstart), and the per-leaf
          checksums of the state
"""

from __future__ import annotations

from repro.checkpoints import digest
from repro.data import shuffle
from repro.data import source as source_lib
from repro.metrics import now
from repro.train.runstate import RunState

FORMAT = 2  # 2: tasks (the data section describes any task's splits)


def describe(plan, state: RunState, metrics: dict, pure: dict) -> tuple[dict, dict]:
  """(cursor, manifest) of a checkpoint of `state`, whose train state's pure dict is `pure`."""
  config, schedule = plan.config, plan.schedule
  epoch, within = schedule.epoch(state.step)
  cursor = {"step": state.step, "epoch": epoch, "step_in_epoch": within,
            "steps_per_epoch": schedule.steps_per_epoch,
            "num_train_examples": len(plan.data.train), "batch_size": config.batch_size,
            "shuffle": shuffle.SCHEME, "control": state.control.to_json()}
  manifest = {
      "format": FORMAT, "created": now(), "config": config.to_dict(),
      "identity": plan.identity,
      "data": {**plan.data.info, "path": config.data_path,
               "changes_watched_by": source_lib.CHANGE_RULE},
      "environment": plan.env,
      "metrics": dict(metrics),
      "best": {"monitor": config.monitor, "step": state.control.best_step,
               "value": state.control.best},
      "init_from": plan.warm.record() if plan.warm else None, "lineage": plan.lineage(),
      "leaf_digests": digest.leaf_digests(pure), "state_digest": digest.tree_digest(pure)}
  return cursor, manifest
