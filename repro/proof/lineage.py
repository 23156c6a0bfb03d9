"""A model's lineage, checked: is each ancestor still on disk, and does it hold what it held?

A warm-started run (--init_from) records in every manifest the chain of what
its model came from, nearest first (repro.train.warmstart), and an export records
the run it was made from and that run's chain. check() reads each ancestor
that still exists and compares the digest of its weights with the recorded
one: 'intact', 'changed' (other weights, or damaged), or 'missing' (deleted,
or a checkpoint step rotated away by --max_to_keep: it cannot be checked).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from repro.checkpoints import digest
from repro.checkpoints import stored as stored_lib
from repro.errors import ReproError

INTACT, CHANGED, MISSING = "intact", "changed", "missing"


@dataclasses.dataclass(frozen=True)
class Row:
  entry: dict  # the recorded ancestor (repro.checkpoints.stored.ancestor)
  status: str
  why: str = ""


@dataclasses.dataclass(frozen=True)
class Report:
  of: stored_lib.Stored
  rows: list[Row]

  @property
  def exit_code(self) -> int:
    """0 when no ancestor changed (missing ones cannot be checked), else 1."""
    return 1 if any(row.status == CHANGED for row in self.rows) else 0


def check(path: str | Path, step: int | str | None = None) -> Report:
  """The lineage of `path` (a run, a step directory or an export), each ancestor checked."""
  stored = stored_lib.find(path, step)
  return Report(of=stored, rows=[_check_one(entry) for entry in stored.lineage])


def _check_one(entry: dict) -> Row:
  where = Path(entry["path"])
  if not where.exists():
    return Row(entry, MISSING, "not on disk")
  try:
    found = digest.tree_digest(stored_lib.weights(stored_lib.find(where)))
  except ReproError as err:
    return Row(entry, CHANGED, str(err).splitlines()[0])
  if found != entry["weights_digest"]:
    return Row(entry, CHANGED, f"its weights digest is now {found[:12]}")
  return Row(entry, INTACT)


def report(result: Report) -> str:
  """The lines bin/verify --lineage prints."""
  of, rows = result.of, result.rows
  at = f" (step {of.step})" if of.step is not None else ""
  if not rows:
    return f"{of.path}{at} has no ancestors: it was not started from another model (--init_from)"
  lines = [f"lineage of {of.path}{at}: {len(rows)} ancestor{'s' if len(rows) > 1 else ''}, "
           f"nearest first"]
  for i, row in enumerate(rows, 1):
    entry = row.entry
    step = f"step {entry['step']}, " if entry.get("step") is not None else ""
    task = f"task {entry['task']}, " if entry.get("task") else ""
    why = f" ({row.why})" if row.why else ""
    lines.append(f"  {i}. {entry['kind']} {entry['path']} ({step}{task}weights "
                 f"{entry['weights_digest'][:12]}): {row.status}{why}")
  counts = {s: sum(row.status == s for row in rows) for s in (INTACT, CHANGED, MISSING)}
  lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
  return "\n".join(lines)
