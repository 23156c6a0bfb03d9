"""Is a task reproducible on this machine? Pairs of short runs in fresh processes, bit for bit.

check(config, task) trains the task for a few steps (default 20) several ways,
each in a fresh process compiling into a cache of the check's own, and compares
pairs of them with repro.proof.verify: the same run twice; resumed midway vs
straight through; another --chunk_steps; one CPU vs all of them (pinned by
CPU affinity, as `taskset -c` does); a machine of 16 CPUs (NPROC=16, which
XLA:CPU reads) vs this one; with micro-shards, one device vs several;
on a GPU, the deterministic-ops flag on vs off. Where a pair differs, the
report names the first differing step (from the traces), the differing
leaves (from the final states) and the probable cause (diagnose()).

ROWS is the one table of those rows: each row's --check_pairs name, its label,
the runs it compares, whether it is a promise, and its probable cause. The
plan, the report, the run count and the cause rules all read it. Each run is
`python -m repro.proof.check_run` (repro.proof.processes.command()).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable

from repro import task as task_lib
from repro.proof import processes
from repro.proof.processes import RunFailed, Way
from repro.proof import verify
from repro.config import Config
from repro.errors import ReproError

EXIT_HOLDS, EXIT_BROKEN = 0, 1
BASE = processes.BASE
THREAD_POOL = ("XLA:CPU's thread pool followed the machine: repro sets it (PJRT_NPROC, from "
               "--cpu_threads) before JAX's backend starts; something in the task or its "
               "environment changed it after, or splits work by the CPU count itself (a "
               "host callback's library, say)")
NONDETERMINISTIC_OP = "a nondeterministic op: the same program on the same data gave other bits"
CALL_COUNTER = ("a counter that depends on the number of calls: something the model reads "
                "changes with how many times it was built, traced or called (a module-level or "
                "Python counter, or an RNG counter outside nnx.Rngs), and is not in the "
                "checkpoint; keep such state in nnx Variables")


@dataclasses.dataclass(frozen=True)
class Shape:
  """What the rows' runs depend on: the check's steps, this machine, the micro-shards to try."""

  steps: int
  cpus: int  # CPUs this process may use
  platform: str  # JAX's default backend
  shards: int  # micro-shards for the micro row (0: no divisor of the batch size to try)

  @property
  def chunk(self) -> int:
    """Every run's --chunk_steps, but the chunk row's."""
    return max(1, self.steps // 2)

  @property
  def half(self) -> int:
    """The step a resumed run stops at."""
    return max(1, self.steps // 2)

  @property
  def other(self) -> int:
    """The chunk row's --chunk_steps."""
    return max(1, (2 * self.chunk) // 3) if self.chunk > 1 else 2

  @property
  def plain(self) -> dict:
    return {"chunk_steps": self.chunk}


def _no_reason(shape: Shape) -> str:
  return ""


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of bin/check: the runs it compares, and what a difference between them means."""

  name: str  # in --check_pairs
  label: str  # in the report: a str.format template over the Shape, `s`
  runs: Callable[[Shape], tuple[Way, ...]]  # its run (compared with BASE's), or its two runs
  cause: str  # the probable cause of a difference, where no rule of diagnose() says more
  promised: bool = True  # False: a documented limit; a difference does not fail the check
  unavailable: Callable[[Shape], str] = _no_reason  # why it cannot run here ("": it can)

  def ways(self, shape: Shape) -> tuple[Way, Way]:
    """The two ways it compares, named: BASE and its run, or its two runs."""
    own = self.runs(shape)
    if len(own) == 1:
      return base_way(shape), dataclasses.replace(own[0], name=self.name)
    return tuple(dataclasses.replace(way, name=f"{self.name}_{n}")
                 for n, way in enumerate(own, 1))


def base_way(shape: Shape) -> Way:
  return Way(shape.plain, name=BASE)


def _micro_ways(s: Shape) -> tuple[Way, Way]:
  options = {**s.plain, "micro_shards": s.shards}
  return (Way({**options, "devices": 1}, devices=1),
          Way({**options, "devices": 0}, devices=s.shards))


def _micro_unavailable(s: Shape) -> str:
  if s.platform == "cpu" and s.shards > 1:
    return ""
  why = "not on " + s.platform if s.shards > 1 else "an odd batch size"
  return f"{why} (the devices are forced CPU devices)"


AGAIN = Row("again", "same run twice", lambda s: (Way(s.plain, own_cache=True),),
            NONDETERMINISTIC_OP)
ROWS = (  # the report's rows, in its order
    AGAIN,
    Row("resumed", "resumed at step {s.half} vs straight",
        lambda s: (Way(s.plain, resume_at=s.half),), CALL_COUNTER),
    Row("chunk", "--chunk_steps={s.other} vs {s.chunk}",
        lambda s: (Way({"chunk_steps": s.other}),), CALL_COUNTER),
    Row("in_process", "second run in one process vs first",
        lambda s: (Way(s.plain, twice_in_process=True),), CALL_COUNTER),
    # Another machine compiles its programs itself: the CPU rows never load the base's.
    Row("one_cpu", "1 CPU vs all {s.cpus}", lambda s: (Way(s.plain, cpus=1, own_cache=True),),
        THREAD_POOL,
        unavailable=lambda s: "" if s.cpus > 1 else "this process may use only 1 CPU"),
    Row("many_cpus", "a 16-CPU machine (NPROC=16) vs this one",
        lambda s: (Way(s.plain, env=(("NPROC", "16"), ("PJRT_NPROC", None)), own_cache=True),),
        THREAD_POOL),
    Row("micro", "--micro_shards={s.shards}: 1 device vs {s.shards}", _micro_ways,
        "a nondeterministic op across devices, or non-parameter state the micro-shards do not "
        "combine in a fixed order; or, on a CPU, XLA:CPU's thread pool: it has at least as "
        "many threads as devices, and repro sizes it max(--cpu_threads, --micro_shards) so "
        "that every device count dividing M shares one (docs/limits.md)",
        unavailable=_micro_unavailable),
    Row("gpu_off", "GPU deterministic ops on vs off",
        lambda s: (Way(s.plain, xla_flags="--xla_gpu_deterministic_ops=false", own_cache=True),),
        "a nondeterministic op on the GPU: keep --xla_gpu_deterministic_ops=true (repro's "
        "default)", promised=False,
        unavailable=lambda s: "" if s.platform == "gpu" else f"no GPU (backend {s.platform})"),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}
PAIRS = tuple(ROWS_BY_NAME)  # the names --check_pairs takes


@dataclasses.dataclass(frozen=True)
class Pair:
  """A row as this check runs it: its label here, and the two runs (way names) it compares."""

  row: Row
  label: str
  a: str
  b: str

  @property
  def promised(self) -> bool:
    return self.row.promised


@dataclasses.dataclass
class Outcome:
  """A row of the report: whether its two runs are bitwise equal, and if not, where and why."""

  pair: Pair
  equal: bool | None  # None: not compared (skipped, or a run failed)
  detail: str = ""  # where they differ, why skipped, or how a run failed
  cause: str = ""
  skipped: bool = False  # not applicable on this machine


@dataclasses.dataclass
class Report:
  task: str
  steps: int
  rows: list[Outcome]
  seconds: float
  runs: int  # fresh processes started

  @property
  def holds(self) -> bool:
    return all(r.equal for r in self.rows if r.pair.promised and not r.skipped)

  @property
  def exit_code(self) -> int:
    return EXIT_HOLDS if self.holds else EXIT_BROKEN


def plan(config: Config, steps: int, cpus: int, platform: str,
         only: tuple[str, ...] = PAIRS) -> tuple[list[Way], list[Pair], list[Outcome]]:
  """The ways to train, the pairs to compare, and the rows skipped on this machine.

  only: the rows to run, by name (PAIRS); the others are left out of the report.
  The ways share a compilation cache, except 'again', whose own compilations
  must agree with base's, and the CPU rows, which compile as another machine
  would. (An executable cached by a 2-CPU run was measured to give a 1-CPU run
  the 1-CPU bits, as XLA:CPU splits the work when it runs; compiling there too
  leaves the row nothing to take on trust.)
  """
  shards = config.micro_shards or next((m for m in (4, 2) if config.batch_size % m == 0), 0)
  shape = Shape(steps, cpus, platform, shards)
  ways, pairs, skipped = {BASE: base_way(shape)}, [], []
  for name in only:
    row = ROWS_BY_NAME[name]
    a, b = row.ways(shape)
    pair = Pair(row, row.label.format(s=shape), a.name, b.name)
    why = row.unavailable(shape)
    if why:
      skipped.append(Outcome(pair, None, f"skipped: {why}", skipped=True))
    else:
      pairs.append(pair)
      ways.update({a.name: a, b.name: b})
  return list(ways.values()), pairs, skipped


def host_callbacks(task: task_lib.Task, config: Config, features: dict) -> list[str]:
  """The host-callback primitives in the task's model and loss, traced on a batch of 2."""
  import jax
  from flax import nnx
  from repro.train import rng

  def loss(state, batch):
    return task_lib.unpack_loss(task.loss(nnx.merge(graphdef, state), batch))[0]

  try:
    model = task_lib.guarded("model()", task, lambda: nnx.eval_shape(
        lambda: task.model(rng.init_rngs(rng.streams(config.seed)))))
    graphdef, state = nnx.split(model)
    batch = {k: jax.ShapeDtypeStruct((2,) + tuple(shape), dtype)
             for k, (dtype, shape) in features.items()}
    jaxpr = task_lib.guarded("loss()", task, lambda: jax.make_jaxpr(loss)(state, batch))
  except ReproError:  # the task's code failed: the runs report it, each with its line
    return []
  return sorted(name for name in _primitives(jaxpr.jaxpr) if "callback" in name)


def _primitives(jaxpr) -> set[str]:
  """The names of every primitive in a jaxpr and the jaxprs nested in its equations."""
  found = set()
  for eqn in jaxpr.eqns:
    found.add(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found |= _primitives(inner)
  return found


def diagnose(row: Row, c: verify.Comparison, first_row_equal: bool, callbacks: list[str],
             data_differs: bool) -> str:
  """The probable cause of a difference between the runs of `row`.

  first_row_equal: whether the same run twice (AGAIN) was equal; where it was
  not, its cause explains every other row too.
  """
  step = c.divergence.step if c.divergence else None
  if callbacks:
    return (f"a host callback in the model or loss ({', '.join(callbacks)}): it runs outside "
            f"the compiled program and its value is not a function of the step; compute it "
            f"in JAX, or pass it in the batch")
  if data_differs:
    return ("Python, NumPy or time-based randomness in the task's data(): two fresh processes "
            "built different data (their fingerprints differ); make data() a fixed function "
            "of its options")
  if not row.promised:  # a documented limit explains its own row
    return row.cause
  if row is AGAIN and step in (0, 1):
    return (f"Python, NumPy or time-based randomness in the task: two fresh processes with "
            f"the same seed differ at {'init' if step == 0 else 'step 1'}; draw randomness "
            f"only from the nnx.Rngs that model(rngs) receives")
  if row is AGAIN or not first_row_equal:
    return AGAIN.cause + (f" from step {step}" if step else "")
  return row.cause


def _where(c: verify.Comparison) -> str:
  parts = []
  if c.divergence:
    d = c.divergence
    parts.append("step 0 (init)" if d.step == 0 else f"step {d.step} ({d.what})")
  if c.differing:
    parts.append(f"{len(c.differing)} of {c.leaves} leaves, first {c.differing[0].name}")
  return ", ".join(parts) or "; ".join(c.structure + c.cursor + c.metrics)[:120]


def _data_differs(run_a: Path, run_b: Path) -> bool:
  prints = [verify.manifest_of(r).get("identity", {}).get("data_fingerprint") for r in
            (run_a, run_b)]
  return prints[0] != prints[1]


def compare_pairs(pairs: list[Pair], runs: dict, callbacks: list[str]) -> list[Outcome]:
  """A row per pair: equal or not, where they first differ, and the probable cause."""
  compared = {pair.row: verify.compare(runs[pair.a], runs[pair.b]) for pair in pairs
              if not any(isinstance(runs[k], RunFailed) for k in (pair.a, pair.b))}
  twice_equal = compared[AGAIN].identical if AGAIN in compared else True
  rows = []
  for pair in pairs:
    c = compared.get(pair.row)
    if c is None:
      failed = next(runs[k] for k in (pair.a, pair.b) if isinstance(runs[k], RunFailed))
      rows.append(Outcome(pair, None, str(failed)))
    elif c.identical:
      rows.append(Outcome(pair, True))
    else:
      cause = diagnose(pair.row, c, twice_equal, callbacks,
                       _data_differs(runs[pair.a], runs[pair.b]))
      rows.append(Outcome(pair, False, _where(c), cause))
  return rows


def check(config: Config, task: task_lib.Task | None = None, *, steps: int = 20,
          pairs: tuple[str, ...] = PAIRS, jobs: int = 0, workdir: str | None = None,
          log: Callable[[str], None] = print) -> Report:
  """Trains `task` for `steps` steps several ways in fresh processes; compares the pairs.

  pairs: which rows to run (names from PAIRS, the ROWS; default all).
  jobs: runs at a time (0: one per CPU). workdir: where the runs go (kept);
  default a temporary directory, removed. Raises ReproError (one line) for a
  bad config or task, or when the plain run itself fails.
  """
  from repro.runner import resolve
  asked = config.program  # each run resolves 'auto' itself (micro-shards run the scan)
  config, task = resolve(config, task)
  config = config.replace(program=asked)
  if steps < 2:
    raise ReproError(f"--check_steps={steps}: pass 2 or more (a run is resumed midway)")
  unknown = sorted(set(pairs) - set(PAIRS))
  if unknown or not pairs:
    raise ReproError(f"--check_pairs: unknown {', '.join(unknown) or '(none given)'}; choose "
                     f"from {','.join(PAIRS)}")
  main = processes.main_file(task)
  import jax
  ways, compared, skipped = plan(config, steps, len(os.sched_getaffinity(0)),
                                 jax.default_backend(), tuple(dict.fromkeys(pairs)))
  start = time.perf_counter()
  with (contextlib.nullcontext(Path(workdir).absolute()) if workdir
        else processes.scratch("repro-check-")) as root:
    root.mkdir(parents=True, exist_ok=True)
    processes.save_task(task, root / "task.json")
    runs = _run_all(ways, config, steps, root, main, jobs, config.progress)
    if isinstance(runs[BASE], RunFailed):
      raise ReproError(f"the task's plain run failed, so nothing can be compared: "
                       f"{runs[BASE]}")
    features = train_features(task, config)
    rows = compare_pairs(compared, runs, host_callbacks(task, config, features)) + skipped
  log(f"runs {'kept in ' + str(root) if workdir else 'removed (pass --check_dir to keep them)'}")
  return Report(task_lib.task_name(task), steps, rows, time.perf_counter() - start,
                processes.count(ways))


def _run_all(ways: list[Way], config: Config, steps: int, root: Path, main: str | None,
             jobs: int, progress: bool) -> dict:
  """{way name: run directory, or the RunFailed}: the ways run `jobs` at a time."""
  from tqdm import tqdm
  runs = {}
  with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
    futures = {pool.submit(processes.run_way, w, config, steps, root, root / "task.json", main): w
               for w in ways}
    bar = tqdm(total=processes.count(ways), desc="check runs", unit="run", disable=not progress,
               file=sys.stderr)
    for done in concurrent.futures.as_completed(futures):
      way = futures[done]
      try:
        runs[way.name] = done.result()
      except RunFailed as err:
        runs[way.name] = err
      bar.update(way.processes)
    bar.close()
  return runs


def train_features(task: task_lib.Task, config: Config) -> dict:
  from repro.data import splits as splits_lib
  try:
    data = task_lib.guarded("data()", task, task.data)
    return splits_lib.check(data, task_lib.task_name(task))["train"].features()
  except ReproError:  # the runs have already reported a task whose data() fails
    return {}


def format_report(report: Report) -> str:
  """The table bin/check prints: a row per pair, then the verdict."""
  lines = [f"repro check: task {report.task}, {report.steps} steps, {report.runs} runs in "
           f"fresh processes, {report.seconds:.0f} s", ""]
  width = max(len(r.pair.label) for r in report.rows)
  for r in report.rows:
    verdict = {True: "equal", False: "DIFFERENT", None: "FAILED"}[r.equal]
    if r.skipped:
      verdict = "-"
    if r.equal is False and not r.pair.promised:
      verdict = "different (a limit)"
    lines.append(f"  {r.pair.label:<{width}}  {verdict}" + (f"  {r.detail}" if r.detail else ""))
    if r.cause:
      lines.append(f"  {'':<{width}}  probable cause: {r.cause}")
  lines.append("")
  broken = [r.pair.label for r in report.rows
            if r.pair.promised and not r.skipped and not r.equal]
  if broken:
    lines.append(f"NOT REPRODUCIBLE here: {'; '.join(broken)} (exit 1)")
  else:
    lines.append("reproducible here: every pair repro promises is bitwise equal (exit 0)")
  return "\n".join(lines)
