"""What every benchmark measures the same way, for any repro.Task.

measure_ours: repro's scan chunks over the device-resident train split, as
run() builds them (one host sync per chunk). measure_loop: the source
article's design, a per-step jitted step over host batches in the same order,
with the loss read back every step for a progress bar. best_of: alternating
rounds, the fastest of each contender kept, so a noisy neighbour slows one
measurement rather than one contender.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx

from repro import Config, parallel, rng, shuffle
from repro import state as state_lib
from repro import core
from repro.feed import HostFeed
from repro.source import Arrays, Source
from repro.task import Task, unpack_loss


def timed(fn: Callable, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def measure_ours(task: Task, train_split, batch: int, chunk_steps: int = 100,
                 devices: int = 1, micro_shards: int = 0, steps: int | None = None,
                 host_fed: bool = False) -> dict:
  """One epoch (or `steps` steps) of run()'s chunks, after a first, compiling chunk.

  train_split: a dict of arrays or a repro.source.Source. host_fed: the chunks
  are fed from the host (repro.feed.HostFeed, one chunk prefetched), as run()
  does with --data_path=host; otherwise the split is put on the devices.
  """
  keys = rng.streams(0)
  source = train_split if isinstance(train_split, Source) else Arrays(train_split)
  n = len(source)
  mesh = parallel.make_mesh(devices, micro_shards, batch)
  built = state_lib.build(task, Config(batch_size=batch), keys, 10**6, mesh)
  chunk = core.make_train_chunk(built.graphdef, task, chunk_steps=chunk_steps, num_examples=n,
                                 batch_size=batch, mesh=mesh, micro_shards=micro_shards,
                                 host_fed=host_fed)
  inputs = _inputs(source, keys["shuffle"], batch, chunk_steps, mesh, host_fed)
  keys = parallel.replicate(keys, mesh)
  steps = steps or shuffle.steps_per_epoch(n, batch)
  compile_s, (state, _) = timed(chunk, built.state, inputs(0, chunk_steps), keys, np.int32(0),
                                np.int32(chunk_steps))
  start, step = time.perf_counter(), chunk_steps
  while step < chunk_steps + steps:
    stop = min(step + chunk_steps, chunk_steps + steps)
    state, trace = chunk(state, inputs(step, stop), keys, np.int32(step), np.int32(stop - step))
    np.asarray(trace["loss"])  # the one host sync per chunk, as run() does
    step = stop
  epoch_s = time.perf_counter() - start
  return {"epoch_s": epoch_s, "steps": steps, "step_ms": 1000 * epoch_s / steps,
          "compile_and_first_chunk_s": compile_s, "state": state, "graphdef": built.graphdef}


def _inputs(source: Source, shuffle_key, batch: int, chunk_steps: int, mesh, host_fed: bool):
  """inputs(step, next step) -> the chunk's inputs, as run() gives them on each path."""
  if not host_fed:
    resident = parallel.replicate(source.gather(np.arange(len(source))), mesh)
    return lambda step, following: resident
  feed = HostFeed(source, shuffle_key, batch, chunk_steps, mesh)

  def inputs(step, following):
    got = feed.get(step)
    feed.prefetch(following)  # gathered while the devices compute this chunk
    return got

  return inputs


def measure_loop(task: Task, train_split: dict, batch: int) -> dict:
  """The article's loop: batches gathered on the host, one jitted step per batch."""
  keys = rng.streams(0)
  model = task.model(rng.init_rngs(keys))
  optimizer = nnx.Optimizer(model, task.optimizer(1e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, batch_arrays):
    loss_of = lambda model: unpack_loss(task.loss(model, batch_arrays))[0]
    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss

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
  from repro import environment
  report = {**report, "environment": {
      **environment.versions(), **environment.cpu_info(), "python": platform.python_version(),
      **environment_extra, "date": time.strftime("%Y-%m-%d")}}
  text = json.dumps(report, indent=2, default=float)
  print(text)
  Path(out).parent.mkdir(parents=True, exist_ok=True)
  Path(out).write_text(text + "\n")
  print(f"wrote {out}")
