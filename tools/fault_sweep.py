"""Kill or fail a short run at every file-system call of a kind, then rerun it: bitwise?

    python tools/fault_sweep.py [--kinds=fsync,rename,...] [--errors=ENOSPC,EIO]
        [--sample=N --seed=S] [--out=DIR] [--json=FILE]

As SQLite's crash and I/O-error tests run an operation once per index of its
I/O calls, this runs a short training run (the regression example, 16 steps,
checkpoints every 8) once per point: under `strace -f -e inject=KIND:...:when=N`,
the first thread to make its Nth call of KIND (strace counts per syscall and
per thread) is killed with SIGKILL (the crash sweep) or has that call fail
with ENOSPC or EIO (the I/O-error sweep). Then the same command runs again,
plainly, and must end bitwise equal to an uninterrupted run (final state,
metrics.jsonl and trace.jsonl), with every checkpoint that was finalized
before the fault still there and the newest intact one resumed from. A
failed call must end the run with exit 74 and one line on stderr, nothing
else (no traceback from any thread).

First a plain run under strace (the reference) counts each kind's calls, per thread: a
kind's points are N = 1 .. its largest per-thread count. --sample picks N
points of each kind (the first, the last and a seeded spread between) instead
of all. Prints one line per point and a table of outcomes by kind; needs
strace (Debian's `strace`; ptrace allowed, as root on these machines).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The calls a save and a resume make on the run directory (openat: creating a file).
KINDS = ("write", "pwrite64", "fsync", "fdatasync", "rename", "renameat2", "mkdir", "unlink",
         "openat")
# Failing these hits the run directory (measured: fsync, rename, mkdir and pwrite64 touch
# nothing else in a run; unlink mostly); write and openat also serve imports and pipes.
ERROR_KINDS = ("pwrite64", "fsync", "fdatasync", "rename", "renameat2", "mkdir", "unlink")
RUN = ("--task=repro.tasks.regression:Regression", "--max_steps=16", "--checkpoint_every=8",
       "--chunk_steps=4", "--noprogress")
EXIT_IO = 74


@dataclasses.dataclass
class Point:
  kind: str
  n: int
  fault: str  # "kill", "ENOSPC" or "EIO"
  outcome: str = ""
  detail: str = ""


def train(output: Path, strace: list[str] = (), timeout: int = 600, extra: list[str] = ()
          ) -> subprocess.CompletedProcess:
  command = [*strace, sys.executable, str(ROOT / "bin" / "train"), *RUN, *extra,
             f"--output={output}"]
  # strace -f faults the run's children too: the `git status` that records the code's
  # revision must take no lock, or a kill there leaves the checkout's index.lock behind.
  env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
  return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


STRACE = ("strace", "-f", "-qq")
# With a seccomp filter strace stops a thread only at the calls it traces (a run under a plain
# `-e inject` took 4.2-4.7 s against 2.9-3.5), but Debian's strace 6.1 then never delivers an
# injected signal (measured: `inject=write:signal=SIGKILL:when=2` under -f --seccomp-bpf left
# a process that made three writes running; an injected error still fires). So the filter
# serves the counting run and the errors; kills run under plain tracing (and
# injection_works() checks both before a sweep).
SECCOMP = "--seccomp-bpf"


def strace_for(fault: str) -> list[str]:
  """The strace command line (before -o and -e) that injects `fault`: 'kill' or an errno."""
  return [*STRACE] if fault == "kill" else [*STRACE, SECCOMP]


def injection_works() -> str:
  """'' if strace kills, and fails a call, at the Nth call of a process's thread as the sweep
  asks it to; else what went wrong (a sweep whose faults never fire would prove nothing)."""
  program = "import os\nfor _ in range(3):\n  try: os.write(1, b'.')\n  except OSError: pass"
  for fault, wanted in (("kill", -9), ("ENOSPC", None)):
    action = "signal=SIGKILL" if fault == "kill" else f"error={fault}"
    done = subprocess.run([*strace_for(fault), "-o", "/dev/null", "-e", "trace=write", "-e",
                           f"inject=write:{action}:when=2", sys.executable, "-c", program],
                          capture_output=True, text=True, timeout=60)
    shown = "." if wanted == -9 else ".."
    if done.returncode != (wanted or 0) or done.stdout != shown:
      return (f"strace's {fault} at the 2nd write did not fire as asked (exit "
              f"{done.returncode}, wrote {done.stdout!r}): {' '.join(strace_for(fault))}")
  return ""


def count(run: Path, start: Path | None = None) -> dict[str, int]:
  """Each kind's largest number of calls by one thread in a plain run (openat: O_CREAT only)
  to the end, from a copy of `start` if given (tracing changes no bit: without `start`, the
  run is the uninterrupted reference)."""
  trace = run.parent / f"count-{run.name}.trace"
  warm = run.parent / f"warm-{run.name}"
  for directory in (run, warm):
    shutil.rmtree(directory, ignore_errors=True)
    if start is not None:
      shutil.copytree(start, directory)
  # First untraced, so that the counted run, like every faulted run after it, finds its
  # programs in the compilation cache: a cold cache's writes, renames and mkdirs would be
  # counted as points that no later run reaches.
  assert train(warm).returncode == 0
  shutil.rmtree(warm)
  done = train(run, [*STRACE, SECCOMP, "-o", str(trace), "-e", "trace=" + ",".join(KINDS)])
  assert done.returncode == 0, done.stderr
  per_thread = collections.defaultdict(collections.Counter)
  for line in trace.read_text().splitlines():
    match = re.match(r"(\d+)\s+(\w+)\(", line)
    if match and (match[2] != "openat" or "O_CREAT" in line):
      per_thread[match[2]][match[1]] += 1
  return {kind: max(per_thread[kind].values()) for kind in KINDS if per_thread[kind]}


# The resume sweep's start: a run stopped at RESUME_AT (checkpoints 8 and 12) whose newest
# checkpoint is damaged, so that its rerun reads 12, sets it aside, restores 8, trains and
# saves 16: every call of a resume that restores, sets a damaged step aside and saves again.
RESUME_AT = 12


def damaged_start(work: Path) -> Path:
  start = work / "damaged-start"
  shutil.rmtree(start, ignore_errors=True)
  done = train(start, extra=[f"--max_steps={RESUME_AT}"])
  assert done.returncode == 0 and finalized(start) == {8, RESUME_AT}, done.stderr
  # Every data file of the arrays' store: state/d/ (what a restore reads) and the
  # per-process copies (measured: flipping the biggest file alone, a per-process copy of
  # the same size, left the state readable with equal checksums).
  for path in [p for p in (start / str(RESUME_AT) / "state").rglob("*")
               if p.is_file() and p.parent.name == "d"]:
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    blob[middle:middle + 16] = bytes(b ^ 0xFF for b in blob[middle:middle + 16])
    path.write_bytes(bytes(blob))
  return start


def finalized(run: Path) -> set[int]:
  return {int(p.name) for p in run.iterdir() if p.name.isdigit()} if run.is_dir() else set()


def resumed_from(run: Path) -> int | None:
  events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
  starts = [e for e in events if e["event"] in ("start", "resume")]
  return starts[-1]["step"] if starts and starts[-1]["event"] == "resume" else None


def same_run(reference: Path, run: Path) -> str:
  """'' when `run` ends bitwise equal to `reference`, else what differs."""
  from repro.proof import verify
  comparison = verify.compare(reference, run)
  if not comparison.identical:
    return "final state differs"
  for name in ("metrics.jsonl", "trace.jsonl"):
    if (reference / name).read_bytes() != (run / name).read_bytes():
      return f"{name} differs"
  return ""


def stderr_problem(stderr: str) -> str:
  """'' for exactly one 'error: ...' line, else what else there was."""
  lines = [line for line in stderr.splitlines() if line.strip()]
  if len(lines) == 1 and lines[0].startswith("error: "):
    return ""
  return f"{len(lines)} stderr lines: " + " | ".join(lines[:3])[:300]


def try_point(point: Point, reference: Path, work: Path, start: Path | None = None) -> Point:
  """Faults a run (from a copy of `start`, if given: the resume sweep) at `point`, reruns it
  plainly and says how that ended against the uninterrupted `reference`."""
  run = work / f"{'resume-' if start else ''}{point.kind}-{point.fault}-{point.n}"
  shutil.rmtree(run, ignore_errors=True)
  if start is not None:
    shutil.copytree(start, run)
  action = "signal=SIGKILL" if point.fault == "kill" else f"error={point.fault}"
  log = work / f"{run.name}.strace"
  faulted = train(run, [*strace_for(point.fault), "-o", str(log), "-e", f"trace={point.kind}",
                        "-e", f"inject={point.kind}:{action}:when={point.n}"])
  injected = [line for line in log.read_text().splitlines() if "INJECTED" in line]
  log.unlink()  # (a run that times out raises, and its log is left to look at)
  # A damaged step of the start is not a finalized checkpoint: setting it aside loses nothing.
  before = finalized(run) - ({RESUME_AT} if start is not None else set())
  if faulted.returncode == 0 and not injected:  # this run's threads made fewer such calls
    point.outcome = "not reached"
  elif faulted.returncode == 0:  # an error the run did without: which call, is the detail
    point.outcome = "exit 0, error ignored"
    point.detail = injected[0][:200]
  elif point.fault == "kill":
    point.outcome = "killed" if faulted.returncode in (-9, 137) else f"exit {faulted.returncode}"
  else:
    problem = stderr_problem(faulted.stderr)
    point.outcome = (f"exit {faulted.returncode}" if faulted.returncode != EXIT_IO
                     else "exit 74, one line" if not problem else "exit 74, more on stderr")
    point.detail = problem or faulted.stderr.strip().splitlines()[-1][:200]
  again = train(run)
  if again.returncode != 0:
    point.outcome += "; rerun FAILED"
    point.detail = again.stderr.strip()[-300:]
    return point
  lost = sorted(before - finalized(run))
  newest = max(before, default=None)
  if lost:
    point.outcome += f"; LOST {lost}"
  elif "already complete" in again.stdout:
    point.outcome += "; rerun already complete"  # killed after the last checkpoint
  elif point.outcome != "not reached" and resumed_from(run) != newest:
    point.outcome += f"; resumed from {resumed_from(run)}, newest intact {newest}"
  differs = same_run(reference, run)
  point.outcome += f"; rerun {differs}" if differs else "; rerun bitwise"
  if not differs and "LOST" not in point.outcome and "more" not in point.outcome:
    shutil.rmtree(run, ignore_errors=True)  # kept where something is wrong, to look at
  return point


def points(counts: dict[str, int], faults: list[str], sample: int, seed: int) -> list[Point]:
  chosen = []
  rng = random.Random(seed)
  for fault in faults:
    kinds = counts if fault == "kill" else {k: v for k, v in counts.items() if k in ERROR_KINDS}
    for kind, most in kinds.items():
      ns = list(range(1, most + 1))
      if sample and len(ns) > sample:
        ns = sorted({1, most, *rng.sample(ns[1:-1], sample - 2)})
      chosen += [Point(kind, n, fault) for n in ns]
  return chosen


def table(done: list[Point]) -> str:
  rows = collections.defaultdict(collections.Counter)
  for p in done:
    rows[(p.fault, p.kind)][p.outcome] += 1
  lines = ["| fault | call | points | outcomes |", "|---|---|---|---|"]
  for (fault, kind), outcomes in sorted(rows.items()):
    text = "; ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    lines.append(f"| {fault} | `{kind}` | {sum(outcomes.values())} | {text} |")
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kinds", default=",".join(KINDS))
  parser.add_argument("--faults", default="kill,ENOSPC,EIO")
  parser.add_argument("--resume", action="store_true",
                      help="fault the rerun of a run whose newest checkpoint is damaged "
                           "(a resume that restores, sets a step aside and saves again)")
  parser.add_argument("--sample", type=int, default=0, help="points per kind (0: all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="work directory (default: a temporary one)")
  parser.add_argument("--json", default=None, help="write the points' outcomes here")
  args = parser.parse_args()
  if not shutil.which("strace"):
    raise SystemExit("fault_sweep: strace is not installed: apt-get install strace")
  if problem := injection_works():
    raise SystemExit(f"fault_sweep: {problem}")
  work = Path(args.out or tempfile.mkdtemp(prefix="fault-sweep-"))
  work.mkdir(parents=True, exist_ok=True)
  reference, start = work / "reference", None
  counts = count(reference)
  if args.resume:
    start = damaged_start(work)
    counts = count(work / "counted-resume", start)
  counts = {k: v for k, v in counts.items() if k in args.kinds.split(",")}
  print(f"calls per thread of the {'resume' if start else 'run'} (the largest):", counts,
        flush=True)
  todo = points(counts, args.faults.split(","), args.sample, args.seed)
  print(f"{len(todo)} points; work directory {work}", flush=True)
  done = [_tried(i, len(todo), try_point(p, reference, work, start))
          for i, p in enumerate(todo, 1)]
  print(table(done))
  if args.json:
    Path(args.json).write_text(json.dumps([dataclasses.asdict(p) for p in done], indent=1))
  bad = [p for p in done if bad_outcome(p)]
  print(f"{len(done)} points tried, {len(bad)} bad; output in {work}")
  return 1 if bad else 0


def _tried(i: int, total: int, point: Point) -> Point:
  shown = point.detail and ("FAIL" in point.outcome + point.detail or "more" in point.outcome
                            or "ignored" in point.outcome)
  print(f"[{i}/{total}] {point.fault} at {point.kind} #{point.n}: {point.outcome}"
        + (f" ({point.detail})" if shown else ""), flush=True)
  return point


def bad_outcome(point: Point) -> bool:
  """A rerun that failed, a finalized step lost, other bits, more than one line on stderr,
  a resume from another step than the newest intact one, or a failed call the run ignored
  (but an unlink: clean-ups, such as of multiprocessing's semaphores, may fail)."""
  ignored = "error ignored" in point.outcome and point.kind != "unlink"
  return ignored or any(word in point.outcome for word in (
      "FAIL", "LOST", "differs", "more on stderr", "resumed from", "exit 1", "exit 2"))


if __name__ == "__main__":
  sys.exit(main())
