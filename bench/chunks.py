"""How the scan chunk length affects speed: one epoch per length, side by side.

    python bench/chunks.py [--lengths=10,25,100,400] [--out=bench/results/chunks.json]

Each length is one compiled program (compile time reported separately); the
bits do not depend on it (tests/test_reproducibility.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import measure_ours  # noqa: E402
from repro.tasks.cnn import CNN  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="10,25,100,400")
  parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "chunks.json"))
  args = parser.parse_args()
  train_split = CNN().data().train
  report = {}
  for length in (int(x) for x in args.lengths.split(",")):
    r = measure_ours(CNN(), train_split, 64, length)
    report[length] = {"epoch_s": r["epoch_s"], "step_ms": r["step_ms"],
                      "compile_and_first_chunk_s": r["compile_and_first_chunk_s"]}
    print(length, json.dumps(report[length]), flush=True)
  Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
