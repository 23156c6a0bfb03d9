"""Host-fed chunks vs device-resident data, and a data set bigger than the budget.

    python bench/hostfed.py [--rounds=2] [--big_gb=4] [--steps=1500]
                            [--out=bench/results/hostfed.json]
    python bench/hostfed.py --sources [--rounds=2] [--source_steps=400]
                            [--out=bench/results/hostfed_sources.json]

The reference CNN, batch 64, chunks of 100 steps, the same order on both paths.
(a) Fashion-MNIST in one process: one epoch on the device-resident path vs the
    host-fed path (--data_path=host: each chunk's batches gathered on the host,
    the next chunk prefetched by a thread), alternating `rounds` rounds, the
    fastest of each kept. Reports host/device.
(b) Fresh processes, alternating: `steps` host-fed steps over Fashion-MNIST's
    training split saved as .npy, and over a generated .npy memmap of about
    `big_gb` GB (its images tiled, each copy shifted), read with
    repro.tasks.npy's source. Reports each one's peak RSS (VmHWM) and its
    time per example, big/small.
(c) bin/train on the big memmap (--data_path=auto, the default budget), a few
    hundred steps: the path it chose and its peak RSS.
(d) With --sources, instead of (a)-(c) (needs the extras grain and hf):
    Fashion-MNIST's training split host-fed in one process, `source_steps`
    steps each, alternating `rounds` rounds: as arrays, through a Grain
    MapDataset of (image, label) pairs named by a per-example map (as a
    pipeline over tfds.data_source reads), and as a Hugging Face Dataset saved
    to disk and memory-mapped back. Reports ms a step, each over the arrays.
Timings on 2 shared cores are noisy: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import best_of, measure_ours, public, write_report  # noqa: E402
from repro.tasks.cnn import CNN  # noqa: E402

BATCH = 64
CHILD = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
import numpy as np
from common import measure_ours, peak_rss_mb
from repro.data.source import Arrays
from repro.tasks.cnn import CNN
source = Arrays({"image": np.load(sys.argv[2], mmap_mode="r"),
                 "label": np.load(sys.argv[3], mmap_mode="r")})
r = measure_ours(CNN(), source, 64, 100, steps=int(sys.argv[4]), host_fed=True)
print(json.dumps({"examples": len(source), "step_ms": r["step_ms"], "steps": r["steps"],
                  "peak_rss_mb": peak_rss_mb()}))
"""
TRAIN = """
import runpy, sys
sys.path.insert(0, sys.argv[1] + "/bench")
from common import peak_rss_mb
sys.argv = sys.argv[2:]
try:
  runpy.run_path(sys.argv[0], run_name="__main__")
finally:
  print(f"peak_rss_mb={peak_rss_mb():.0f}", file=sys.stderr)
"""


