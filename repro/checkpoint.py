"""Orbax CheckpointManager steps holding items 'state', 'cursor' and 'manifest'.

state    - the pure dict of {'model', 'optimizer'} (StandardSave)
cursor   - JSON: the global step and what the data order depends on
manifest - JSON: config, environment, data fingerprint, metrics, state digest
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

ITEMS = ("state", "cursor", "manifest")


@dataclasses.dataclass(frozen=True)
class Restored:
  state: dict[str, Any]
  cursor: dict[str, Any]
  manifest: dict[str, Any]


class Store:
  """A run directory of finalized checkpoint steps."""

  def __init__(self, directory: Path, max_to_keep: int):
    self.directory = Path(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        # Half-written steps (<step>.orbax-checkpoint-tmp*, left by a crash or a
        # SIGKILL mid-write) are never listed as steps and are removed here.
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
    )

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def set_aside(self, step: int) -> Path:
    """Renames a bad step to corrupt-<step>[-n] (kept for inspection, never used)."""
    n, target = 0, self.directory / f"corrupt-{step}"
    while target.exists():
      n += 1
      target = self.directory / f"corrupt-{step}-{n}"
    self.step_path(step).rename(target)
    self.manager.reload()
    return target

  def step_path(self, step: int) -> Path:
    return self.directory / str(step)

  def save(self, step: int, state: dict, cursor: dict, manifest: dict) -> None:
    """Starts saving `step`; the arrays are copied before it returns."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        cursor=ocp.args.JsonSave(cursor),
        manifest=ocp.args.JsonSave(manifest)))

  def restore(self, step: int, template: dict) -> Restored:
    """Restores `step` into the shapes and dtypes of `template` (abstract pure dict)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template),
        cursor=ocp.args.JsonRestore(),
        manifest=ocp.args.JsonRestore()))
    return Restored(state=restored.state, cursor=restored.cursor, manifest=restored.manifest)

  def read_json(self, step: int, item: str) -> dict[str, Any]:
    """The JSON item 'cursor' or 'manifest' of `step`, without touching the arrays."""
    restored = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    return restored[item]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
