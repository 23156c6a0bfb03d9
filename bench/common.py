"""What every benchmark measures the same way, for any repro.Task.

measure_ours: repro's chunk program over the train split, as run() builds
it (one host sync per chunk). measure_loop: the source
article's design, a per-step jitted step over host batches in the same order,
with the loss read back every step for a progress bar. best_of: alternating
rounds, the fastest of each contender kept, so a noisy neighbour slows one
measurement rather than one contender.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

# XLA's backend settings as this process was started, before `import repro` sets
# its own (repro.machine.backend): each fresh measurement starts from them, as a user's
# process would (bench/own_models.py's plain loops keep them).
STARTED_WITH = {name: os.environ.get(name) for name in ("XLA_FLAGS", "PJRT_NPROC")}

import jax
import numpy as np
from flax import nnx

from repro import Config, runner
from repro.machine import parallel
from repro.train import programs
from repro.train import rng
from repro.data import shuffle
from repro.train import plan as plan_lib
from repro.data import splits as splits_lib
from repro import task as task_lib
from repro.data.source import Arrays, Source
from repro.task import Splits, Task, unpack_loss


def timed(fn: Callable, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def measure_ours(task: Task, train_split, batch: int, chunk_steps: int = 100,
                 devices: int = 1, micro_shards: int = 0, steps: int | None = None,
                 host_fed: bool = False, program: str = "auto") -> dict:
  """One epoch (or `steps` steps) of run()'s chunks, after a first, compiling chunk.

  The chunk program is the one run() builds (repro.train.programs; 'auto' resolved
  as run() resolves it), over the device-resident split or, with host_fed,
  fed from the host (repro.data.feed.HostFeed, one chunk prefetched). One host
  sync per chunk, as run() does. train_split: a dict of arrays or a
  repro.data.source.Source.
  """
  source = train_split if isinstance(train_split, Source) else Arrays(train_split)
  mesh = parallel.make_mesh(devices, micro_shards, batch)
  config = Config(batch_size=batch, chunk_steps=chunk_steps, micro_shards=micro_shards,
                  program=program, data_path="host" if host_fed else "device", epochs=10**4)
  config, task = runner.resolve(config, task)
  prepared = splits_lib.prepare(Splits(train=source), task_lib.task_name(task), 0, batch)
  plan = plan_lib.make(config, task, Path("/nonexistent"), prepared, mesh)
  chunk = programs.PROGRAMS[config.program](plan)
  steps = steps or shuffle.steps_per_epoch(len(source), batch)
  compile_s, (state, _) = timed(chunk, plan.built.state, 0, chunk_steps)
  start, step = time.perf_counter(), chunk_steps
  while step < chunk_steps + steps:
    stop = min(step + chunk_steps, chunk_steps + steps)
    state, trace = chunk(state, step, stop - step)
    parallel.to_host_tree(trace["loss"])  # the one host sync per chunk, as run() does
    step = stop
  epoch_s = time.perf_counter() - start
  chunk.close()
  return {"epoch_s": epoch_s, "steps": steps, "step_ms": 1000 * epoch_s / steps,
          "program": config.program, "compile_and_first_chunk_s": compile_s, "state": state,
          "graphdef": plan.built.graphdef}


def tutorial_step(task: Task):
  """(model, optimizer, train_step): the Flax tutorial's nnx.Optimizer and @nnx.jit step."""
  model = task.model(rng.init_rngs(rng.streams(0)))
  optimizer = nnx.Optimizer(model, task.optimizer(1e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, batch_arrays):
    loss_of = lambda model: unpack_loss(task.loss(model, batch_arrays))[0]
    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss

  model.train()
  return model, optimizer, train_step


def measure_loop(task: Task, train_split: dict, batch: int) -> dict:
  """The article's loop: batches gathered on the host, one jitted step per batch."""
  keys = rng.streams(0)
  model, optimizer, train_step = tutorial_step(task)
  n = len(next(iter(train_split.values())))
  spe = shuffle.steps_per_epoch(n, batch)
  order = np.asarray(shuffle.epoch_permutation(keys["shuffle"], 0, n))
  take = lambda idx: {k: v[idx] for k, v in train_split.items()}
  compile_s, _ = timed(train_step, model, optimizer, take(order[:batch]))
  start = time.perf_counter()
  for i in range(spe):
    loss = train_step(model, optimizer, take(order[i * batch:(i + 1) * batch]))
    _ = f"loss: {float(loss):.3f}"  # the progress bar's per-step sync
  epoch_s = time.perf_counter() - start
  return {"epoch_s": epoch_s, "steps": spe, "step_ms": 1000 * epoch_s / spe,
          "compile_s": compile_s}


def peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM), in MiB.

  Not ru_maxrss: a child started by vfork and exec inherits its parent's
  high-water mark there, so it reports the parent's peak.
  """
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def best_of(contenders: dict[str, Callable[[], dict]], rounds: int) -> dict[str, dict]:
  """Runs the contenders alternately `rounds` times; keeps each one's fastest epoch."""
  runs = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, measure in contenders.items():
      runs[name].append(measure())
  for name, measured in runs.items():
    print(f"{name}: epoch seconds " + ", ".join(f"{r['epoch_s']:.2f}" for r in measured),
          flush=True)
  return {name: min(measured, key=lambda r: r["epoch_s"]) for name, measured in runs.items()}


def public(result: dict) -> dict:
  """A measurement without its state and graphdef (for the JSON report)."""
  return {k: v for k, v in result.items() if k not in ("state", "graphdef")}


def write_report(report: dict, out: str, **environment_extra) -> None:
  """Prints the report with this machine's environment added, and writes it to `out`."""
  import json
  import platform
  from repro.machine import environment
  report = {**report, "environment": {
      **environment.versions(), **environment.cpu_info(), "python": platform.python_version(),
      **environment_extra, "date": time.strftime("%Y-%m-%d")}}
  text = json.dumps(report, indent=2, default=float)
  print(text)
  Path(out).parent.mkdir(parents=True, exist_ok=True)
  Path(out).write_text(text + "\n")
  print(f"wrote {out}")


def licences_file() -> Path:
  """Debian's licence texts, concatenated into a temporary file: the charlm benchmarks' text."""
  import tempfile
  licences = Path(tempfile.mkdtemp()) / "licences.txt"
  texts = [p.read_text(encoding="utf-8", errors="replace")
           for p in sorted(Path("/usr/share/common-licenses").iterdir()) if p.is_file()]
  licences.write_text("\n".join(texts), encoding="utf-8")
  return licences


def in_fresh_process(script: str, *words: str) -> dict:
  """Runs `python script *words` (a benchmark's --one measurement) and returns the JSON line
  it prints last; exits with its stderr's tail if it fails."""
  import json
  import subprocess
  import sys
  env = {**os.environ, **STARTED_WITH}
  done = subprocess.run([sys.executable, script, *words], capture_output=True, text=True,
                        env={k: v for k, v in env.items() if v is not None})
  if done.returncode != 0:
    raise SystemExit(f"{' '.join(words)} failed:\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])
