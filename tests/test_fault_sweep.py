"""A seeded sample of tools/fault_sweep.py: a short run killed, or one of its file-system calls
failed with ENOSPC or EIO, at points of a save and of a resume that sets a damaged checkpoint
aside and saves again; each rerun ends bitwise equal
to the uninterrupted run, nothing finalized lost, and a failed call is one line and exit 74.

The whole sweep (every point of every kind) is `python tools/fault_sweep.py`; its result
is in docs/faults.md. These points: the first and the last call of a kind, and seeded ones
between, chosen from this machine's own count of the calls.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fault_sweep  # noqa: E402

pytestmark = pytest.mark.skipif(not shutil.which("strace"), reason="apt-get install strace")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  work = tmp_path_factory.mktemp("sweep")
  counts = fault_sweep.count(work / "reference")
  rng = random.Random(0)
  mid = lambda kind: rng.randint(2, max(2, counts[kind] - 1))
  point = fault_sweep.Point
  chosen = [point("fsync", 1, "kill"), point("rename", counts["rename"], "kill"),
            point("mkdir", mid("mkdir"), "kill"), point("write", mid("write"), "kill"),
            point("rename", mid("rename"), "ENOSPC"), point("fsync", mid("fsync"), "EIO"),
            # Where the full sweep found faults (fixed): a kill before the first checkpoint
            # doubled trace.jsonl's first line; the run's lock failing was a traceback.
            point("unlink", 1, "kill"), point("pwrite64", 1, "ENOSPC")]
  done = [fault_sweep.try_point(p, work / "reference", work) for p in chosen]
  # A resume that reads a damaged newest checkpoint, sets it aside, restores the one
  # before and saves again, faulted at its first rename (setting the step aside), a
  # seeded write and a seeded fsync.
  start = fault_sweep.damaged_start(work)
  counts = fault_sweep.count(work / "counted-resume", start)
  assert fault_sweep.same_run(work / "reference", work / "counted-resume") == ""
  assert (work / "counted-resume" / f"corrupt-{fault_sweep.RESUME_AT}").is_dir()
  chosen = [point("rename", 1, "kill"), point("write", mid("write"), "kill"),
            point("fsync", mid("fsync"), "EIO")]
  return done + [fault_sweep.try_point(p, work / "reference", work, start) for p in chosen]


@pytest.mark.parametrize("index", range(11))
def test_a_fault_at_a_call_of_a_save_or_a_resume_resumes_bitwise_and_fails_in_one_line(
    sweep, index):
  point = sweep[index]
  assert not fault_sweep.bad_outcome(point), (point, point.detail)
  assert "rerun bitwise" in point.outcome
  if point.fault != "kill" and not point.outcome.startswith("not reached"):
    assert point.outcome.startswith("exit 74, one line"), point
