"""Speed of repro's scan-driven training, measured side by side in one run.

    python bench/bench.py [--out=bench/results/bench.json] [--epochs=1]

Prints and writes as JSON, all on the same data (real Fashion-MNIST, batch 64):
  (a) ours: one epoch of scan chunks over the device-resident data set;
  (b) loop: the source article's design, a per-step jitted Python loop over
      host batches with the loss read back every step for the progress bar,
      with our model, and with the article's nnx.Conv model;
  (c) bound: the model's forward+backward FLOPs per step (as XLA counts them)
      at this CPU's measured matmul FLOP/s;
and compile time, start-up to the first step (a fresh process), checkpoint
blocking and total save time, restore time, and the wall time and peak RSS of
a one-epoch `bin/train`. Ratios: loop/ours (speed-up, target >= 2) and
ours/bound (target <= 1.5). Timings on 2 shared cores are noisy: compare the
ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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

from repro import checkpoint, data, environment, model, parallel, rng, shuffle, train  # noqa: E402

BATCH = 64


def timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def measure_ours(dataset, chunk_steps: int, devices: int = 1, micro_shards: int = 0,
                 steps: int | None = None) -> dict:
  """run()'s chunks over `steps` steps (default one epoch) after a first, compiling chunk.

  devices/micro_shards > the defaults time the data-parallel program
  (repro.parallel.make_mesh) as run() builds it.
  """
  keys = rng.streams(0)
  graphdef, state = nnx.split(model.create(keys["params"], 1e-3))
  n = len(dataset.train_labels)
  spe = shuffle.steps_per_epoch(n, BATCH)
  mesh = parallel.make_mesh(devices, micro_shards, BATCH)
  if mesh is None:
    chunk = train.make_train_chunk(graphdef, chunk_steps=chunk_steps, num_examples=n,
                                   batch_size=BATCH)
  else:
    chunk = train.make_sharded_train_chunk(graphdef, mesh, chunk_steps=chunk_steps,
                                           num_examples=n, batch_size=BATCH,
                                           micro_shards=micro_shards)
    keys, state = parallel.replicate((keys, state), mesh)
  images, labels = parallel.replicate((dataset.train_images, dataset.train_labels), mesh)
  compile_s, (state, _) = timed(chunk, state, images, labels, keys, np.int32(0),
                                np.int32(chunk_steps))
  steps = steps or spe
  start = time.perf_counter()
  step = chunk_steps
  while step < chunk_steps + steps:
    stop = min(step + chunk_steps, chunk_steps + steps)
    state, trace = chunk(state, images, labels, keys, np.int32(step), np.int32(stop - step))
    np.asarray(trace["loss"])  # the one host sync per chunk, as run() does
    step = stop
  epoch_s = time.perf_counter() - start
  return {"epoch_s": epoch_s, "steps": steps, "step_ms": 1000 * epoch_s / steps,
          "compile_and_first_chunk_s": compile_s, "state": state, "graphdef": graphdef}


def measure_loop(dataset, conv_model: bool) -> dict:
  """The article's loop: host shuffling and batching, one jitted step per batch."""
  keys = rng.streams(0)
  if conv_model:
    class ArticleClassifier(model.DigitClassifier):  # nnx.Conv as in the article
      def __call__(self, x, dropout_key=None):
        x = x / 255
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.linear2(nnx.relu(self.linear1(x)))
    net = ArticleClassifier(rngs=nnx.Rngs(params=keys["params"]))
  else:
    net = model.DigitClassifier(rngs=nnx.Rngs(params=keys["params"]))
  optimizer = nnx.Optimizer(net, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(net, optimizer, images, labels):
    loss, grads = nnx.value_and_grad(train.loss_fn)(net, images, labels)
    optimizer.update(net, grads)
    return loss

  n = len(dataset.train_labels)
  spe = n // BATCH
  order = np.asarray(shuffle.epoch_permutation(keys["shuffle"], 0, n))
  first = order[:BATCH]
  compile_s, _ = timed(train_step, net, optimizer, dataset.train_images[first],
                       dataset.train_labels[first])
  start = time.perf_counter()
  for i in range(spe):
    idx = order[i * BATCH:(i + 1) * BATCH]
    loss = train_step(net, optimizer, dataset.train_images[idx], dataset.train_labels[idx])
    _ = f"loss: {float(loss):.3f}"  # the progress bar's per-step sync
  epoch_s = time.perf_counter() - start
  return {"epoch_s": epoch_s, "steps": spe, "step_ms": 1000 * epoch_s / spe,
          "compile_s": compile_s}


def measure_bound(graphdef, state, dataset) -> dict:
  """FLOPs of one step as XLA counts them, at the measured matmul FLOP/s of this CPU."""
  images = jnp.asarray(dataset.train_images[:BATCH])
  labels = jnp.asarray(dataset.train_labels[:BATCH])
  step = jax.jit(lambda s, x, y: train.train_step(graphdef, s, x, y))
  flops = float(step.lower(state, images, labels).compile().cost_analysis()["flops"])
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
import jax, numpy as np; from flax import nnx
from repro import data, environment, model, rng, shuffle, train
t_import = time.perf_counter()
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
ds = data.load("fashion_mnist", log=lambda _: None)
t_data = time.perf_counter()
keys = rng.streams(0); g, s = nnx.split(model.create(keys["params"], 1e-3))
chunk = train.make_train_chunk(g, chunk_steps=100, num_examples=60000, batch_size=64)
x, y = jax.device_put(ds.train_images), jax.device_put(ds.train_labels)
s, t = chunk(s, x, y, keys, np.int32(0), np.int32(1)); np.asarray(t["loss"])
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


def measure_binary(epochs: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bin" / "train"), f"--epochs={epochs}",
                    f"--output={tmp}/run", "--noprogress"], check=True, capture_output=True)
    wall = time.perf_counter() - start
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {"epochs": epochs, "wall_s": wall, "peak_rss_mib": peak_kib / 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench.json"))
  parser.add_argument("--chunk_steps", type=int, default=100)
  parser.add_argument("--epochs", type=int, default=1, help="epochs of the bin/train run")
  parser.add_argument("--repeats", type=int, default=2,
                      help="alternating measurements of each contender (the best is kept)")
  args = parser.parse_args()
  dataset = data.load("fashion_mnist", log=print)
  print("measuring: ours, loop (our model), loop (nnx.Conv), bound, checkpoints, start-up, "
        "bin/train", flush=True)
  # Side by side and alternating, twice; the faster of each pair is kept, so
  # a noisy neighbour slows one measurement rather than one contender.
  runs = {"ours": [], "loop": [], "loop_conv": []}
  for _ in range(args.repeats):
    runs["ours"].append(measure_ours(dataset, args.chunk_steps))
    runs["loop"].append(measure_loop(dataset, conv_model=False))
    runs["loop_conv"].append(measure_loop(dataset, conv_model=True))
  ours, loop, loop_conv = (min(runs[k], key=lambda r: r["epoch_s"])
                           for k in ("ours", "loop", "loop_conv"))
  for name, measured in runs.items():
    print(f"{name}: epoch seconds " + ", ".join(f"{r['epoch_s']:.1f}" for r in measured),
          flush=True)
  bound = measure_bound(ours["graphdef"], ours["state"], dataset)
  ckpt = measure_checkpoint(ours["state"])
  startup = measure_startup()
  binary = measure_binary(args.epochs)
  report = {
      "ours": {k: v for k, v in ours.items() if k not in ("state", "graphdef")},
      "loop_our_model": loop, "loop_nnx_conv": loop_conv, "bound": bound,
      "checkpoint": ckpt, "startup": startup, "bin_train": binary,
      "ratios": {
          "loop_over_ours": loop["epoch_s"] / ours["epoch_s"],
          "loop_nnx_conv_over_ours": loop_conv["epoch_s"] / ours["epoch_s"],
          "ours_over_bound": ours["step_ms"] / bound["step_ms"],
          "checkpoint_stall_fraction": ckpt["save_blocking_ms"] / (500 * ours["step_ms"]),
      },
      "environment": {**environment.versions(), **environment.cpu_info(),
                      "python": platform.python_version(), "chunk_steps": args.chunk_steps,
                      "date": time.strftime("%Y-%m-%d")},
  }
  text = json.dumps(report, indent=2, default=float)
  print(text)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(text + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
