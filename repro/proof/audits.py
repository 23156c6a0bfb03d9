"""repro.audit / bin/audit: do a finished run's checkpoints follow from one another, bit for bit?

For each link between two consecutive kept checkpoints a -> b (or a sample of them, by a rule
fixed by the run), a fresh process restores a copy of step a and trains to b with the run's
recorded config and task; its state, cursor and metrics at b, and the metrics.jsonl and
trace.jsonl lines of the steps in between, must equal what the run stored. --from_start adds
the link from the seed (step 0) to the first kept checkpoint. Every kept step's checksums are
verified and its identity compared with the others'. The audit never writes into the run:
each link trains in a temporary directory, and the report goes to <run>.audit.json (beside
the run) or --out.

The bits are promised per platform class (the platform facts and package versions a
checkpoint records): the report names the class the audit ran on beside the run's, and a link
that differs on another class is reported as such, not as a failure.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from repro.proof import checker
from repro.proof import processes
from repro.machine import environment
from repro.train import identity as identity_lib
from repro import metrics
from repro.checkpoints import stored as stored_lib
from repro import task as task_lib
from repro.proof import verify
from repro.config import Config
from repro.errors import ReproError

EXIT_EQUAL, EXIT_DIFFERS = 0, 1
RULE = "{n} of the {total} links, evenly spaced from the first to the last (fixed by the run)"


@dataclasses.dataclass(frozen=True)
class Link:
  """One audited link: training from `start` (0: the seed) reproduced checkpoint `end`, or not."""

  start: int
  end: int
  equal: bool | None  # None: its run failed
  detail: str = ""  # where it differs first, or how its run failed
  cause: str = ""


@dataclasses.dataclass(frozen=True)
class Audit:
  """What audit found (audit.json holds it, to_dict)."""

  run: str
  steps: list[int]
  rule: str
  links: list[Link]
  problems: list[str]  # checksums or identities that do not hold
  scope: dict  # the platform class and versions of the run and of the audit
  seconds: float

  @property
  def same_class(self) -> bool:
    return not self.scope["differences"]

  @property
  def exit_code(self) -> int:
    failed = [link for link in self.links if link.equal is None]
    differ = [link for link in self.links if link.equal is False and self.same_class]
    return EXIT_DIFFERS if self.problems or failed or differ else EXIT_EQUAL

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "same_class": self.same_class,
            "exit_code": self.exit_code}


def choose(steps: list[int], links: int | None, from_start: bool) -> tuple[list, str]:
  """The links to audit, and the rule that chose them (all, or `links` evenly spaced)."""
  pairs = ([(0, steps[0])] if from_start else []) + list(zip(steps, steps[1:]))
  if not pairs:
    raise ReproError(f"the run has only one kept checkpoint (step {steps[0]}): nothing links "
                     f"it to another; pass --from_start to audit it from the seed")
  if links is not None and links < 1:
    raise ReproError(f"--links={links}: pass all or a positive number")
  if links is None or links >= len(pairs):
    return pairs, f"all {len(pairs)} links"
  picked = sorted({round(i * (len(pairs) - 1) / max(links - 1, 1)) for i in range(links)})
  return [pairs[i] for i in picked], RULE.format(n=len(picked), total=len(pairs))


def _checks(run: Path, steps: list[int]) -> tuple[list[str], dict]:
  """Problems with the kept steps' checksums and identities; the newest manifest."""
  problems, first = [], None
  for step in steps:
    found = stored_lib.find(run, step)
    try:
      stored_lib.read_tree(found)
    except ReproError as err:
      problems.append(f"step {step}: {str(err).splitlines()[0]}")
    identity = found.meta.get("identity")
    if first is None:
      first = (step, identity)
    elif identity != first[1]:
      keys = sorted(k for k in set(identity or {}) | set(first[1] or {})
                    if (identity or {}).get(k) != (first[1] or {}).get(k))
      problems.append(f"step {step}: its identity differs from step {first[0]}'s "
                      f"({', '.join(keys)})")
  return problems + _source_problems(found), found.meta


def _source_problems(newest: stored_lib.Stored) -> list[str]:
  """A fine-tune is retrained from its --init_from source: is it still there, unchanged?"""
  from repro.proof import lineage
  if not newest.lineage:
    return []
  source = lineage.check(newest.path).rows[0]
  if source.status == lineage.INTACT:
    return []
  return [f"its --init_from source {source.entry['path']} is {source.status} ({source.why}): "
          f"the fine-tune cannot be retrained without it (bin/verify --lineage)"]


