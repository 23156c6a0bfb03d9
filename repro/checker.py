"""Is a task reproducible on this machine? Pairs of short runs in fresh processes, bit for bit.

check(config, task) trains the task for a few steps (default 20) several ways,
each in a fresh process with its own empty compilation cache, and compares
pairs of them with repro.verify: the same run twice; resumed midway vs
straight through; another --chunk_steps; one CPU vs all of them (pinned by
CPU affinity, as `taskset -c` does); with micro-shards, one device vs several;
on a GPU, the deterministic-ops flag on vs off. Where a pair differs, the
report names the first differing step (from the traces), the differing
leaves (from the final states) and the probable cause (diagnose()). Each run
is `python -m repro.check_run` (repro.check_run.command()).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from repro import task as task_lib
from repro import verify
from repro.config import Config
from repro.errors import ReproError

EXIT_HOLDS, EXIT_BROKEN = 0, 1
THREADS_LIMIT = ("the CPU count is a documented limit, not a promise: compare runs pinned to "
                 "the same number of CPUs (taskset -c)")


@dataclasses.dataclass(frozen=True)
class Way:
  """One way to train: config changes, and how the process is started."""

  name: str
  changes: dict = dataclasses.field(default_factory=dict)
  resume_at: int = 0  # stop at this step, then resume in a second process
  cpus: int = 0  # pin to this many CPUs (0: all)
  devices: int = 0  # forced host devices (0: as the environment says)
  xla_flags: str = ""
  twice_in_process: bool = False  # train once into a scratch directory first, same process
  cache: str = "base"  # the compilation cache it shares with the ways of the same name


@dataclasses.dataclass(frozen=True)
class Pair:
  """A row of the report: two ways that repro promises (or not) give the same bits."""

  label: str
  a: str
  b: str
  promised: bool = True  # False: a documented limit; a difference does not fail the check


@dataclasses.dataclass
class Row:
  pair: Pair
  equal: bool | None  # None: not compared (skipped, or a run failed)
  detail: str = ""  # where they differ, why skipped, or how a run failed
  cause: str = ""
  skipped: bool = False  # not applicable on this machine


@dataclasses.dataclass
class Report:
  task: str
  steps: int
  rows: list[Row]
  seconds: float
  runs: int

  @property
  def holds(self) -> bool:
    return all(r.equal for r in self.rows if r.pair.promised and not r.skipped)

  @property
  def exit_code(self) -> int:
    return EXIT_HOLDS if self.holds else EXIT_BROKEN


PAIRS = ("again", "resumed", "chunk", "in_process", "one_cpu", "micro", "gpu_off")


def plan(config: Config, steps: int, cpus: int, platform: str,
         only: tuple[str, ...] = PAIRS) -> tuple[list[Way], list[Pair], list[Row]]:
  """The ways to train, the pairs to compare, and the rows skipped on this machine.

  only: the pairs to run, by name (PAIRS); the others are left out of the report.
  The ways share a compilation cache, except 'again', whose own compilations
  must agree with base's. (Sharing hides nothing else: an executable cached by
  a 2-CPU run gives a 1-CPU run the 1-CPU bits, measured; XLA:CPU splits the
  work when it runs, not when it compiles.)
  """
  chunk, half = max(1, steps // 2), max(1, steps // 2)
  other = max(1, (2 * chunk) // 3) if chunk > 1 else 2
  plain = {"chunk_steps": chunk}
  shards = config.micro_shards or next((m for m in (4, 2) if config.batch_size % m == 0), 0)
  table = {  # name: (pair, its second way(s), why it cannot run here or "")
      "again": (Pair("same run twice", "base", "again"), [Way("again", plain, cache="again")], ""),
      "resumed": (Pair(f"resumed at step {half} vs straight", "base", "resumed"),
                  [Way("resumed", plain, resume_at=half)], ""),
      "chunk": (Pair(f"--chunk_steps={other} vs {chunk}", "base", "chunk"),
                [Way("chunk", {"chunk_steps": other})], ""),
      "in_process": (Pair("second run in one process vs first", "base", "in_process"),
                     [Way("in_process", plain, twice_in_process=True)], ""),
      "one_cpu": (Pair(f"1 CPU vs all {cpus}", "base", "one_cpu", promised=False),
                  [Way("one_cpu", plain, cpus=1)],
                  "" if cpus > 1 else "this process may use only 1 CPU"),
      "micro": (Pair(f"--micro_shards={shards}: 1 device vs {shards}", "micro_1", "micro_n"),
                [Way("micro_1", {**plain, "micro_shards": shards, "devices": 1}, devices=1),
                 Way("micro_n", {**plain, "micro_shards": shards, "devices": 0},
                     devices=shards)],
                "" if platform == "cpu" and shards > 1 else
                f"{'not on ' + platform if shards > 1 else 'an odd batch size'} (the devices "
                f"are forced CPU devices)"),
      "gpu_off": (Pair("GPU deterministic ops on vs off", "base", "gpu_off", promised=False),
                  [Way("gpu_off", plain, xla_flags="--xla_gpu_deterministic_ops=false",
                       cache="gpu_off")],
                  "" if platform == "gpu" else f"no GPU (backend {platform})"),
  }
  ways, pairs, skipped = [Way("base", plain)], [], []
  for name in only:
    pair, second, why = table[name]
    if why:
      skipped.append(Row(pair, None, f"skipped: {why}", skipped=True))
    else:
      pairs.append(pair)
      ways += second
  return ways, pairs, skipped


class RunFailed(Exception):
  """A check's run exited non-zero: its last line of stderr."""


