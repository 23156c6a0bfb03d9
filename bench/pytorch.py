"""The reference job in PyTorch beside repro and the plain nnx.jit loop, side by side.

    python bench/pytorch.py [--rounds=3] [--steps=300] [--torch_python=PYTHON]
                            [--out=bench/results/pytorch.json]

The article's CNN (conv 1->32 3x3, relu, avgpool, conv 32->64 3x3, relu,
avgpool, dense 256, dense 10) on Fashion-MNIST, Adam 1e-3, batch 64, in three
contenders, each in a fresh process, in alternating rounds, best of --rounds:
  torch  PyTorch on the CPU with deterministic algorithms, channels-last, the
         machine's threads (torch.get_num_threads()), host batches in a random
         order; ms a step over --steps steps after 10 warm-up steps.
  repro  repro.run with its defaults (bench/own_models.py's measurement).
  loop   the Flax tutorial's nnx.jit loop with JAX's defaults (the same).
PyTorch is never a dependency of repro: --torch_python names an interpreter
that has it (default: this one); where it cannot import torch, the torch
column is skipped and said so.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IDX = Path("/usr/share/datasets/fashion-mnist")
BATCH = 64


def _idx(path: Path):
  import numpy as np
  with gzip.open(path, "rb") as f:
    data = f.read()
  dims = data[3]
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def measure_torch(steps: int) -> dict:
  """ms a step of the reference job in PyTorch (run in the torch interpreter)."""
  import numpy as np
  import torch
  from torch import nn
  torch.use_deterministic_algorithms(True)
  torch.manual_seed(0)
  images = torch.from_numpy(_idx(IDX / "train-images-idx3-ubyte.gz").astype(np.float32) / 255)
  images = images[:, None].contiguous(memory_format=torch.channels_last)
  labels = torch.from_numpy(_idx(IDX / "train-labels-idx1-ubyte.gz").astype(np.int64))
  model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(3136, 256), nn.ReLU(), nn.Linear(256, 10))
  model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))

  def step(i):
    idx = order[(i * BATCH) % (len(order) - BATCH):][:BATCH]
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
    loss.backward()
    optimizer.step()
    return loss

  for i in range(10):
    step(i)
  start = time.perf_counter()
  for i in range(10, 10 + steps):
    loss = step(i)
  float(loss)
  return {"ms_step": 1000 * (time.perf_counter() - start) / steps,
          "threads": torch.get_num_threads(), "torch": torch.__version__}


def _fresh(argv: list[str]) -> dict | None:
  done = subprocess.run(argv, capture_output=True, text=True)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  return json.loads(lines[-1]) if done.returncode == 0 and lines else None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--torch_python", default=sys.executable)
  parser.add_argument("--out", default=str(HERE / "results" / "pytorch.json"))
  parser.add_argument("--one_torch", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one_torch:
    return print(json.dumps(measure_torch(args.steps)), flush=True)
  has_torch = subprocess.run([args.torch_python, "-c", "import torch"],
                             capture_output=True).returncode == 0
  if not has_torch:
    print(f"{args.torch_python} cannot import torch: the torch column is skipped", flush=True)
  own = [sys.executable, str(HERE / "own_models.py"), f"--steps={args.steps}", "--one", "article"]
  contenders = {"repro": own + ["repro"], "loop": own + ["loop"]}
  if has_torch:
    contenders["torch"] = [args.torch_python, __file__, "--one_torch", f"--steps={args.steps}"]
  runs: dict = {}
  for r in range(args.rounds):
    for name in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
      found = _fresh(contenders[name])
      runs.setdefault(name, []).append(found)
      print(f"round {r + 1}: {name} {found['ms_step']:.1f} ms a step" if found else
            f"round {r + 1}: {name} failed", flush=True)
  best = {name: min(x["ms_step"] for x in rows if x) for name, rows in runs.items()
          if any(rows)}
  report = {"steps": args.steps, "rounds": args.rounds, "best_ms_step": best,
            "repro_over_loop": best["repro"] / best["loop"],
            "repro_over_torch": best["repro"] / best["torch"] if "torch" in best else None,
            "all": runs}
  sys.path.insert(0, str(HERE))
  from common import write_report
  write_report(report, args.out)


if __name__ == "__main__":
  main()
