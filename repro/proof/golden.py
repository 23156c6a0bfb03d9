"""Golden records: a task's bits, recorded once and checked on every commit (bin/golden).

record(task, config) trains the task a few steps (default 20) in a fresh process,
with an empty compilation cache of its own (as bin/check's runs: no bits are
read from a cache it did not make), and writes a golden file (JSON): the
config with the task and its options, and a record of what the bits are:
each leaf's sha256 of the final state, the trace of every step (loss, batch
and parameter fingerprints, the step-0 line for the initial parameters), the
run's identity (with the data's fingerprints) and its final metrics, with the
scope they hold for: the platform class, the locked versions and the
backend's configuration (repro.train.identity's PLATFORM_KEYS and
VERSION_KEYS, as a resume compares them).

check(path) reruns exactly that, the same way, and compares, in the order of
the debugging checklist: the data (the splits' fingerprints, then each step's
batch), the loss, the parameters (the trace step by step, from the initial
ones), then the final state leaf by leaf and the metrics. Where this
platform's scope is one of the file's, differing bits are a regression (exit
1). Where it is not, equal bits pass (the record holds here too; `add`
records this scope beside it) and differing bits are OTHER_SCOPE (exit 3, or
1 with `strict`): not a regression, since the bits are promised per platform
class and environment; `add` then records this scope's own bits. One file
holds records for several platform classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

from repro import metrics
from repro import task as task_lib
from repro.checkpoints import stored as stored_lib
from repro.config import Config
from repro.errors import CheckpointWriteError, ReproError
from repro.machine import environment
from repro.proof import processes
from repro.train import identity

FORMAT = "repro-golden/1"
DEFAULT_STEPS = 20
EXIT_EQUAL, EXIT_REGRESSION, EXIT_OTHER_SCOPE = 0, 1, 3
EQUAL, REGRESSION, OTHER_SCOPE = "equal", "regression", "other scope"
# Exit codes of a rerun that check passes on as its own (bad input, I/O, a signal): any
# other failure of the rerun (a loss gone NaN, say) is a regression, as the record's run
# did not fail.
PASSED_ON = (2, 74, 75)
# Config fields that say where and how a run is written, not what it computes: a golden
# run sets them itself.
NOT_RECORDED = ("output", "progress", "checkpoint_every", "max_to_keep", "max_steps", "strict")
DATA = identity.DATA  # the identity's key of the data's fingerprints
_SHOWN = 4  # differing leaves named in a line; the rest are counted


class RunFailed(ReproError):
  """The golden run's process failed: its last line, and its exit code."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class Difference:
  """One thing that differs from the record: what, at which step, and how."""

  kind: str  # 'data', 'loss', 'parameters', 'steps', 'state', 'metrics' or 'run'
  step: int | None  # the step it shows at (None: before training, or the whole run)
  detail: str

  def line(self) -> str:
    return f"{self.kind}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Recorded:
  """What record() wrote."""

  path: str
  task: str
  steps: int
  leaves: int
  scope: dict
  seconds: float


@dataclasses.dataclass
class Report:
  """What check() found: the verdict, what differs first, and how this scope differs."""

  path: str
  task: str
  steps: int
  verdict: str  # EQUAL, REGRESSION or OTHER_SCOPE
  recorded_here: bool  # this platform's scope is one of the file's
  differences: list[Difference]  # from the record compared, in the checklist's order
  leaves: list[str]  # the final state's leaves that differ
  scope_diffs: list[str]  # how this scope differs from the nearest recorded one
  settings: list[str]  # identity fields (beside the data) that differ: context
  strict: bool = False
  added: str = ""  # what `add` wrote: '', 'scope' or 'record'
  kept: str = ""  # where the rerun was kept (check's `keep`)
  seconds: float = 0.0
  bits: dict = dataclasses.field(default_factory=dict, repr=False)  # this run's record
  scope: dict = dataclasses.field(default_factory=dict, repr=False)  # this run's scope

  @property
  def exit_code(self) -> int:
    if self.verdict == EQUAL:
      return EXIT_EQUAL
    if self.verdict == OTHER_SCOPE and not self.strict:
      return EXIT_OTHER_SCOPE
    return EXIT_REGRESSION

  @property
  def failed(self) -> bool:
    """A regression (or, with strict, differing bits on another scope)."""
    return self.exit_code == EXIT_REGRESSION

  @property
  def first(self) -> Difference | None:
    return self.differences[0] if self.differences else None

  def problems(self) -> list[str]:
    """One line per thing that differs (none when equal), each naming the file."""
    if self.verdict == EQUAL:
      return []
    where = ("on another platform class or environment than the record's "
             f"({'; '.join(self.scope_diffs)}): " if self.verdict == OTHER_SCOPE else "")
    return [f"{self.path}: {where}{d.line()}" for d in self.differences]