def _python_path() -> str:
  """This process's import path beyond the interpreter's own (where the task's module is)."""
  own = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
  extra = [os.path.abspath(p or ".") for p in sys.path
           if os.path.isdir(p or ".") and not os.path.realpath(p or ".").startswith(own)]
  return os.pathsep.join(dict.fromkeys(extra))


def _env(way: Way, cache: Path) -> dict[str, str]:
  env = dict(os.environ, PYTHONPATH=_python_path(), JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # every program, even tiny ones
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONUNBUFFERED="1")
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if way.devices:
    flags.append(f"--xla_force_host_platform_device_count={way.devices}")
  flags += way.xla_flags.split()
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def run_way(way: Way, config: Config, steps: int, workdir: Path, task_file: Path,
            main: str | None) -> Path:
  """Trains one way (two processes if it resumes); its run directory. RunFailed on failure."""
  from repro import check_run
  output = workdir / way.name
  config = config.replace(**way.changes, output=str(output), progress=False,
                          checkpoint_every=steps)
  cpus = tuple(sorted(os.sched_getaffinity(0))[:way.cpus])
  twice = workdir / f"{way.name}-first" if way.twice_in_process else None
  for n, target in enumerate([way.resume_at] * bool(way.resume_at) + [steps]):
    config_file = workdir / f"{way.name}-{n}.json"
    config_file.write_text(json.dumps(config.replace(max_steps=target).to_dict()))
    done = subprocess.run(check_run.command(task_file, config_file, cpus=cpus, main=main,
                                            twice=twice),
                          env=_env(way, workdir / f"cache-{way.cache}"), capture_output=True,
                          text=True)
    if done.returncode != 0:
      last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
      raise RunFailed(f"{way.name} run failed (exit {done.returncode}): {last}")
  return output


def host_callbacks(task: task_lib.Task, config: Config, features: dict) -> list[str]:
  """The host-callback primitives in the task's model and loss, traced on a batch of 2."""
  import jax
  from flax import nnx
  from repro import rng

  def loss(state, batch):
    return task_lib.unpack_loss(task.loss(nnx.merge(graphdef, state), batch))[0]

  try:
    model = nnx.eval_shape(lambda: task.model(rng.init_rngs(rng.streams(config.seed))))
    graphdef, state = nnx.split(model)
    batch = {k: jax.ShapeDtypeStruct((2,) + tuple(shape), dtype)
             for k, (dtype, shape) in features.items()}
    jaxpr = jax.make_jaxpr(loss)(state, batch)
  except Exception:  # the runs report a task that does not trace
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


