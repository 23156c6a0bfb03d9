"""Compare two runs or two checkpoint steps bit for bit, and find where they diverge.

compare(a, b) restores the 'state' of both (every leaf of the parameters and
the optimizer state), reads their cursors and manifests, and, for run
directories, their per-step traces (repro.metrics.TRACE_FILENAME). It reports
whether they are bitwise identical and, if not, which leaves differ by how
much, which config and environment fields differ, and the first step at which
the traces diverge and in what: the data (batch indices), the loss, or the
parameters; step 0 is the initialisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NoReturn

import numpy as np
import orbax.checkpoint as ocp

from repro.checkpoints import store as checkpoint
from repro.checkpoints import digest
from repro.checkpoints import failures
from repro import metrics
from repro.errors import CheckpointReadError, ReproError, one_line, os_cause

_ENV_FIELDS = ("versions", "platform")


@dataclasses.dataclass(frozen=True)
class LeafDiff:
  name: str
  differing: int  # elements whose bits differ
  size: int
  max_abs: float
  max_rel: float


@dataclasses.dataclass(frozen=True)
class Divergence:
  step: int
  what: str  # 'init', 'data', 'loss' or 'params': the first that differs at `step`
  fields: tuple[str, ...]  # every trace field that differs at `step`


@dataclasses.dataclass(frozen=True)
class Comparison:
  a: str
  b: str
  leaves: int
  bytes: int
  differing: list[LeafDiff]
  structure: list[str]  # leaves present in one state only, or of another shape/dtype
  cursor: list[str]
  metrics: list[str]
  config: list[str]
  environment: list[str]
  divergence: Divergence | None
  trace_steps: int  # steps both traces cover

  @property
  def identical(self) -> bool:
    return not (self.differing or self.structure or self.cursor or self.metrics)


def _locate(path: str | Path) -> tuple[Path | None, Path]:
  """(run directory or None, step directory) for a run or a step path."""
  path = Path(path).expanduser().absolute()
  if not path.is_dir():
    raise ReproError(f"{path} is not a directory: pass a run directory or a checkpoint step")
  if (path / "state").is_dir():
    return (path.parent if path.name.isdigit() else None), path
  # Orbax renames <step>.orbax-checkpoint-tmp* to <step> only once complete,
  # so the digit-named directories are the finalized steps.
  steps = [int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
  if not steps:
    raise ReproError(f"{path} holds no finalized checkpoint: pass a run directory or a "
                     f"checkpoint step directory (<run>/<step>)")
  return path, path / str(max(steps))


def manifest_of(path: str | Path) -> dict:
  """The manifest of a run's latest checkpoint, or of a checkpoint step."""
  return _read_item(_locate(path)[1], "manifest")


def _read_item(step_dir: Path, item: str) -> dict:
  try:
    return ocp.JsonCheckpointHandler().restore(step_dir / item)
  except Exception as err:  # classified by what it is; anything else is a bug and propagates
    _unreadable(step_dir / item, err)


def _restore_state(step_dir: Path) -> dict:
  try:
    return checkpoint.restore_state_item(step_dir / "state")
  except Exception as err:
    _unreadable(step_dir / "state", err)


def _unreadable(path: Path, err: Exception) -> NoReturn:
  """An I/O error is exit 74 naming the cause; a missing or damaged item is bad input."""
  kind = failures.kind(err)
  if kind == failures.IO:
    raise CheckpointReadError(f"cannot read {path}: {os_cause(err)}: fix the disk or file "
                              f"system and rerun") from None
  if kind == failures.DAMAGE:
    raise ReproError(f"cannot read {path} ({type(err).__name__}: {one_line(err)[:160]}): is "
                     f"it a finalized repro checkpoint?") from None
  raise err


def _leaf_diff(name: str, x: np.ndarray, y: np.ndarray) -> LeafDiff | None:
  """How two same-shaped leaves differ: elements whose bits differ, max abs and rel diff."""
  if x.tobytes() == y.tobytes():
    return None
  flat_x, flat_y = x.reshape(-1), y.reshape(-1)
  bits = f"u{x.dtype.itemsize}" if x.dtype.itemsize in (1, 2, 4, 8) else None
  differing = (int(np.sum(flat_x.view(bits) != flat_y.view(bits))) if bits
               else int(np.sum(flat_x != flat_y)))
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    return LeafDiff(name, differing, x.size, float("nan"), float("nan"))
  xf, yf = flat_x.astype(np.float64), flat_y.astype(np.float64)
  abs_diff = np.abs(xf - yf)
  scale = np.maximum(np.abs(xf), np.abs(yf))
  rel = np.divide(abs_diff, scale, out=np.zeros_like(abs_diff), where=scale > 0)
  return LeafDiff(name, differing, x.size, float(np.nanmax(abs_diff)), float(np.nanmax(rel)))


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flat(value, name + "."))
    else:
      out[name] = value
  return out


def _dict_diff(a: dict, b: dict, common_only: bool = False) -> list[str]:
  """'key: a vs b' for each differing field; common_only skips fields one side lacks
  (a field added by a later format is no difference in what was trained)."""
  fa, fb = _flat(a), _flat(b)
  keys = set(fa) & set(fb) if common_only else set(fa) | set(fb)
  return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(keys) if fa.get(k) != fb.get(k)]


