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
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import fault_sweep  # noqa: E402

pytestmark = pytest.mark.skipif(not shutil.which("strace"), reason="apt-get install strace")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  """A work directory holding the uninterrupted reference run; the calls it made, counted."""
  work = tmp_path_factory.mktemp("sweep")
  return work, fault_sweep.count(work / "reference")


@pytest.fixture(scope="module")
def sweep(work):
  work, counts = work
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
  # before and saves again, faulted at its first rename (setting the step aside: killed,
  # and failing, which was a traceback), a seeded write and a seeded fsync.
  start = fault_sweep.damaged_start(work)
  counts = fault_sweep.count(work / "counted-resume", start)
  assert fault_sweep.same_run(work / "reference", work / "counted-resume") == ""
  assert (work / "counted-resume" / f"corrupt-{fault_sweep.RESUME_AT}").is_dir()
  chosen = [point("rename", 1, "kill"), point("rename", 1, "ENOSPC"),
            point("write", mid("write"), "kill"), point("fsync", mid("fsync"), "EIO")]
  return done + [fault_sweep.try_point(p, work / "reference", work, start) for p in chosen]


def test_strace_kills_and_fails_the_nth_call_as_the_sweep_asks():
  """Under -f with a seccomp filter, strace 6.1 never delivered an injected SIGKILL: the
  crash sweep then tried nothing (every kill 'not reached') and passed."""
  assert fault_sweep.injection_works() == ""


@pytest.mark.parametrize("index", range(12))
def test_a_fault_at_a_call_of_a_save_or_a_resume_resumes_bitwise_and_fails_in_one_line(
    sweep, index):
  point = sweep[index]
  assert not fault_sweep.bad_outcome(point), (point, point.detail)
  assert "rerun bitwise" in point.outcome
  # A first call is always reached: a kill there killed the run, a failed call ended it with
  # one line and exit 74. (A later N may not be: strace counts per thread, and which pool
  # thread makes a checkpoint's calls varies from run to run.)
  if point.n == 1 or not point.outcome.startswith("not reached"):
    reached = "killed" if point.fault == "kill" else "exit 74, one line"
    assert point.outcome.startswith(reached), (point, point.detail)


def faulted(command: list[str], strace: list[str], **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([*fault_sweep.strace_for("EIO"), "-o", "/dev/null", *strace, sys.executable,
                         *command], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("call, fault", [("fsync", "ENOSPC"), ("rename", "EIO"), ("mkdir", "EIO")])
def test_an_export_on_a_failing_disk_is_one_line_exit_74_and_leaves_nothing(work, call, fault):
  work, _ = work
  out = work / f"export-{call}"
  done = faulted([str(ROOT / "bin" / "export"), str(work / "reference"), f"--out={out}"],
                 ["-e", f"trace={call}", "-e", f"inject={call}:error={fault}:when=1"])
  assert done.returncode == 74 and not fault_sweep.stderr_problem(done.stderr), done.stderr
  assert f"cannot write the export to {out}" in done.stderr
  assert not out.exists() and not list(work.glob(f".{out.name}.partial-*"))


@pytest.mark.parametrize("made", ["", "tensorboard"])
def test_a_run_whose_directory_cannot_be_made_is_one_line_and_exit_74(tmp_path, made):
  """Found by the whole I/O-error sweep: an ENOSPC at the mkdir of the run directory, or at
  the TensorBoard writer's, was a traceback and exit 1."""
  out = tmp_path / "run"
  path = out / made if made else out
  done = faulted([str(ROOT / "bin" / "train"), *fault_sweep.RUN, f"--output={out}"],
                 ["-P", str(path), "-e", "trace=mkdir", "-e", "inject=mkdir:error=ENOSPC"])
  assert done.returncode == 74 and not fault_sweep.stderr_problem(done.stderr), done.stderr
  said = "cannot write" if made else "cannot create the run directory"
  assert f"{said} {path}: No space left on device" in done.stderr


@pytest.mark.parametrize("binary", ["export", "eval"])
def test_reading_a_checkpoint_on_a_failing_disk_is_one_line_and_exit_74(work, binary):
  work, _ = work
  step = max(fault_sweep.finalized(work / "reference"))
  read = work / "reference" / str(step) / "state" / "manifest.ocdbt"
  command = [str(ROOT / "bin" / binary), str(work / "reference")]
  command += [f"--out={work / 'unreadable'}"] if binary == "export" else ["--json"]
  done = faulted(command, ["-P", str(read), "-e", "trace=openat", "-e",
                           "inject=openat:error=EIO"])
  assert done.returncode == 74 and not fault_sweep.stderr_problem(done.stderr), done.stderr
  assert f"cannot read {read.parent}: Input/output error" in done.stderr


def test_bin_eval_writing_to_a_full_disk_is_one_line_and_exit_74(work):
  work, _ = work
  with open("/dev/full", "w") as full:
    done = subprocess.run([sys.executable, str(ROOT / "bin" / "eval"), str(work / "reference"),
                           "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                          timeout=300)
  assert done.returncode == 74 and not fault_sweep.stderr_problem(done.stderr), done.stderr
  assert "cannot write the output to stdout: No space left on device" in done.stderr
