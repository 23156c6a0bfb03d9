"""What a path holds, for whatever reads a trained model back: a checkpoint step, an export, an
Orbax tree.

find(path, step) names it without reading an array: a run directory (its newest finalized
step, 'best', or an integer step), a step directory <run>/<step>, an export (repro.export:
<dir>/export.json beside the Orbax tree <dir>/model) or an Orbax checkpoint that repro did not
write (a model's pure dict, or a dict with a 'model' entry). weights(stored) reads the model's
arrays onto this process's first device, checked against the recorded checksums, and
ancestor(stored, ...) is its entry in a descendant's lineage (repro.proof.lineage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from repro.checkpoints import store as checkpoint
from repro.checkpoints import digest
from repro.checkpoints import failures
from repro.errors import CheckpointReadError, ReproError, os_cause, squeezed

EXPORT_JSON, EXPORT_TREE = "export.json", "model"
RUN, EXPORT, ORBAX = "run", "export", "orbax"
_ORBAX_TREE = "_METADATA"  # of a saved tree (a CheckpointManager step has items instead)


@dataclasses.dataclass(frozen=True)
class Stored:
  """A trained model on disk, not yet read.

  Attributes:
    kind: 'run' (a checkpoint step of a repro run), 'export' or 'orbax'.
    path: the step directory, the export directory or the Orbax directory.
    step: the global step it was trained to (None for an Orbax tree).
    meta: the step's manifest, the export's JSON, or {} for an Orbax tree.
  """

  kind: str
  path: Path
  step: int | None
  meta: dict

  @property
  def lineage(self) -> list[dict]:
    """Its own ancestors, nearest first (what it was started or exported from)."""
    return list(self.meta.get("lineage", []))

  @property
  def config(self) -> dict:
    return self.meta.get("config", {})


def finalized(run: Path) -> list[int]:
  # Orbax renames <step>.orbax-checkpoint-tmp* to <step> only once complete.
  return sorted(int(p.name) for p in run.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def run_steps(run: str | Path) -> tuple[Path, list[int]]:
  """(the run directory, absolute; its finalized steps); one line if it holds none."""
  run = Path(run).expanduser().absolute()
  if (run / "state").is_dir() and run.name.isdigit():
    raise ReproError(f"{run} is checkpoint step {run.name} of the run {run.parent}: pass the run "
                     f"directory {run.parent}")
  steps = finalized(run) if run.is_dir() else []
  if not steps:
    raise ReproError(f"{run} holds no finalized checkpoint: pass a run directory")
  return run, steps


def read_json(step_dir: Path, item: str) -> dict:
  """A JSON item (manifest, cursor) of a checkpoint step; one line if it cannot be read."""
  try:
    return ocp.JsonCheckpointHandler().restore(epath.Path(step_dir / item))
  except (OSError, ValueError, KeyError) as err:
    raise _unreadable(step_dir / item, err, "pass a repro run directory or one of its step "
                                            "directories") from None


def state_metadata(step_dir: Path) -> dict[str, Any]:
  """The tree of a step's 'state' array metadata (shapes, dtypes); no array is read."""
  with _reading(step_dir / "state", "the checkpoint is damaged"):
    return ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / "state")).tree


def restore_state(step_dir: Path, template: dict) -> dict[str, Any]:
  """A step's 'state' item in the shapes, dtypes and shardings of `template`."""
  with _reading(step_dir / "state", "the checkpoint is damaged"):
    return ocp.StandardCheckpointer().restore(step_dir / "state", template)


@contextlib.contextmanager
def _reading(path: Path, fix: str):
  """Meanwhile, Orbax's and tensorstore's errors are one line (_unreadable); an error of
  neither the file system nor the file is a bug and propagates."""
  failures.quiet_closed_loops()
  try:
    yield
  except Exception as err:  # classified by what it is (repro.checkpoints.failures)
    if failures.kind(err) is None and not isinstance(err, TypeError):
      raise
    raise _unreadable(path, err, fix) from None


def _unreadable(path: Path, err: Exception, fix: str) -> Exception:
  """What a failed read of `path` is: CheckpointReadError (exit 74) when the file system
  failed (repro.checkpoints.failures), else ReproError with `fix`."""
  if failures.kind(err) == failures.IO:
    failures.silence_abandoned_writers()  # the failed read's threads: no news
    return CheckpointReadError(f"cannot read {path}: {os_cause(err)}; nothing was changed: fix "
                               f"the disk or file system and rerun the same command")
  return ReproError(f"cannot read {path} ({type(err).__name__}: {squeezed(err, 120)}): {fix}")


