"""Speed of repro on the reference job, measured side by side in one run.

    python bench/bench.py [--out=bench/results/bench.json] [--epochs=1]

Prints and writes as JSON, all on the same data (real Fashion-MNIST, batch 64):
  (a) ours: one epoch of the chunk program run() picks (--program=auto: the
      per-step program on CPU, for the convolutions) over the device-resident
      data set, and one chunk of the scan (--program=scan; 10x slower here);
  (b) loop: the source article's design, a per-step jitted Python loop over
      host batches with the loss read back every step for the progress bar,
      with the same model (the article's, nnx.Conv);
  (c) bound: the model's forward+backward FLOPs per step (as XLA counts them)
      at this CPU's measured matmul FLOP/s;
and compile time, start-up to the first step (a fresh process), checkpoint
blocking and total save time, restore time, and the wall time and peak RSS of
a one-epoch `bin/train`. Ratios: loop/ours (speed-up, target >= 2) and
ours/bound (target <= 2). Timings on 2 shared cores are noisy: compare the
ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from common import (best_of, measure_loop, measure_ours, public, timed,  # noqa: E402
                    write_report)
from repro.checkpoints import store as checkpoint
from repro.train import core
from repro.train import rng  # noqa: E402
from repro.tasks import cnn  # noqa: E402

BATCH = 64


def measure_bound(graphdef, state, train_split) -> dict:
  """FLOPs of one step as XLA counts them, at the measured matmul FLOP/s of this CPU."""
  batch = {k: jnp.asarray(v[:BATCH]) for k, v in train_split.items()}
  one = core.make_step(graphdef, cnn.CNN(), core.Local(BATCH), rng.streams(0))
  examples = lambda b: lambda start, size: {k: jax.lax.dynamic_slice_in_dim(v, start, size)
                                            for k, v in b.items()}
  step = jax.jit(lambda s, b: one(s, examples(b), 0, 1))
  flops = float(step.lower(state, batch).compile().cost_analysis()["flops"])
  size = 2048
  a = jnp.asarray(np.ones((size, size), np.float32))
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(a))
  best = min(timed(matmul, a)[0] for _ in range(10))
  flops_per_s = 2 * size ** 3 / best
  per_example = (28 * 28 * 9 * 32 + 14 * 14 * 288 * 64 + 3136 * 256 + 256 * 10) * 2
  return {"step_flops_xla": flops, "step_flops_analytic_3x_forward": 3 * per_example * BATCH,
          "matmul_flops_per_s": flops_per_s, "step_ms": 1000 * flops / flops_per_s}


def measure_checkpoint(state) -> dict:
  pure = nnx.to_pure_dict(state)
  with tempfile.TemporaryDirectory() as tmp:
    store = checkpoint.Store(Path(tmp), max_to_keep=3)
    blocking, total = [], []
    for step in (1, 2, 3):
      start = time.perf_counter()
      store.save(step, pure, {"step": step}, {"step": step})
      blocking.append(time.perf_counter() - start)
      store.wait()
      total.append(time.perf_counter() - start)
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)
    start = time.perf_counter()
    restored = store.restore(3, template)
    jax.block_until_ready(restored.state)
    restore_s = time.perf_counter() - start
    store.close()
  return {"save_blocking_ms": 1000 * float(np.median(blocking)),
          "save_total_ms": 1000 * float(np.median(total)), "restore_ms": 1000 * restore_s}


STARTUP = """
import json, sys, time; t0 = time.perf_counter()
import jax, numpy as np
from repro import Config
from repro.train import core
from repro.train import rng
from repro.train import state
from repro.tasks.cnn import CNN
t_import = time.perf_counter()
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
task = CNN(); split = task.data().train
t_data = time.perf_counter()
keys = rng.streams(0); built = state.build(task, Config(), keys, 2811, None)
step = core.make_train_step(built.graphdef, task, num_examples=60000, batch_size=64)
perm = jax.device_put(np.arange(60000, dtype=np.int32))
s, t = step(built.state, (jax.device_put(split), perm), keys, np.int32(0), np.int32(0))
np.asarray(t["loss"])
t_first = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "data_s": t_data - t_import,
                  "compile_and_first_step_s": t_first - t_data, "total_s": t_first - t0}))
"""


def measure_startup() -> dict:
  """A fresh process to its first step: cold, then warm (persistent compilation cache)."""
  report = {}
  with tempfile.TemporaryDirectory() as cache:
    for label in ("cold", "warm"):
      start = time.perf_counter()
      out = subprocess.run([sys.executable, "-c", STARTUP, cache], capture_output=True,
                           text=True, cwd=ROOT, check=True)
      phases = json.loads(out.stdout.strip().splitlines()[-1])
      phases["process_to_first_step_s"] = time.perf_counter() - start
      report[label] = phases
  return report


BINARY = """
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
try:
  runpy.run_path(sys.argv[0], run_name="__main__")
finally:
  hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
  print("VmHWM_kib", int(hwm.split()[1]), file=sys.stderr)
"""


def measure_binary(epochs: int) -> dict:
  """bin/train's wall time and its own peak RSS (VmHWM read in its process at exit).

  Not ru_maxrss of a child: one started by vfork reports its parent's peak.
  """
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BINARY, str(ROOT / "bin" / "train"),
                           f"--epochs={epochs}", f"--output={tmp}/run", "--noprogress"],
                          check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
  peak_kib = int(done.stderr.split("VmHWM_kib")[-1].split()[0])
  return {"epochs": epochs, "wall_s": wall, "peak_rss_mib": peak_kib / 1024,
          "last_line": done.stdout.strip().splitlines()[-1]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench.json"))
  parser.add_argument("--chunk_steps", type=int, default=100)
  parser.add_argument("--epochs", type=int, default=1, help="epochs of the bin/train run")
  parser.add_argument("--repeats", type=int, default=2,
                      help="alternating measurements of each contender (the best is kept)")
  args = parser.parse_args()
  train_split = cnn.CNN().data().train
  print("measuring: ours (auto), ours (scan), loop, bound, checkpoints, start-up, bin/train",
        flush=True)
  best = best_of({
      "ours": lambda: measure_ours(cnn.CNN(), train_split, BATCH, args.chunk_steps),
      "ours_scan": lambda: measure_ours(cnn.CNN(), train_split, BATCH, args.chunk_steps,
                                        program="scan", steps=args.chunk_steps),
      "loop": lambda: measure_loop(cnn.CNN(), train_split, BATCH),
  }, args.repeats)
  ours, ours_scan, loop = best["ours"], best["ours_scan"], best["loop"]
  bound = measure_bound(ours["graphdef"], ours["state"], train_split)
  ckpt = measure_checkpoint(ours["state"])
  startup = measure_startup()
  binary = measure_binary(args.epochs)
  report = {
      "ours": public(ours), "ours_scan": public(ours_scan),
      "loop": loop, "bound": bound,
      "checkpoint": ckpt, "startup": startup, "bin_train": binary,
      "ratios": {
          "loop_over_ours": loop["epoch_s"] / ours["epoch_s"],
          "scan_over_ours": ours_scan["step_ms"] / ours["step_ms"],
          "ours_over_bound": ours["step_ms"] / bound["step_ms"],
          "checkpoint_stall_fraction": ckpt["save_blocking_ms"] / (500 * ours["step_ms"]),
      },
  }
  write_report(report, args.out, chunk_steps=args.chunk_steps)


if __name__ == "__main__":
  main()