# The file.

def load(path: str | Path) -> dict:
  """A golden file's content; one line (ReproError) if it cannot be read or is not one."""
  path = Path(path).expanduser()
  try:
    golden = json.loads(path.read_text())
  except OSError as err:
    raise ReproError(f"cannot read {path} ({err.strerror or err}): pass a golden file that "
                     f"bin/golden record wrote") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ReproError(f"{path} is not JSON ({getattr(err, 'msg', err)}): pass a golden file "
                     f"that bin/golden record wrote") from None
  if not isinstance(golden, dict) or golden.get("format") != FORMAT:
    found = golden.get("format") if isinstance(golden, dict) else None
    raise ReproError(f"{path} is not a golden file of format {FORMAT} (its format: {found!r}): "
                     f"record it with bin/golden record")
  records = golden.get("records")
  if (not isinstance(golden.get("config"), dict) or not isinstance(golden.get("steps"), int)
      or not isinstance(records, list) or not records or not all(map(_whole, records))):
    raise ReproError(f"{path} is a damaged golden file (its config, steps or records are "
                     f"missing or malformed): record it again with bin/golden record")
  return golden


# The kinds of a record's fields (a file that does not have them is damaged).
_RECORD_FIELDS = {"scopes": list, "steps": int, "identity": dict, "trace": list,
                  "leaf_digests": dict, "metrics": dict}


def _whole(record) -> bool:
  return (isinstance(record, dict)
          and all(isinstance(record.get(k), kind) for k, kind in _RECORD_FIELDS.items())
          and bool(record["scopes"]) and all(isinstance(s, dict) for s in record["scopes"])
          and all(isinstance(r, dict) for r in record["trace"]))


def config_of(golden: dict) -> Config:
  """The recorded config (its task and options among it)."""
  return Config.from_dict(golden["config"])


def write(path: str | Path, golden: dict) -> None:
  """Writes a golden file whole (a temporary file renamed over it); I/O errors exit 74."""
  path = Path(path).expanduser()
  text = _text(golden)
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    temporary.write_text(text)
    os.replace(temporary, path)
  except OSError as err:
    temporary.unlink(missing_ok=True)
    raise CheckpointWriteError(f"cannot write {path}: {err.strerror or err}") from None


def _text(golden: dict) -> str:
  """The file's JSON, indented, with one line per step of each trace (readable in a diff)."""
  marked = dict(golden, records=[
      dict(r, trace=[f"@trace {i} {j}@" for j in range(len(r["trace"]))])
      for i, r in enumerate(golden["records"])])
  text = json.dumps(marked, indent=1, sort_keys=True)
  return re.sub(r'"@trace (\d+) (\d+)@"', lambda m: json.dumps(
      golden["records"][int(m[1])]["trace"][int(m[2])], sort_keys=True), text) + "\n"


# What a run's bits and scope are.

def scope_of(env: dict, topology_invariant: bool) -> dict:
  """The scope a run's bits hold for: the versions and platform facts a resume compares."""
  keys = identity.PLATFORM_KEYS + (() if topology_invariant
                                   else tuple(identity.TOPOLOGY_DEFAULTS))
  versions, platform = env.get("versions", {}), env.get("platform", {})
  found = {"versions": {k: versions.get(k) for k in identity.VERSION_KEYS},
           "platform": {k: platform.get(k, identity.TOPOLOGY_DEFAULTS.get(k)) for k in keys}}
  found["platform"]["xla_flags"] = environment.bit_flags(found["platform"]["xla_flags"] or "")
  return found


