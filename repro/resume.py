"""Finding the checkpoint to resume from: the newest intact, compatible step.

The manifest is read and checked before any array is touched: a checkpoint of
another identity, or whose state has another structure than the model built
now, is refused with its differing fields. A step whose items cannot be read,
or whose arrays do not match the checksums in its manifest, is renamed to
corrupt-<step>, reported, and the next older one is tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from repro import checkpoint
from repro import digest
from repro import identity as identity_lib


def latest(store: checkpoint.Store, output: Path, template: dict, identity: dict, env: dict,
           strict: bool, topology_invariant: bool, log: Callable[[str], None]):
  """The newest intact checkpoint as (restored, step), or None; bad steps are set aside."""
  for step in sorted(store.all_steps(), reverse=True):
    problem, restored = _try(store, output, step, template, identity)
    if problem is None:
      identity_lib.check_environment(step, restored.manifest, env, strict, log,
                                     topology_invariant=topology_invariant)
      return restored, step
    aside = store.set_aside(step)
    log(f"WARNING: checkpoint {output / str(step)} is corrupt ({problem}); moved it to "
        f"{aside.name} and falling back to the previous checkpoint")
  return None


def _try(store: checkpoint.Store, output: Path, step: int, template: dict, identity: dict):
  """(None, restored) for an intact compatible step, or (what is wrong, None).

  An incompatible step raises ReproError: it is not damaged, it is another run.
  """
  try:
    manifest = store.read_json(step, "manifest")
    cursor = store.read_json(step, "cursor")
    saved = store.state_metadata(step)
  except Exception as err:  # Orbax raises many types for a broken item
    return f"its manifest, cursor or state metadata is unreadable ({type(err).__name__})", None
  identity_lib.check_compatible(output, step, manifest.get("identity", {}), identity)
  identity_lib.check_structure(output, step, saved, template)
  try:
    restored = store.restore(step, template)
  except Exception as err:
    return f"its state is unreadable ({type(err).__name__}: {str(err)[:120]})", None
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
