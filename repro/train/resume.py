"""Where a run starts: the newest intact, compatible checkpoint, or step 0.

The manifest is read and checked before any array is touched: a checkpoint of
another identity, or whose state has another structure than the model built
now, is refused with its differing fields. A step that is damaged (an item
missing, a format Orbax cannot parse, arrays that do not match the checksums
in its manifest) is renamed to corrupt-<step>, reported, and the next older
one is tried. An I/O error while reading is not damage: it stops the run with
one line naming the file (exit 74), and nothing is renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from repro.checkpoints import store as checkpoint
from repro.train import control as control_lib
from repro.checkpoints import digest
from repro.checkpoints import failures
from repro.train import identity as identity_lib
from repro.train import state as state_lib
from repro.errors import CheckpointReadError, os_cause
from repro.train.runstate import RunState

def start(store: checkpoint.Store, plan, log: Callable[[str], None]
          ) -> tuple[RunState, dict | None]:
  """(the RunState to train from, its checkpoint's manifest or None for a fresh start)."""
  for step in sorted(store.all_steps(), reverse=True):
    problem, restored = _try(store, plan.output, step, plan.built.template, plan.identity)
    if problem is None:
      identity_lib.check_environment(step, restored.manifest, plan.env, plan.config.strict, log,
                                     topology_invariant=bool(plan.config.micro_shards))
      return RunState(
          step=int(restored.cursor["step"]), arrays=state_lib.restore(plan.built, restored.state),
          control=control_lib.ControlState.from_json(restored.cursor.get("control"),
                                                     plan.settings)), restored.manifest
    aside = store.set_aside(step)
    log(f"WARNING: checkpoint {plan.output / str(step)} is corrupt ({problem}); moved it to "
        f"{aside.name} and falling back to the previous checkpoint")
  return plan.fresh(), None


def _read(what: str, path: Path, read: Callable):
  """read(), or (None, the damage) for a damaged item; an I/O error is one line, exit 74.

  Any other exception is not a checkpoint's fault and propagates.
  """
  try:
    return read(), None
  except Exception as err:  # classified by what it is, below; the rest is re-raised
    kind = failures.kind(err)
    if kind == failures.IO:
      raise _io_error(path, err) from None
    if kind is None:
      raise
    return None, f"its {what} is unreadable ({type(err).__name__}: {str(err)[:120]})"


def _io_error(path: Path, err: Exception) -> CheckpointReadError:
  return CheckpointReadError(f"cannot read checkpoint {path}: {os_cause(err)}; nothing was "
                             f"changed: fix the disk or file system and rerun the same command")


def _try(store: checkpoint.Store, output: Path, step: int, template: dict, identity: dict):
  """(None, restored) for an intact compatible step, or (what is wrong, None).

  An incompatible step raises ReproError: it is not damaged, it is another run.
  """
  path = store.step_path(step)
  items, problem = _read("manifest, cursor or state metadata", path, lambda: (
      store.read_json(step, "manifest"), store.read_json(step, "cursor"),
      store.state_metadata(step)))
  if problem:
    return problem, None
  manifest, cursor, saved = items
  identity_lib.check_compatible(output, step, manifest.get("identity", {}), identity)
  identity_lib.check_structure(output, step, saved, template)
  restored, problem = _read("state", path / "state", lambda: store.restore(step, template))
  if problem:
    return problem, None
  expected = manifest.get("leaf_digests", {})
  found = digest.leaf_digests(restored.state)
  bad = sorted(set(expected) ^ set(found) | {k for k in found if expected.get(k) != found[k]})
  if not expected:
    return "its manifest carries no checksums", None
  if bad:
    return f"checksum mismatch in {', '.join(bad[:3])}", None
  if cursor.get("step") != step:
    return f"its cursor says step {cursor.get('step')}", None
  return None, restored