def observe(run: Path, topology_invariant: bool) -> tuple[dict, dict]:
  """(the bits of the run's final checkpoint and trace, the scope they hold for)."""
  run, steps = stored_lib.run_steps(run)
  manifest = stored_lib.read_json(run / str(steps[-1]), "manifest")
  trace = [r for r in metrics.read(run / metrics.TRACE_FILENAME) if r.get("step", 0) <= steps[-1]]
  bits = {"steps": steps[-1], "identity": manifest.get("identity", {}), "trace": trace,
          "leaf_digests": manifest.get("leaf_digests", {}),
          "metrics": manifest.get("metrics", {})}
  return bits, scope_of(manifest.get("environment", {}), topology_invariant)


def _run_config(config: Config, steps: int, output: Path) -> Config:
  return config.replace(output=str(output), progress=False, checkpoint_every=steps,
                        max_to_keep=1, max_steps=steps, strict=False)


def _train(config: Config, steps: int, root: Path, main: str | None, output: Path) -> Path:
  """Trains `steps` steps in a fresh process, compiling into root/cache; RunFailed if it fails."""
  config_file = root / "config.json"
  config_file.write_text(json.dumps(_run_config(config, steps, output).to_dict()))
  way = processes.Way(devices=config.devices if config.devices > 1 else 0)
  done = processes.train_process(processes.command(root / "task.json", config_file, main=main),
                                 processes.process_env(way, root / "cache"))
  if done.returncode:
    last = processes.failure(done).removeprefix("error: ")
    raise RunFailed(f"the golden run failed (exit {done.returncode}): {last}", done.returncode)
  return output


def _output(keep: str | Path | None, root: Path) -> Path:
  """Where the golden run goes: `keep` (which must hold no run yet), else the scratch root."""
  if not keep:
    return root / "run"
  output = Path(keep).expanduser().absolute()
  if output.exists() and (not output.is_dir() or any(output.iterdir())):
    raise ReproError(f"--keep {output} exists and is not an empty directory: pass a new path "
                     f"(the run is kept there for bin/verify and bin/replay)")
  return output


def _train_and_observe(config: Config, task: task_lib.Task, steps: int,
                       keep: str | Path | None) -> tuple[dict, dict]:
  main = processes.main_file(task)
  with processes.scratch("repro-golden-") as root:
    output = _output(keep, root)
    processes.save_task(task, root / "task.json")
    run = _train(config, steps, root, main, output)
    return observe(run, bool(config.micro_shards))


# Recording.

def recorded_config(config: Config) -> dict:
  """The config as a golden file holds it: without the fields a golden run sets itself."""
  return {k: v for k, v in config.to_dict().items() if k not in NOT_RECORDED}


def record(task: task_lib.Task | None = None, config: Config | None = None, *,
           steps: int = DEFAULT_STEPS, out: str | Path = "golden.json",
           keep: str | Path | None = None, log: Callable[[str], None] = print) -> Recorded:
  """Trains `task` (default: config.task) `steps` steps in a fresh process; writes `out`.

  keep: a new directory to keep the run in (default: a temporary one, removed).
  Raises ReproError (one line) on bad input; RunFailed with the run's exit code
  if the run fails. The file is written whole, replacing any file at `out`.
  """
  from repro.runner import resolve
  start = time.perf_counter()
  config = config or Config()
  asked = config.program  # recorded as asked: a change of what 'auto' picks is caught
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
    raise ReproError(f"--steps={steps}: pass a number of steps >= 1")
  target = Path(out).expanduser().absolute()
  if not target.parent.is_dir() or target.is_dir():
    raise ReproError(f"--out {out}: {target if target.is_dir() else target.parent} "
                     f"{'is a directory' if target.is_dir() else 'is not a directory'}: pass "
                     f"a file path in an existing directory")
  config, task = resolve(config, task)
  config = config.replace(program=asked)
  log(f"recording task {task_lib.task_name(task)}: {steps} steps in a fresh process")
  bits, scope = _train_and_observe(config, task, steps, keep)
  golden = {"format": FORMAT, "task": task_lib.task_name(task), "steps": steps,
            "config": recorded_config(config), "records": [{"scopes": [scope], **bits}]}
  write(out, golden)
  return Recorded(str(out), golden["task"], bits["steps"], len(bits["leaf_digests"]), scope,
                  round(time.perf_counter() - start, 1))