def locate(path: str | Path, step: int | str | None = None) -> Path:
  """The step directory of `path` (a run or a step directory) at `step` (None: the newest;
  'best': the kept best validation result; an integer: that step)."""
  path = Path(path).expanduser().absolute()
  if not path.is_dir():
    raise ReproError(f"{path} is not a directory: pass a run directory or a checkpoint step")
  step = None if step == "latest" else step
  if (path / "state").is_dir() and step is None:
    return path
  run = path.parent if (path / "state").is_dir() else path
  steps = finalized(run)
  if not steps:
    raise ReproError(f"{run} holds no finalized checkpoint: pass a run directory (or a step "
                     f"directory <run>/<step>) of a run that saved one")
  if step == "best":
    best = read_json(run / str(steps[-1]), "manifest").get("best", {}).get("step")
    if best is None:
      raise ReproError(f"{run} has no best step (it ran without validation): pass step=None "
                       f"or an integer")
    step = best
  if step is None:
    step = steps[-1]
  if not isinstance(step, int) or step not in steps:
    raise ReproError(f"{run} has no finalized checkpoint of step {step!r}: pass one of "
                     f"{', '.join(map(str, steps))}, 'best' or 'latest'")
  return run / str(step)


def find(path: str | Path, step: int | str | None = None) -> Stored:
  """The trained model that `path` (and `step`, for a run) names; ReproError if none."""
  where = Path(path).expanduser().absolute()
  if (where / EXPORT_JSON).is_file():
    _no_step(where, step, "an export")
    meta = _read_export_json(where)
    return Stored(EXPORT, where, meta.get("step"), meta)
  if (where / _ORBAX_TREE).is_file() and not (where / "state").is_dir():
    _no_step(where, step, "an Orbax checkpoint")
    return Stored(ORBAX, where, None, {})
  step_dir = locate(where, step)
  manifest = read_json(step_dir, "manifest")
  return Stored(RUN, step_dir, int(read_json(step_dir, "cursor")["step"]), manifest)


def _no_step(where: Path, step, what: str) -> None:
  if step is not None:
    raise ReproError(f"{where} is {what}, which holds one model: drop the step ({step!r})")


def _read_export_json(where: Path) -> dict:
  try:
    meta = json.loads((where / EXPORT_JSON).read_text())
  except (OSError, ValueError) as err:
    raise _unreadable(where / EXPORT_JSON, err, "the export is damaged; export it "
                                                "again") from None
  if not isinstance(meta, dict) or "task" not in meta:
    raise ReproError(f"{where / EXPORT_JSON} is not a repro export's description")
  return meta


def _tree_dir(stored: Stored) -> Path:
  return {RUN: stored.path / "state", EXPORT: stored.path / EXPORT_TREE,
          ORBAX: stored.path}[stored.kind]


def read_tree(stored: Stored) -> dict[str, Any]:
  """Its whole Orbax tree on this process's first device, every recorded checksum checked."""
  where = _tree_dir(stored)
  with _reading(where, "it is damaged or not an Orbax checkpoint"):
    tree = checkpoint.restore_state_item(where)
  if stored.kind != ORBAX:
    check_digests(stored.path, stored.meta.get("leaf_digests", {}), tree)
  return tree


def weights(stored: Stored) -> dict[str, Any]:
  """The model's weights as a pure dict: a step's state['model'], an export's tree, or an
  Orbax tree (its 'model' entry if it has one), less any random streams' state."""
  tree = read_tree(stored)
  if stored.kind == RUN or (stored.kind == ORBAX and isinstance(tree.get("model"), dict)):
    tree = tree["model"]
  return _without_streams(tree)


def _without_streams(tree):
  """The tree less its random streams' state (an nnx.RngStream's 'key' and 'count' pair):
  not weights, and reseeded by every run anyway. None where nothing else is left."""
  if not isinstance(tree, dict):
    return tree
  if set(tree) == {"key", "count"}:
    return None
  kept = {name: _without_streams(value) for name, value in tree.items()}
  return {name: value for name, value in kept.items() if value is not None} or None


def check_digests(where: Path, expected: dict[str, str], tree: dict[str, Any]) -> None:
  """Refuses a tree whose leaves are not exactly those `expected` (name -> sha256)."""
  found = digest.leaf_digests(tree)
  bad = sorted(set(expected) ^ set(found) | {k for k in found if expected.get(k) != found[k]})
  if not expected or bad:
    what = "carries no checksums" if not expected else f"fails its checksums ({', '.join(bad[:3])})"
    raise ReproError(f"checkpoint {where} {what}: it is damaged; load another step")


def config_digest(config: dict) -> str:
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def ancestor(stored: Stored, weights_digest: str) -> dict:
  """Its entry in the lineage of what is made from it (a fine-tune, an export)."""
  config = stored.config
  return {"kind": stored.kind, "path": str(stored.path), "step": stored.step,
          "weights_digest": weights_digest,
          "state_digest": stored.meta.get("state_digest") if stored.kind == RUN else None,
          "task": config.get("task"), "task_options": config.get("task_options"),
          "config_digest": config_digest(config) if config else None,
          "created": stored.meta.get("created")}
