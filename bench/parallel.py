"""The cost of data parallelism and of the topology-invariant mode, side by side.

    python bench/parallel.py [--steps=300] [--rounds=2] [--out=bench/results/parallel.json]

Each setting runs in its own process (a process's device count is fixed when
its backend starts; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N
makes N devices that share the machine's cores). The settings alternate for
`rounds` rounds and the best time of each is kept; ratios are to the
single-device program measured in the same run. On a machine with fewer cores
than devices this measures the programs' overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (forced host devices, --devices, --micro_shards)
SETTINGS = [(1, 1, 0), (1, 1, 4), (2, 2, 0), (2, 2, 4), (4, 4, 0), (4, 4, 4)]


def name(setting) -> str:
  _, devices, micro = setting
  return f"{devices} device{'s' if devices > 1 else ''}, " + (
      f"micro_shards={micro}" if micro else "default")


def child(devices: int, micro_shards: int, steps: int) -> None:
  sys.path.insert(0, str(HERE))
  sys.path.insert(0, str(HERE.parent))
  from common import measure_ours
  from repro.tasks.cnn import CNN
  r = measure_ours(CNN(), CNN().data().train, 64, 100, devices=devices,
                   micro_shards=micro_shards, steps=steps)
  print(json.dumps({"step_ms": r["step_ms"],
                    "compile_and_first_chunk_s": r["compile_and_first_chunk_s"]}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default=str(HERE / "results" / "parallel.json"))
  parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(*args.child, args.steps)
    return
  best: dict[str, dict] = {}
  for round_ in range(args.rounds):
    for setting in SETTINGS:
      host, devices, micro = setting
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={host}")
      out = subprocess.run([sys.executable, __file__, f"--steps={args.steps}", "--child",
                            str(devices), str(micro)], env=env, check=True,
                           capture_output=True, text=True).stdout
      r = json.loads(out.strip().splitlines()[-1])
      key = name(setting)
      if key not in best or r["step_ms"] < best[key]["step_ms"]:
        best[key] = r
      print(f"round {round_ + 1}: {key}: {r['step_ms']:.1f} ms/step", flush=True)
  base = best[name(SETTINGS[0])]["step_ms"]
  report = {"steps": args.steps, "batch": 64, "cpus": os.cpu_count(),
            "settings": {k: {**v, "vs_one_device": v["step_ms"] / base} for k, v in best.items()}}
  for key, value in report["settings"].items():
    print(f"{key:32s} {value['step_ms']:6.1f} ms/step  x{value['vs_one_device']:.2f}")
  Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