def diagnose(key: str, c: verify.Comparison, first_row_equal: bool, callbacks: list[str],
             data_differs: bool) -> str:
  """The probable cause of a difference in the pair whose second run is `key`."""
  step = c.divergence.step if c.divergence else None
  if callbacks:
    return (f"a host callback in the model or loss ({', '.join(callbacks)}): it runs outside "
            f"the compiled program and its value is not a function of the step; compute it "
            f"in JAX, or pass it in the batch")
  if data_differs:
    return ("Python, NumPy or time-based randomness in the task's data(): two fresh processes "
            "built different data (their fingerprints differ); make data() a fixed function "
            "of its options")
  if key == "one_cpu":
    return "thread count: " + THREADS_LIMIT
  if key == "gpu_off":
    return ("a nondeterministic op on the GPU: keep --xla_gpu_deterministic_ops=true "
            "(repro's default)")
  if key == "again" and step in (0, 1):
    return (f"Python, NumPy or time-based randomness in the task: two fresh processes with "
            f"the same seed differ at {'init' if step == 0 else 'step 1'}; draw randomness "
            f"only from the nnx.Rngs that model(rngs) receives")
  if key == "again" or not first_row_equal:
    return ("a nondeterministic op: the same program on the same data gave other bits"
            + (f" from step {step}" if step else ""))
  if key in ("resumed", "chunk", "in_process"):
    return ("a counter that depends on the number of calls: something the model reads "
            "changes with how many times it was built, traced or called (a module-level or "
            "Python counter, or an RNG counter outside nnx.Rngs), and is not in the "
            "checkpoint; keep such state in nnx Variables")
  return ("a nondeterministic op across devices, or non-parameter state the micro-shards "
          "do not combine in a fixed order")


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


def compare_pairs(pairs: list[Pair], runs: dict, callbacks: list[str]) -> list[Row]:
  """A row per pair: equal or not, where they first differ, and the probable cause."""
  compared = {pair.b: verify.compare(runs[pair.a], runs[pair.b]) for pair in pairs
              if not any(isinstance(runs[k], RunFailed) for k in (pair.a, pair.b))}
  twice_equal = compared["again"].identical if "again" in compared else True
  rows = []
  for pair in pairs:
    c = compared.get(pair.b)
    if c is None:
      failed = next(runs[k] for k in (pair.a, pair.b) if isinstance(runs[k], RunFailed))
      rows.append(Row(pair, None, str(failed)))
    elif c.identical:
      rows.append(Row(pair, True))
    else:
      cause = diagnose(pair.b, c, twice_equal, callbacks,
                       _data_differs(runs[pair.a], runs[pair.b]))
      rows.append(Row(pair, False, _where(c), cause))
  return rows


def check(config: Config, task: task_lib.Task | None = None, *, steps: int = 20,
          pairs: tuple[str, ...] = PAIRS, jobs: int = 0, workdir: str | None = None,
          log: Callable[[str], None] = print) -> Report:
  """Trains `task` for `steps` steps several ways in fresh processes; compares the pairs.

  pairs: which rows to run (names from PAIRS; default all).
  jobs: runs at a time (0: one per CPU). workdir: where the runs go (kept);
  default a temporary directory, removed. Raises ReproError (one line) for a
  bad config or task, or when the plain run itself fails.
  """
  from repro.run import resolve
  config, task = resolve(config, task)
  if steps < 2:
    raise ReproError(f"--check_steps={steps}: pass 2 or more (a run is resumed midway)")
  unknown = sorted(set(pairs) - set(PAIRS))
  if unknown or not pairs:
    raise ReproError(f"--check_pairs: unknown {', '.join(unknown) or '(none given)'}; choose "
                     f"from {','.join(PAIRS)}")
  main = _main_file(task)
  import jax
  ways, compared, skipped = plan(config, steps, len(os.sched_getaffinity(0)),
                                 jax.default_backend(), tuple(dict.fromkeys(pairs)))
  start = time.perf_counter()
  root = Path(workdir).absolute() if workdir else Path(tempfile.mkdtemp(prefix="repro-check-"))
  root.mkdir(parents=True, exist_ok=True)
  try:
    save_task(task, root / "task.json")
    runs = _run_all(ways, config, steps, root, main, jobs, config.progress)
    if isinstance(runs["base"], RunFailed):
      raise ReproError(f"the task's plain run failed, so nothing can be compared: "
                       f"{runs['base']}")
    features = _train_features(task, config)
    rows = compare_pairs(compared, runs, host_callbacks(task, config, features)) + skipped
  finally:
    if not workdir:
      shutil.rmtree(root, ignore_errors=True)
  log(f"runs {'kept in ' + str(root) if workdir else 'removed (pass --check_dir to keep them)'}")
  return Report(task_lib.task_name(task), steps, rows, time.perf_counter() - start,
                sum(1 + bool(w.resume_at) for w in ways))