# Comparing.

def scope_diffs(recorded: dict, here: dict) -> list[str]:
  """'key old -> new' for each scope field both have that differs (lists: '-x +y')."""
  lines = []
  for section in ("versions", "platform"):
    old_all, new_all = recorded.get(section, {}), here.get(section, {})
    for key in [k for k in old_all if k in new_all]:
      old, new = old_all[key], new_all[key]
      if old == new:
        continue
      if isinstance(old, list) and isinstance(new, list):
        change = [f"-{x}" for x in old if x not in new] + [f"+{x}" for x in new if x not in old]
        lines.append(f"{key} {' '.join(change) or 'reordered'}")
      else:
        lines.append(f"{key} {old!r} -> {new!r}")
  return lines


def _data_differences(want: dict, got: dict) -> list[Difference]:
  old, new = want.get(DATA) or {}, got.get(DATA) or {}
  splits = [s for s in sorted(set(old) | set(new)) if old.get(s) != new.get(s)]
  if not splits:
    return []
  shown = ", ".join(f"{s} {str(old.get(s))[:12]} -> {str(new.get(s))[:12]}" for s in splits)
  return [Difference("data", None, f"the task's data differ before step 1: the fingerprint of "
                     f"the {' and '.join(splits)} split{'s' * (len(splits) > 1)} ({shown})")]


def _trace_difference(want: list[dict], got: list[dict]) -> Difference | None:
  """The first step whose trace differs, and what differs first (data, loss, parameters)."""
  old = {r["step"]: r for r in want if "step" in r}
  new = {r["step"]: r for r in got if "step" in r}
  for step in sorted(set(old) & set(new)):
    a, b = old[step], new[step]
    if step == 0 and a.get("params") != b.get("params"):
      return Difference("parameters", 0, "step 0 (init): the initial parameters differ")
    if a.get("batch") != b.get("batch"):
      return Difference("data", step, f"step {step}: the batch differs first (another data "
                        f"order or batch: fingerprint {a.get('batch')} -> {b.get('batch')})")
    if a.get("loss") != b.get("loss"):
      return Difference("loss", step, f"step {step}: the loss differs first ({a.get('loss')!r} "
                        f"-> {b.get('loss')!r}; the batch's example indices agree: their "
                        f"content, the model or the loss differs)")
    if a.get("params") != b.get("params"):
      return Difference("parameters", step, f"step {step}: the parameters after it differ "
                        f"first (the batch and the loss agree: the gradient or the update "
                        f"differs)")
  if set(old) != set(new):
    return Difference("steps", None, f"the trace covers steps {_span(new)}, the record "
                      f"{_span(old)}")
  return None


def _span(steps: dict) -> str:
  return f"{min(steps)}-{max(steps)}" if steps else "none"


def _leaf_differences(want: dict, got: dict) -> list[str]:
  return [f"{name}" + ("" if name in want and name in got else
                       f" (only in {'the record' if name in want else 'this run'})")
          for name in sorted(set(want) | set(got)) if want.get(name) != got.get(name)]


def differences(want: dict, got: dict) -> tuple[list[Difference], list[str]]:
  """What differs between a record and a run's bits, in the checklist's order; the leaves."""
  found = _data_differences(want["identity"], got["identity"])
  traced = _trace_difference(want["trace"], got["trace"])
  found += [traced] if traced else []
  if want["steps"] != got["steps"] and not (traced and traced.kind == "steps"):
    found.append(Difference("steps", None, f"the run ended at step {got['steps']}, the record "
                            f"at {want['steps']}"))
  leaves = _leaf_differences(want["leaf_digests"], got["leaf_digests"])
  if leaves:
    more = f" (and {len(leaves) - _SHOWN} more)" if len(leaves) > _SHOWN else ""
    found.append(Difference("state", got["steps"], f"{len(leaves)} of "
                            f"{len(want['leaf_digests'])} leaves of the final state differ: "
                            f"{', '.join(leaves[:_SHOWN])}{more}"))
  changed = [f"{k} {want['metrics'].get(k)!r} -> {got['metrics'].get(k)!r}"
             for k in sorted(set(want["metrics"]) | set(got["metrics"]))
             if want["metrics"].get(k) != got["metrics"].get(k)]
  if changed:
    found.append(Difference("metrics", got["steps"], "the final metrics differ: " +
                            "; ".join(changed)))
  return found, [leaf.split(" ")[0] for leaf in leaves]