def _scope(manifest: dict) -> dict:
  """The run's platform class and versions beside this machine's, and what differs."""
  recorded = manifest.get("environment", {})
  devices = recorded.get("platform", {}).get("devices_used", 1)
  now = environment.describe(devices_used=devices)
  invariant = bool(manifest.get("config", {}).get("micro_shards"))
  keys = identity_lib.PLATFORM_KEYS
  pick = lambda env: {"platform": {k: env.get("platform", {}).get(k) for k in keys},
                      "versions": env.get("versions", {})}
  return {"run": pick(recorded), "audit": pick(now),
          "differences": identity_lib.environment_diffs(recorded, now, invariant),
          "compilation_cache": str(processes.shared_cache() or "fresh")}


def audit(run: str | Path, links: int | None = None, from_start: bool = False, jobs: int = 1,
          out: str | Path | None = None, task: task_lib.Task | None = None,
          log: Callable[[str], None] = print) -> Audit:
  """Audits `run` (see the module doc); writes the report to `out` (default <run>.audit.json).

  task: the run's task, where it cannot be rebuilt from its recorded spec and options.
  ReproError (one line) for a bad run, bad arguments or a task that cannot be rebuilt.
  """
  start_time = time.perf_counter()
  run, steps = stored_lib.run_steps(run)
  out = Path(out).expanduser().absolute() if out else run.parent / f"{run.name}.audit.json"
  if run in out.parents:
    raise ReproError(f"--out {out} is inside the audited run: pass a path outside it")
  processes.check_shared_cache(run)
  problems, manifest = _checks(run, steps)
  pairs, rule = choose(steps, links, from_start)
  config = Config.from_dict(manifest["config"])
  if task is None:
    task = task_lib.recorded(config)
  log(f"auditing {run}: {rule} ({', '.join(f'{a} -> {b}' for a, b in pairs)})")
  with processes.scratch("repro-audit-") as root:
    found = _train_links(run, pairs, task, config, root, jobs)
  result = Audit(run=str(run), steps=steps, rule=rule, links=found, problems=problems,
                 scope=_scope(manifest), seconds=round(time.perf_counter() - start_time, 1))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
  log(f"wrote {out}")
  return result


def _train_links(run: Path, pairs: list, task: task_lib.Task, config: Config, root: Path,
                 jobs: int) -> list[Link]:
  """Each link trained in a fresh process, `jobs` at a time, and compared."""
  from tqdm import tqdm
  callbacks = checker.host_callbacks(task, config, checker.train_features(task, config))
  processes.save_task(task, root / "task.json")
  main = processes.main_file(task)
  with concurrent.futures.ThreadPoolExecutor(max(jobs, 1)) as pool:
    futures = [pool.submit(_one_link, run, a, b, root, main, callbacks) for a, b in pairs]
    bar = tqdm(total=len(futures), desc="audit links", unit="link", disable=not config.progress)
    for _ in concurrent.futures.as_completed(futures):
      bar.update(1)
    bar.close()
  return [future.result() for future in futures]


def devices_used(step: stored_lib.Stored) -> int:
  """The device count the run trained that step on (its recorded platform)."""
  return step.meta.get("environment", {}).get("platform", {}).get("devices_used", 1)


def train_fresh(config: Config, root: Path, name: str, devices: int, main: str | None) -> str:
  """Trains `config` (the task in root/task.json, processes.save_task) in a fresh process on
  `devices` devices, as the run did; '' or the failure's one line."""
  config_file = root / f"{name}.json"
  config_file.write_text(json.dumps(config.replace(progress=False).to_dict()))
  way = processes.Way(devices=devices if devices > 1 else 0)
  done = processes.train_process(processes.command(root / "task.json", config_file, main=main),
                                 processes.process_env(way, processes.proof_cache(root)))
  if done.returncode == 0:
    return ""
  return f"its run failed (exit {done.returncode}): {processes.failure(done)}"


