"""Orbax CheckpointManager steps holding items 'state', 'cursor' and 'manifest'.

state    - the pure dict of {'model', 'optimizer'} (StandardSave)
cursor   - JSON: the global step and what the data order depends on
manifest - JSON: config, environment, data fingerprint, metrics, state digest
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath  # Orbax's path type; its handlers want one

from repro.machine import parallel
from repro.checkpoints import failures
from repro.errors import CheckpointWriteError, os_cause

ITEMS = ("state", "cursor", "manifest")


@dataclasses.dataclass(frozen=True)
class Restored:
  state: dict[str, Any]
  cursor: dict[str, Any]
  manifest: dict[str, Any]


def restore_state_item(state_dir: Path) -> dict[str, Any]:
  """The 'state' item of a step on this process's first device, whatever devices wrote it.

  A checkpoint of a multi-device run records its mesh; without a template,
  Orbax refuses it on another topology ("Topology mismatch"). The template
  here comes from the item's own metadata, with this process's device.
  """
  metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)).tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  template = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
  return ocp.StandardCheckpointer().restore(state_dir, template)


class Store:
  """A run directory of finalized checkpoint steps."""

  def __init__(self, directory: Path, max_to_keep: int, best_monitor: str | None = None,
               maximize: bool = False):
    """Keeps the latest max_to_keep steps, and with best_monitor also the best one.

    best_monitor is a validation metric (lower is better unless maximize);
    every save must then carry that metric.
    """
    self.directory = Path(directory)
    failures.quiet_closed_loops()
    if best_monitor:
      # Orbax sorts by this key and keeps the last: among equal values the
      # earliest step must come last, as repro.train.control counts only strict
      # improvements (sorted descending when lower is better, else ascending).
      lower_is_better = not maximize
      def rank(metrics):
        return (metrics[best_monitor], metrics["step"] if lower_is_better else -metrics["step"])
      policy = ocp.checkpoint_managers.AnyPreservationPolicy([
          ocp.checkpoint_managers.LatestN(n=max_to_keep),
          ocp.checkpoint_managers.BestN(get_metric_fn=rank, reverse=lower_is_better, n=1,
                                        keep_checkpoints_without_metrics=False)])
      retention = dict(preservation_policy=policy)
    else:
      retention = dict(max_to_keep=max_to_keep)
    self._writing: int | None = None  # the step whose save may still be in flight
    self.set_aside_steps: list[int] = []  # damaged steps renamed corrupt-<step> (set_aside)
    # Half-written steps (<step>.orbax-checkpoint-tmp*, left by a crash or a
    # SIGKILL mid-write) are never listed as steps; the manager removes them.
    self.discarded = sorted({int(p.name.split(".")[0]) for p in self.directory.glob(
        "*.orbax-checkpoint-tmp*")}) if parallel.is_primary() else []
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, **retention),
    )

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def set_aside(self, step: int) -> Path:
    """Renames a bad step to corrupt-<step>[-n] (kept for inspection, never used)."""
    n, target = 0, self.directory / f"corrupt-{step}"
    while target.exists():
      n += 1
      target = self.directory / f"corrupt-{step}-{n}"
    if parallel.is_primary():  # every process decides alike; one renames
      try:
        self.step_path(step).rename(target)
      except OSError as err:  # measured by the resume sweep: a traceback and exit 1
        raise CheckpointWriteError(
            f"cannot set the damaged checkpoint {self.step_path(step)} aside as {target.name}: "
            f"{os_cause(err)}; nothing was changed: fix the cause and rerun the same "
            f"command") from None
    parallel.barrier(f"repro-set-aside-{step}")
    self.set_aside_steps.append(step)
    self.manager.reload()
    return target

  def step_path(self, step: int) -> Path:
    return self.directory / str(step)

  def save(self, step: int, state: dict, cursor: dict, manifest: dict,
           metrics: dict | None = None) -> None:
    """Starts saving `step`; the arrays are copied before it returns.

    Raises CheckpointWriteError if this save, or the previous one's writing
    in the background, failed (a full disk, an I/O error).
    """
    self.wait()  # the previous save's background errors belong to that step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          cursor=ocp.args.JsonSave(cursor),
          manifest=ocp.args.JsonSave(manifest)), metrics=metrics)
    except Exception as err:  # Orbax passes OSError and tensorstore's errors through
      if failures.kind(err) != failures.IO:
        raise  # not the file system: a bug, not something to fix by freeing space
      raise self._write_error(step, err) from None
    self._writing = step

  def restore(self, step: int, template: dict) -> Restored:
    """Restores `step` into the shapes and dtypes of `template` (abstract pure dict)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template),
        cursor=ocp.args.JsonRestore(),
        manifest=ocp.args.JsonRestore()))
    return Restored(state=restored.state, cursor=restored.cursor, manifest=restored.manifest)

  def state_metadata(self, step: int) -> dict[str, Any]:
    """The tree of the 'state' item's array metadata (shapes, dtypes), no array read."""
    return ocp.StandardCheckpointHandler().metadata(epath.Path(self.step_path(step) / "state")).tree

  def read_json(self, step: int, item: str) -> dict[str, Any]:
    """The JSON item 'cursor' or 'manifest' of `step`, without touching the arrays."""
    restored = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    return restored[item]

  def wait(self) -> None:
    """Blocks until the save in flight is on disk; CheckpointWriteError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as err:  # the background writer's failure, raised here
      if failures.kind(err) != failures.IO:
        raise
      raise self._write_error(self._writing, err) from None
    # Orbax logs some background failures instead of raising them. (In a run of
    # several processes only process 0 renames, so one process alone must not
    # decide this: the others would wait for it at the next barrier.)
    if (self._writing is not None and jax.process_count() == 1
        and not self.step_path(self._writing).is_dir()):
      raise self._write_error(self._writing, RuntimeError("it was never finalized"))
    self._writing = None

  def _write_error(self, step: int | None, err: Exception) -> CheckpointWriteError:
    """The failure of the save of `step`.

    Its half-written directory (<step>.orbax-checkpoint-tmp*) is never
    finalized, so it never counts; the next start removes it (Orbax's writer
    threads may still be creating it now).
    """
    failures.silence_abandoned_writers()
    kept = [s for s in self.all_steps() if self.step_path(s).is_dir()]
    resume = (f"resume from step {kept[-1]}" if kept else "start afresh")
    return CheckpointWriteError(
        f"cannot write checkpoint step {step} to {self.directory}: {os_cause(err)}; the "
        f"half-written step is discarded and the finalized checkpoints "
        f"({', '.join(map(str, kept)) or 'none'}) are intact: fix the cause and "
        f"rerun the same command to {resume}")

  def close(self) -> None:
    self.manager.close()