def _settings(want: dict, got: dict) -> list[str]:
  keys = sorted((set(want) | set(got)) - {DATA})
  return [f"{k} {want.get(k, 'none')!r} -> {got.get(k, 'none')!r}" for k in keys
          if want.get(k) != got.get(k)]


def _nearest(records: list[dict], here: dict) -> tuple[dict, list[str]]:
  """The record whose scope is nearest this one (fewest differing fields), and the diffs."""
  ranked = [(len(d), i, d) for i, record in enumerate(records)
            for d in [scope_diffs(s, here) for s in record["scopes"]]]
  _, i, diffs = min(ranked, key=lambda t: t[:2])
  return records[i], diffs


def compare(golden: dict, bits: dict, here: dict, *, strict: bool = False,
            path: str = "golden.json") -> Report:
  """The verdict on a run's `bits` and scope `here` against a golden file's records."""
  records = golden["records"]
  own = next((r for r in records if any(not scope_diffs(s, here) for s in r["scopes"])), None)
  if own is not None:
    chosen, diffs = own, []
  else:
    equal = [r for r in records if not differences(r, bits)[0]]
    chosen, diffs = _nearest(equal or records, here)
  found, leaves = differences(chosen, bits)
  verdict = EQUAL if not found else (REGRESSION if own is not None else OTHER_SCOPE)
  return Report(path=str(path), task=golden.get("task", ""), steps=golden["steps"],
                verdict=verdict, recorded_here=own is not None, differences=found,
                leaves=leaves, scope_diffs=diffs,
                settings=_settings(chosen["identity"], bits["identity"]), strict=strict,
                bits=bits, scope=here)


def with_scope_added(golden: dict, report: Report) -> tuple[dict, str]:
  """The golden file with this run's scope added: beside the record whose bits it has, or
  as a record of its own. '' (nothing to add) where the scope is the file's already."""
  if report.recorded_here:
    return golden, ""
  golden = json.loads(json.dumps(golden))
  for record in golden["records"]:
    if not differences(record, report.bits)[0]:
      record["scopes"].append(report.scope)
      return golden, "scope"
  golden["records"].append({"scopes": [report.scope], **report.bits})
  return golden, "record"


# Checking.

def _task_for(config: Config, task: task_lib.Task | None, options: dict | None) -> Config:
  """The config to rerun: the record's, with `options` (location options only) replaced."""
  if options:
    recorded = task or task_lib.recorded(config)
    wrong = sorted(set(options) - set(recorded.location_options))
    if wrong:
      where = ", ".join(recorded.location_options) or "none"
      raise ReproError(f"--task.{wrong[0]}: a check reruns the record's task options; only "
                       f"those that say where files are ({where}) may be given: record again "
                       f"to change {', '.join(wrong)}")
    config = config.replace(task_options={**config.task_options, **options})
  return config


def _rebuilt(config: Config, task: task_lib.Task | None) -> task_lib.Task:
  if task is not None:
    return task_lib.with_options(task, {k: v for k, v in config.task_options.items()
                                        if k in task.options()})
  if config.task.startswith("__main__:"):
    raise ReproError(f"the record's task {config.task} was defined in a script: pass the task "
                     f"to repro.golden.check(path, task=...)")
  return task_lib.recorded(config)


