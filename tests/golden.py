"""Golden bitwise digests of a few small runs: what CI compares every change against.

Regenerate (after a deliberate change of the bits, e.g. a new pin or model):

    python tests/golden.py --update

which rewrites tests/golden/digests.json with the digests of this machine and
records the package versions and platform they were made on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import idx_data  # noqa: E402
from repro import Config, environment, metrics, run  # noqa: E402
from repro import digest  # noqa: E402

GOLDEN = HERE / "golden" / "digests.json"
CONFIGS = {
    "seed0-batch16-lr1e-3": dict(seed=0, batch_size=16, learning_rate=1e-3, epochs=2),
    "seed1-batch32-lr3e-3": dict(seed=1, batch_size=32, learning_rate=3e-3, epochs=3),
}
# What must match for the bits to be comparable (see repro/environment.py).
PLATFORM_KEYS = ("machine", "backend", "device_kind", "device_count", "cpu_features",
                 "cpus_visible")


def platform_key() -> dict:
  env = environment.describe()
  versions = {k: v for k, v in env["versions"].items() if k != "repro"}
  return {"versions": versions, **{k: env["platform"][k] for k in PLATFORM_KEYS}}


def compute(name: str, workdir: Path) -> dict:
  """Runs golden config `name` on the synthetic IDX data and digests the result."""
  data_dir = idx_data.write_dataset(workdir / "idx", n_train=256, n_test=64, seed=0)
  config = Config(**CONFIGS[name], data_dir=str(data_dir), tfds_dir=str(workdir / "tfds"),
                  output=str(workdir / name), checkpoint_every=10, chunk_steps=8,
                  progress=False)
  result = run(config, log=lambda _: None)
  import orbax.checkpoint as ocp
  state = ocp.StandardCheckpointer().restore(Path(result.checkpoint) / "state")
  trace = metrics.read(Path(result.output) / metrics.TRACE_FILENAME)
  return {
      "steps": result.step,
      "leaf_digests": digest.leaf_digests(state),
      "losses": [r["loss"] for r in trace if "loss" in r],
      "trace_sha256": hashlib.sha256(json.dumps(trace).encode()).hexdigest(),
      "test_accuracy": result.test_accuracy,
  }


def update() -> None:
  with tempfile.TemporaryDirectory() as tmp:
    golden = {"made_on": platform_key(),
              "configs": {name: compute(name, Path(tmp)) for name in CONFIGS}}
  GOLDEN.parent.mkdir(exist_ok=True)
  GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
  print(f"wrote {GOLDEN} ({len(CONFIGS)} configs)")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--update", action="store_true", required=True,
                      help="recompute and rewrite tests/golden/digests.json")
  parser.parse_args()
  update()
