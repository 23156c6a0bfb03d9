"""What augmentation costs: the same task with Task.augment on and off, side by side.

    python bench/augment.py [--rounds=3] [--steps=100] [--out=bench/results/augment.json]

Settings, each in a fresh process, alternating rounds, the fastest of each kept:
  resnet      the ResNet example (repro.tasks.resnet): a random crop (padding 2) and a
              horizontal flip of every training image, vs --task.augment_images=false
  charlm      the transformer example on Debian's licence texts: 10% input noise
              (--task.noise=0.1), vs none
repro.run with the default --program=auto, device-resident data, batch 64; ms a step over
--steps steps after a first (compiling) chunk of the same length (Result.ms_step). The
augmentation runs inside the compiled step, so it adds no host round trip: the ratio is
the device work alone. Timings on 2 shared cores are noisy: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

BATCH = 64
MODELS = ("resnet", "charlm")


def _task(model: str, on: bool):
  from repro.tasks.charlm import CharLM
  from repro.tasks.resnet import ResNet
  if model == "resnet":
    return ResNet(augment_images=on)
  from common import licences_file
  return CharLM(text=str(licences_file()), noise=0.1 if on else 0.0)


def one(model: str, setting: str, steps: int) -> None:
  """Measures one (model, setting) in this process and prints its JSON line."""
  import repro
  out = Path(tempfile.mkdtemp()) / "run"
  config = repro.Config(output=str(out), batch_size=BATCH, max_steps=2 * steps,
                        chunk_steps=steps, checkpoint_every=10**6, progress=False)
  result = repro.run(config, task=_task(model, setting == "on"), log=lambda _: None)
  print(json.dumps({"model": model, "setting": setting, "ms_step": result.ms_step}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--out", default=str(HERE / "results" / "augment.json"))
  parser.add_argument("--one", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    return one(*args.one, args.steps)
  from tqdm import tqdm
  plan = [(m, s) for r in range(args.rounds) for m in args.models.split(",")
          for s in (("on", "off") if r % 2 == 0 else ("off", "on"))]
  runs: dict = {}
  from common import in_fresh_process
  for model, setting in tqdm(plan, desc="measuring", unit="process"):
    line = in_fresh_process(__file__, "--one", model, setting, f"--steps={args.steps}")
    runs.setdefault(model, {}).setdefault(setting, []).append(line["ms_step"])
  report = {"batch": BATCH, "steps": args.steps, "rounds": args.rounds, "models": {
      model: {"on_ms": min(by["on"]), "off_ms": min(by["off"]),
              "on_over_off": min(by["on"]) / min(by["off"]), "all": by}
      for model, by in runs.items()}}
  from common import write_report
  write_report(report, args.out)


if __name__ == "__main__":
  main()
