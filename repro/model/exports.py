"""repro.export: a trained model's weights alone, in a plain Orbax tree, with where it came from.

    <out>/model        an Orbax StandardCheckpointer tree: the model's pure dict
                       (every Variable but the random streams' state), no optimizer
    <out>/export.json  the task spec and options, the source's config, step,
                       metrics and lineage, the dtype, and each leaf's checksum

Any Orbax user restores the tree without repro (ocp.StandardCheckpointer()
.restore(out / "model")); repro.load and --init_from read the whole export. The
export is written beside <out> and renamed into place when complete, so a
crash never leaves a half-written export at <out>.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from repro.checkpoints import digest
from repro.checkpoints import failures
from repro.checkpoints import stored as stored_lib
from repro.model import trained as trained_lib
from repro.train import warmstart
from repro.metrics import now
from repro.errors import OutputWriteError, ReproError, os_cause

DTYPES = ("float32", "bfloat16")
FORMAT = 1


def export(path: str | Path, out: str | Path, step: int | str | None = None,
           dtype: str = "float32") -> Path:
  """Writes the weights of `path` at `step` (see repro.load) to `out`; returns `out`.

  Floating-point weights are cast to `dtype`; the others are kept as they are.
  ReproError (one line) if `out` exists or cannot be written.
  """
  if dtype not in DTYPES:
    raise ReproError(f"unknown dtype {dtype!r}: pass --dtype=" + " or --dtype=".join(DTYPES))
  out = _check_out(Path(out).expanduser().absolute())
  source_dir = Path(path).expanduser().absolute()
  if (source_dir / "state").is_dir():  # a step: the run holds it
    source_dir = source_dir.parent
  if source_dir == out or source_dir in out.parents:
    raise ReproError(f"--out {out} is inside the exported run {source_dir}: pass a path "
                     f"outside it")
  restored = trained_lib.restore(path, step)
  model = nnx.merge(restored.built.graphdef, restored.state)["model"]
  weights = jax.tree.map(lambda leaf: _cast(leaf, dtype),
                         nnx.to_pure_dict(nnx.state(model, warmstart.WEIGHTS)))
  source = restored.stored
  meta = {
      "format": FORMAT, "created": now(), "dtype": dtype,
      "task": restored.config.task, "task_options": restored.config.task_options,
      "identity": restored.task.identity(), "config": restored.config.to_dict(),
      "step": source.step, "total_steps": trained_lib.total_steps(source),
      "metrics": dict(source.meta.get("metrics", {})),
      "lineage": [stored_lib.ancestor(source, digest.tree_digest(
          stored_lib.weights(source)))] + source.lineage,
      "weights_digest": digest.tree_digest(weights), "leaf_digests": digest.leaf_digests(weights)}
  _write(out, weights, meta)
  return out


def _cast(leaf, dtype: str) -> np.ndarray:
  value = jnp.asarray(leaf)
  if jnp.issubdtype(value.dtype, jnp.floating):
    value = value.astype(dtype)
  return np.asarray(value)


def _check_out(out: Path) -> Path:
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ReproError(f"--out {out} already exists: pass a new directory (an export is never "
                     f"overwritten)")
  parent = out.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
    raise ReproError(f"cannot write --out {out}: {parent} is not a writable directory")
  return out


def _write(out: Path, weights: dict, meta: dict) -> None:
  """Writes beside `out`, then renames: `out` holds a whole export or nothing.

  OutputWriteError (one line, exit 74) when the file system fails, Orbax's and
  tensorstore's errors included (repro.checkpoints.failures says which are).
  """
  partial = out.parent / f".{out.name}.partial-{os.getpid()}"
  failures.quiet_closed_loops()
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(partial / stored_lib.EXPORT_TREE, weights)
    checkpointer.wait_until_finished()
    (partial / stored_lib.EXPORT_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True)
                                                  + "\n")
    if out.exists():
      out.rmdir()  # empty (checked above)
    partial.rename(out)
  except Exception as err:  # classified by what it is; anything else is a bug and propagates
    if failures.kind(err) != failures.IO:
      raise
    failures.silence_abandoned_writers()
    _remove_settled(partial)
    raise OutputWriteError(f"cannot write the export to {out} ({os_cause(err)}): nothing was "
                           f"written there; free space, fix the file system or pass another "
                           f"--out") from None
  finally:
    shutil.rmtree(partial, ignore_errors=True)


def _remove_settled(partial: Path, quiet: float = 0.3, most: float = 3.0) -> None:
  """Removes `partial` until it stays gone for `quiet` seconds (at most `most`).

  After a failed write Orbax's writes are abandoned, not stopped: one may land in the
  removed tree (seen once in the suite, under load: an EIO at tensorstore's first rename,
  then a data file of the export's array store written again after the removal).
  """
  deadline = time.monotonic() + most
  while time.monotonic() < deadline:
    shutil.rmtree(partial, ignore_errors=True)
    time.sleep(quiet)
    if not partial.exists():
      return