def check(path: str | Path, task: task_lib.Task | None = None, *, strict: bool = False,
          add: bool = False, task_options: dict | None = None,
          keep: str | Path | None = None, log: Callable[[str], None] = print) -> Report:
  """Reruns the golden file's run in a fresh process and compares its bits (see the module doc).

  task: the task, where the record's spec cannot rebuild it (a class of a
  script, a task holding arrays); task_options: the record's location options
  replaced (e.g. {"data_dir": ...}); strict: differing bits on another scope
  fail too; add: record this scope in the file (beside the equal record, or
  with its own bits); keep: a new directory to keep the rerun in.
  """
  start = time.perf_counter()
  golden = load(path)
  config = _task_for(config_of(golden), task, task_options)
  task = _rebuilt(config, task)
  log(f"checking {path}: task {golden.get('task')}, {golden['steps']} steps in a fresh process")
  try:
    bits, here = _train_and_observe(config, task, golden["steps"], keep)
  except RunFailed as err:
    if err.exit_code in PASSED_ON:
      raise
    return _failed_run(golden, str(path), strict, str(err), time.perf_counter() - start)
  report = compare(golden, bits, here, strict=strict, path=str(path))
  report.kept = str(keep) if keep else ""
  if add:
    golden, report.added = with_scope_added(golden, report)
    if report.added:
      write(path, golden)
  report.seconds = round(time.perf_counter() - start, 1)
  return report


def _failed_run(golden: dict, path: str, strict: bool, line: str, seconds: float) -> Report:
  return Report(path=path, task=golden.get("task", ""), steps=golden["steps"],
                verdict=REGRESSION, recorded_here=True,
                differences=[Difference("run", None, f"the rerun failed where the record's run "
                                        f"did not: {line}")], leaves=[], scope_diffs=[],
                settings=[], strict=strict, seconds=round(seconds, 1))


# Reporting.

def describe_scope(scope: dict) -> str:
  """A short description of a scope: 'x86_64 cpu (18 CPU features), jax 0.10.2, pool 2'."""
  platform, versions = scope.get("platform", {}), scope.get("versions", {})
  features = platform.get("cpu_features") or []
  return (f"{platform.get('machine')} {platform.get('backend')} ({len(features)} CPU features), "
          f"jax {versions.get('jax')}, XLA:CPU pool {platform.get('xla_cpu_pool')}")


def format_report(report: Report) -> str:
  """What bin/golden check prints: the verdict, then what differs and what to do."""
  lines = [f"golden check of {report.path}: task {report.task}, {report.steps} steps in a fresh "
           f"process, {report.seconds:.0f} s"]
  if report.verdict == EQUAL and report.recorded_here:
    lines.append(f"equal: every bit agrees with the record for this platform class "
                 f"({len(report.bits.get('leaf_digests', {}))} leaves; the losses and "
                 f"fingerprints of {len(report.bits.get('trace', [])) - 1} steps) (exit 0)")
  elif report.verdict == EQUAL:
    lines.append(f"equal: the record holds here too: this platform class is not the file's "
                 f"({'; '.join(report.scope_diffs)}) and every bit agrees (exit 0)")
  elif report.verdict == REGRESSION:
    lines.append("REGRESSION: the bits differ from the record for this platform class "
                 "(exit 1)")
  else:
    lines.append(f"OTHER PLATFORM: the bits differ, on a platform class or environment the file "
                 f"holds no record for (exit {report.exit_code}"
                 f"{'' if report.strict else '; --strict makes it 1'})")
    lines.append(f"  scope: {'; '.join(report.scope_diffs)}")
  lines += [f"  {d.line()}" for d in report.differences]
  if report.settings and report.verdict != EQUAL:
    lines.append(f"  settings that decide the bits differ too: {'; '.join(report.settings)}")
  lines += _advice(report)
  return "\n".join(lines)


def _advice(report: Report) -> list[str]:
  if report.added == "scope":
    return [f"added this platform class to {report.path}, beside the record it agrees with"]
  if report.added == "record":
    return [f"added this platform class's own bits to {report.path}, as a record of their own"]
  if report.verdict == EQUAL:
    return [] if report.recorded_here else ["  (--add records this platform class in the file)"]
  step = next((d.step for d in report.differences if d.step is not None), None)
  run = report.kept or "DIR"
  # Step 0 is the init: replaying step 1 shows the parameters before it (--dump).
  look = (f"bin/replay {run} --step={max(step, 1)}" if step is not None else "bin/verify") + (
      f" (the rerun is kept in {run})" if report.kept else " (rerun with --keep=DIR)")
  lines = [f"  a deliberate change: record again (bin/golden record ...); an accident: look "
           f"inside with {look}; docs/golden.md"]
  if report.verdict == OTHER_SCOPE:
    lines.append("  to guard this platform class with its own bits: --add")
  return lines
