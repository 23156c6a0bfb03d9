"""Is one compiled training chunk bitwise repeatable on this machine? (jax-ml/jax#39741)

Calls the same jitted chunk of CHUNK steps CALLS times on identical inputs and
counts distinct results (sha256 over every leaf of the state and the losses).
Run it pinned to different CPU sets to see whether the thread count matters:

  taskset -c 0   python bench/determinism.py --out=bench/results/determinism-1cpu.json
  taskset -c 0,1 python bench/determinism.py --out=bench/results/determinism-2cpus.json

Prints one JSON object: CPUs visible, calls, distinct results, the digest of
the first call (compare it across CPU sets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from repro import Config
from repro.train import core
from repro.checkpoints import digest
from repro.train import rng
from repro.train import state
from repro.tasks.cnn import CNN


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--calls", type=int, default=30)
  parser.add_argument("--chunk", type=int, default=20)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  task = CNN()
  split = jax.device_put(task.data().train)
  keys = rng.streams(0)
  built = state.build(task, Config(), keys, 10**6, mesh=None)
  chunk = core.make_train_chunk(built.graphdef, task, chunk_steps=args.chunk,
                                 num_examples=len(split["label"]), batch_size=64)
  results, started = [], time.time()
  for _ in range(args.calls):
    out_state, outputs = chunk(built.state, split, keys, np.int32(0), np.int32(args.chunk))
    h = hashlib.sha256(digest.tree_digest(nnx.to_pure_dict(out_state)).encode())
    h.update(np.asarray(jax.tree.leaves(outputs)[0]).tobytes())
    results.append(h.hexdigest())
  report = {"cpus_visible": len(os.sched_getaffinity(0)), "calls": args.calls,
            "steps_per_call": args.chunk, "distinct_results": len(set(results)),
            "first_digest": results[0], "seconds": round(time.time() - started, 1),
            "jax": jax.__version__}
  print(json.dumps(report))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