def generate(directory: Path, images: np.ndarray, labels: np.ndarray, gb: float) -> dict:
  """A .npy pair of about `gb` GB: copies of `images`, copy k shifted k % 28 pixels.

  Written with plain file writes, so this process's memory stays small.
  """
  copies = max(1, int(gb * 1e9 // images.nbytes))
  paths = {"images": directory / "big_images.npy", "labels": directory / "big_labels.npy"}
  with open(paths["images"], "wb") as f:
    header = {"descr": np.lib.format.dtype_to_descr(images.dtype), "fortran_order": False,
              "shape": (copies * len(images),) + images.shape[1:]}
    np.lib.format.write_array_header_1_0(f, header)
    for k in range(copies):
      f.write(np.ascontiguousarray(np.roll(images, k % 28, axis=2)).tobytes())
  np.save(paths["labels"], np.tile(labels, copies))
  return {k: str(v) for k, v in paths.items()}


def child(paths: dict, steps: int) -> dict:
  out = subprocess.run([sys.executable, "-c", CHILD, str(HERE.parent), paths["images"],
                        paths["labels"], str(steps)], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def train_big(paths: dict, output: Path, steps: int) -> dict:
  flags = [f"--task=repro.tasks.npy:NpyCNN", f"--task.images={paths['images']}",
           f"--task.labels={paths['labels']}", f"--output={output}", f"--max_steps={steps}",
           "--progress=false"]
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", TRAIN, str(HERE.parent),
                        str(HERE.parent / "bin" / "train"), *flags],
                       capture_output=True, text=True)
  rss = [l for l in out.stderr.splitlines() if l.startswith("peak_rss_mb=")]
  config = json.loads((output / "config.json").read_text())
  return {"exit": out.returncode, "seconds": time.perf_counter() - start, "steps": steps,
          "data_path": config["data_path"], "data_budget_mb": config["data_budget_mb"],
          "peak_rss_mb": float(rss[0].split("=")[1]) if rss else None}


def sources(train_split: dict, steps: int, rounds: int, tmp: str) -> dict:
  """(d) The same examples host-fed as arrays, through Grain and through Hugging Face."""
  import datasets
  import grain
  from repro.data.source import Arrays, Grain, HuggingFace
  datasets.disable_progress_bars()
  pairs = list(zip(train_split["image"], train_split["label"]))
  pipeline = grain.MapDataset.source(pairs).map(lambda p: {"image": p[0], "label": p[1]})
  datasets.Dataset.from_dict(train_split).save_to_disk(f"{tmp}/hf")
  contenders = {"arrays": Arrays(train_split), "grain": Grain(pipeline),
                "hf": HuggingFace(datasets.load_from_disk(f"{tmp}/hf"))}
  best = best_of({name: (lambda s=source: measure_ours(CNN(), s, BATCH, steps=steps,
                                                          host_fed=True))
                  for name, source in contenders.items()}, rounds)
  return {"steps": steps, **{name: public(r) for name, r in best.items()},
          "ratios": {f"{name}_over_arrays": best[name]["step_ms"] / best["arrays"]["step_ms"]
                     for name in ("grain", "hf")}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--big_gb", type=float, default=4.0)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--sources", action="store_true", help="measure (d) instead")
  parser.add_argument("--source_steps", type=int, default=400)
  parser.add_argument("--out", default=None, help="default: bench/results/hostfed.json, "
                                                   "hostfed_sources.json with --sources")
  args = parser.parse_args()
  out = args.out or str(HERE / "results" / f"hostfed{'_sources' if args.sources else ''}.json")
  train_split = CNN().data().train
  if args.sources:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
      report = {"batch": BATCH, "rounds": args.rounds,
                "sources": sources(train_split, args.source_steps, args.rounds, tmp)}
    return write_report(report, out)
  best = best_of({"device": lambda: measure_ours(CNN(), train_split, BATCH),
                  "host": lambda: measure_ours(CNN(), train_split, BATCH, host_fed=True)},
                 args.rounds)
  with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
    small = {"images": f"{tmp}/images.npy", "labels": f"{tmp}/labels.npy"}
    np.save(small["images"], train_split["image"])
    np.save(small["labels"], train_split["label"])
    start = time.perf_counter()
    big = generate(Path(tmp), train_split["image"], train_split["label"], args.big_gb)
    print(f"generated {Path(big['images']).stat().st_size / 1e9:.2f} GB in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    runs = {"small": [], "big": []}
    for _ in range(args.rounds):
      for name, paths in (("small", small), ("big", big)):
        runs[name].append(child(paths, args.steps))
        print(name, runs[name][-1], flush=True)
    trained = train_big(big, Path(tmp) / "run", 300)
    print("bin/train", trained, flush=True)
  fastest = {k: min(v, key=lambda r: r["step_ms"]) for k, v in runs.items()}
  report = {
      "batch": BATCH, "rounds": args.rounds, "steps": args.steps,
      "fashion_mnist": {k: public(v) for k, v in best.items()},
      "memmap": {"small": fastest["small"], "big": fastest["big"],
                 "peak_rss_mb_max": max(r["peak_rss_mb"] for v in runs.values() for r in v),
                 "big_bytes": fastest["big"]["examples"] * 784},
      "bin_train_big": trained,
      "ratios": {
          "host_over_device": best["host"]["epoch_s"] / best["device"]["epoch_s"],
          "big_over_small_per_example": fastest["big"]["step_ms"] / fastest["small"]["step_ms"],
          "big_over_device_per_example": fastest["big"]["step_ms"] / best["device"]["step_ms"],
      },
  }
  write_report(report, out)


if __name__ == "__main__":
  main()
