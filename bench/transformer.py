"""The transformer example: repro's scan chunks vs a per-step jitted loop, side by side.

    python bench/transformer.py [--rounds=3] [--out=bench/results/transformer.json]

The charlm task (repro.tasks.charlm, its default size: context 64, width 64,
4 heads, 2 layers) on every licence text of /usr/share/common-licenses
concatenated (about 237 KB, so an epoch has enough steps to time), batch 64.
One epoch each, alternating for `rounds` rounds, the fastest of each kept:
(a) ours: run()'s chunks of 100 steps over the device-resident windows;
(b) loop: a per-step jitted step over batches gathered on the host in the same
order, with the loss read back every step for a progress bar.
Reports loop/ours. Timings on 2 shared cores are noisy: compare the ratio of
one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import best_of, measure_loop, measure_ours, public, write_report  # noqa: E402
from repro.tasks.charlm import CharLM  # noqa: E402

BATCH = 64
LICENCES = Path("/usr/share/common-licenses")


def corpus(directory: Path) -> Path:
  """Every licence text concatenated, in name order, into one UTF-8 file."""
  texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(LICENCES.iterdir())
           if p.is_file()]
  path = directory / "licences.txt"
  path.write_text("\n".join(texts), encoding="utf-8")
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--chunk_steps", type=int, default=100)
  parser.add_argument("--out", default=str(HERE / "results" / "transformer.json"))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    task = CharLM(text=str(corpus(Path(tmp))))
    train_split = task.data().train
    print(f"charlm: {len(train_split['tokens'])} windows of {task.context + 1} characters, "
          f"batch {BATCH}", flush=True)
    best = best_of({
        "ours": lambda: measure_ours(task, train_split, BATCH, args.chunk_steps),
        "loop": lambda: measure_loop(task, train_split, BATCH),
    }, args.rounds)
  ours, loop = best["ours"], best["loop"]
  report = {
      "task": {"name": "charlm", **task.options(), "text": "all of /usr/share/common-licenses"},
      "batch": BATCH, "rounds": args.rounds, "ours": public(ours), "loop": loop,
      "ratios": {"loop_over_ours": loop["epoch_s"] / ours["epoch_s"]},
  }
  write_report(report, args.out)


if __name__ == "__main__":
  main()