def _run_all(ways: list[Way], config: Config, steps: int, root: Path, main: str | None,
             jobs: int, progress: bool) -> dict:
  """{way name: run directory, or the RunFailed}: the ways run `jobs` at a time."""
  from tqdm import tqdm
  runs = {}
  with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
    futures = {pool.submit(run_way, w, config, steps, root, root / "task.json", main): w.name
               for w in ways}
    bar = tqdm(total=len(ways), desc="check runs", unit="run", disable=not progress,
               file=sys.stderr)
    for done in concurrent.futures.as_completed(futures):
      try:
        runs[futures[done]] = done.result()
      except RunFailed as err:
        runs[futures[done]] = err
      bar.update()
    bar.close()
  return runs


def _train_features(task: task_lib.Task, config: Config) -> dict:
  from repro import splits as splits_lib
  try:
    return splits_lib.check(task.data(), task_lib.task_name(task))["train"].features()
  except Exception:  # the runs have already reported a task whose data() fails
    return {}


def _main_file(task: task_lib.Task) -> str | None:
  """The script a task's class is defined in, when that is __main__ (loaded in each run)."""
  if type(task).__module__ != "__main__":
    return None
  main = getattr(sys.modules["__main__"], "__file__", None)
  if not main:
    raise ReproError(f"task {task_lib.task_name(task)} is defined in an interactive session: "
                     f"define it in a module or script so that fresh processes can load it")
  return os.path.abspath(main)


def save_task(task: task_lib.Task, path: Path) -> None:
  """Writes what rebuilds `task` in a fresh process: its class, options and arrays.

  path holds {"class": "module:QualName", "fields": {name: JSON value}}; the
  fields that hold arrays go to path.with_suffix(".npz"). A field of any
  other kind is refused with one line.
  """
  import numpy as np
  fields, arrays = {}, {}
  for field in dataclasses.fields(task) if dataclasses.is_dataclass(task) else ():
    if not field.init:
      continue
    value = getattr(task, field.name)
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
      arrays[field.name] = np.asarray(value)
    elif task_lib.is_json(value):
      fields[field.name] = value
    else:
      raise ReproError(f"task {task_lib.task_name(task)}: field {field.name} holds a "
                       f"{type(value).__name__}, which cannot be passed to fresh processes: "
                       f"give the task plain options and arrays")
  path.write_text(json.dumps({"class": task_lib.spec_of(task), "fields": fields}))
  np.savez(path.with_suffix(".npz"), **arrays)


def load_task(path: Path) -> task_lib.Task:
  """The task save_task wrote (its class imported, or found in the loaded __main__ script)."""
  import importlib
  import numpy as np
  described = json.loads(path.read_text())
  module_name, _, qualname = described["class"].partition(":")
  target = importlib.import_module(module_name)
  for part in qualname.split("."):
    target = getattr(target, part)
  with np.load(path.with_suffix(".npz")) as arrays:
    return target(**described["fields"], **{k: arrays[k] for k in arrays.files})


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