def _one_link(run: Path, a: int, b: int, root: Path, main: str | None,
              callbacks: list[str]) -> Link:
  """Trains a copy of step a (or the seed) to step b in a fresh process; compares with b."""
  output = root / f"link-{a}-{b}"
  output.mkdir()
  if a:
    shutil.copytree(run / str(a), output / str(a))
  target = stored_lib.find(run, b)
  config = Config.from_dict(target.config).replace(output=str(output), max_steps=b)
  failed = train_fresh(config, root, output.name, devices_used(target), main)
  if failed:
    return Link(a, b, None, failed)
  return _compare(run, output, a, b, callbacks)


def _lines(run: Path, name: str, a: int, b: int, test: bool) -> dict[int, dict]:
  """{step: its merged lines} of a jsonl file for the steps in (a, b] (test metrics only if
  `test`: a run stopped at b by the audit tests there, where the run may not have)."""
  merged = {}
  for record in metrics.read(run / name):
    if a < record.get("step", -1) <= b:
      kept = {k: v for k, v in record.items() if test or not k.startswith(metrics.TEST)}
      merged.setdefault(record["step"], {}).update(kept)
  return merged


def _compare(run: Path, output: Path, a: int, b: int, callbacks: list[str]) -> Link:
  c = verify.compare(output / str(b), run / str(b))
  test = any(k.startswith(metrics.TEST) for k in verify.manifest_of(run / str(b))["metrics"])
  lines = [name for name in (metrics.FILENAME, metrics.TRACE_FILENAME)
           if _lines(output, name, a, b, test) != _lines(run, name, a, b, test)]
  if c.identical and not lines and c.divergence is None:
    return Link(a, b, True)
  return Link(a, b, False, _where(c, lines), _cause(c, a, b, callbacks))


def _where(c: verify.Comparison, lines: list[str]) -> str:
  parts = []
  if c.divergence:
    parts.append(f"first at step {c.divergence.step} ({c.divergence.what})")
  if c.differing:
    parts.append(f"{len(c.differing)} of {c.leaves} leaves differ, first {c.differing[0].name}")
  parts += [f"{what} differs" for what, items in (("cursor", c.cursor), ("metrics", c.metrics))
            if items]
  parts += [f"{name} differs" for name in lines]
  return "; ".join(parts)


def _cause(c: verify.Comparison, a: int, b: int, callbacks: list[str]) -> str:
  if callbacks:
    return (f"a host callback in the model or loss ({', '.join(callbacks)}): its value is not "
            f"a function of the step; compute it in JAX, or pass it in the batch")
  if c.divergence is not None and c.divergence.step == 0:
    return ("Python, NumPy or time-based randomness in the task: trained from the seed in a "
            "fresh process, the initial parameters differ from the run's; draw randomness only "
            "from the nnx.Rngs that model(rngs) receives")
  if c.divergence is None and c.differing:
    return (f"the checkpoint of step {b} does not follow from step {a}: every step's trace "
            f"agrees, so its state was replaced or altered after training wrote it")
  if c.divergence is not None and c.divergence.step == a + 1 and c.divergence.what != "data":
    return (f"the checkpoint of step {a} is not the state the run trained on from step {a} "
            f"(replaced or altered), or " + checker.CALL_COUNTER)
  return checker.CALL_COUNTER + "; or a nondeterministic op (bin/check tells which)"


def report(result: Audit) -> str:
  """The lines bin/audit prints."""
  lines = [f"audit of {result.run}: {result.rule}, kept steps {', '.join(map(str, result.steps))}"]
  lines += [f"  problem: {problem}" for problem in result.problems] or [
      f"  checksums intact and the identity the same at all {len(result.steps)} kept steps"]
  width = max(len(f"{link.start} -> {link.end}") for link in result.links)
  for link in result.links:
    name = f"{link.start} -> {link.end}"
    verdict = {True: "equal", None: "FAILED", False: "DIFFERS"}[link.equal]
    lines.append(f"  {name:<{width}}  {verdict}" + (f": {link.detail}" if link.detail else ""))
    if link.cause:
      lines.append(f"  {'':<{width}}  probable cause: {link.cause}")
  scope = result.scope
  if result.same_class:
    lines.append("scope: the run's platform class and package versions (the bits are promised "
                 "per class)")
  else:
    lines.append("scope: ANOTHER platform class than the run's (" +
                 "; ".join(scope["differences"]) + "): a differing link is not a failure here")
  if scope.get("compilation_cache", "fresh") != "fresh":
    lines.append(f"compiled in {scope['compilation_cache']} ({processes.PROOF_CACHE}), "
                 f"reusing any executable earlier proofs compiled there")
  return "\n".join(lines)