def _first_divergence(run_a: Path | None, run_b: Path | None,
                      last_step: int) -> tuple[Divergence | None, int]:
  if run_a is None or run_b is None:
    return None, 0
  ta = {r["step"]: r for r in metrics.read(run_a / metrics.TRACE_FILENAME)}
  tb = {r["step"]: r for r in metrics.read(run_b / metrics.TRACE_FILENAME)}
  common = sorted(s for s in set(ta) & set(tb) if s <= last_step)
  for step in common:
    fields = tuple(k for k in ("batch", "loss", "params") if ta[step].get(k) != tb[step].get(k))
    if fields:
      names = {"batch": "data", "loss": "loss", "params": "params"}
      return Divergence(step, "init" if step == 0 else names[fields[0]], fields), len(common)
  return None, len(common)


def compare(a: str | Path, b: str | Path) -> Comparison:
  """Compares two run directories (their latest checkpoints) or two checkpoint steps."""
  run_a, step_a = _locate(a)
  run_b, step_b = _locate(b)
  state_a, state_b = _restore_state(step_a), _restore_state(step_b)
  leaves_a, leaves_b = digest.named_leaves(state_a), digest.named_leaves(state_b)
  structure, differing, nbytes = [], [], 0
  for name in sorted(set(leaves_a) | set(leaves_b)):
    x, y = leaves_a.get(name), leaves_b.get(name)
    if x is None or y is None:
      structure.append(f"{name}: only in {'A' if y is None else 'B'}")
    elif x.shape != y.shape or x.dtype != y.dtype:
      structure.append(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
    else:
      nbytes += x.nbytes
      diff = _leaf_diff(name, x, y)
      if diff:
        differing.append(diff)
  cursor_a, cursor_b = _read_item(step_a, "cursor"), _read_item(step_b, "cursor")
  manifest_a, manifest_b = _read_item(step_a, "manifest"), _read_item(step_b, "manifest")
  divergence, covered = _first_divergence(
      run_a, run_b, min(cursor_a.get("step", 0), cursor_b.get("step", 0)))
  config_diff = [d for d in _dict_diff(manifest_a.get("config", {}), manifest_b.get("config", {}))
                 if not d.startswith(("output:", "progress:"))]
  env_a, env_b = manifest_a.get("environment", {}), manifest_b.get("environment", {})
  env_diff = _dict_diff({k: env_a.get(k) for k in _ENV_FIELDS},
                        {k: env_b.get(k) for k in _ENV_FIELDS})
  return Comparison(
      a=str(step_a), b=str(step_b), leaves=len(leaves_a), bytes=nbytes, differing=differing,
      structure=structure, cursor=_dict_diff(cursor_a, cursor_b, common_only=True),
      metrics=_dict_diff(manifest_a.get("metrics", {}), manifest_b.get("metrics", {}),
                         common_only=True),
      config=config_diff, environment=env_diff, divergence=divergence, trace_steps=covered)


def report(c: Comparison) -> str:
  """The human-readable report bin/verify prints."""
  if c.identical:
    lines = [f"bitwise identical ({c.leaves} leaves, {c.bytes:,} bytes)",
             f"  A: {c.a}", f"  B: {c.b}"]
    if c.trace_steps:
      lines.append(f"  traces agree on all {c.trace_steps} common steps")
    for title, items in (("config", c.config), ("environment", c.environment)):
      if items:
        lines.append(f"  ({title} fields differ: " + "; ".join(items) + ")")
    return "\n".join(lines)
  what = [f"{len(c.differing)} of {c.leaves} leaves differ"] if c.differing else []
  what += [phrase for phrase, items in (("structure differs", c.structure),
                                        ("cursor differs", c.cursor),
                                        ("metrics differ", c.metrics)) if items]
  lines = [f"DIFFERENT: {'; '.join(what)}", f"  A: {c.a}", f"  B: {c.b}"]
  if c.divergence:
    d = c.divergence
    if d.step == 0:
      lines.append("first divergence: step 0 (init): the initial parameters differ")
    else:
      agree = [n for k, n in (("batch", "data"), ("loss", "loss"), ("params", "params"))
               if k not in d.fields]
      lines.append(f"first divergence: step {d.step}: {d.what} diverged first"
                   + (f" ({' and '.join(agree)} agree)" if agree else ""))
  elif c.trace_steps:
    lines.append(f"traces agree on all {c.trace_steps} common steps")
  if c.differing:
    width = max(len(d.name) for d in c.differing)
    lines.append(f"  {'leaf':<{width}}  {'differing':>17}  {'max abs diff':>12}  "
                 f"{'max rel diff':>12}")
    for d in c.differing:
      lines.append(f"  {d.name:<{width}}  {f'{d.differing}/{d.size}':>17}  "
                   f"{d.max_abs:>12.3e}  {d.max_rel:>12.3e}")
  for title, items in (("structure", c.structure), ("cursor", c.cursor),
                       ("metrics", c.metrics), ("config", c.config),
                       ("environment", c.environment)):
    for item in items:
      lines.append(f"  {title}: {item}")
  return "\n".join(lines)
