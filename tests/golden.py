"""Golden bitwise digests of a few small runs: what CI compares every change against.

Regenerate (after a deliberate change of the bits, e.g. a new pin or model):

    python tests/golden.py --update

which rewrites tests/golden/digests.json with the digests of this machine and
records the package versions and platform they were made on. On a machine of
another platform (another CPU's vector features, say), where the test skips:

    python tests/golden.py --confirm

recomputes the digests and, only if every one of them is equal, adds this
platform to the file's `confirmed_on`, so that the test guards it too.
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
from repro import Config, metrics, run
from repro.machine import environment  # noqa: E402
from repro.checkpoints import digest  # noqa: E402

GOLDEN = HERE / "golden" / "digests.json"
CONFIGS = {
    "seed0-batch16-lr1e-3": dict(seed=0, batch_size=16, learning_rate=1e-3, epochs=2),
    "seed1-batch32-lr3e-3": dict(seed=1, batch_size=32, learning_rate=3e-3, epochs=3),
}
# What must match for the bits to be comparable (see repro/machine/environment.py).
# Not the CPU count: repro fixes XLA:CPU's pool (repro.machine.backend), which is recorded.
PLATFORM_KEYS = ("machine", "backend", "device_kind", "device_count", "cpu_features",
                 "xla_cpu_pool")


def platform_key() -> dict:
  env = environment.describe()
  versions = {k: v for k, v in environment.versions().items() if k != "repro"}
  return {"versions": versions, **{k: env["platform"][k] for k in PLATFORM_KEYS}}


def compute(name: str, workdir: Path) -> dict:
  """Runs golden config `name` on the synthetic IDX data and digests the result."""
  data_dir = idx_data.write_dataset(workdir / "idx", n_train=256, n_test=64, seed=0)
  config = Config(**CONFIGS[name], output=str(workdir / name), checkpoint_every=10,
                  chunk_steps=8, progress=False,
                  task_options={"data_dir": str(data_dir), "tfds_dir": str(workdir / "tfds")})
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


def platforms(golden: dict) -> list[dict]:
  """Every platform the digests were made or confirmed on."""
  return [golden["made_on"], *golden.get("confirmed_on", [])]


def compute_all() -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    return {name: compute(name, Path(tmp)) for name in CONFIGS}


def _write(golden: dict) -> None:
  GOLDEN.parent.mkdir(exist_ok=True)
  GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


def update() -> None:
  _write({"made_on": platform_key(), "configs": compute_all()})
  print(f"wrote {GOLDEN} ({len(CONFIGS)} configs)")


def confirm() -> int:
  """Adds this platform to confirmed_on if it reproduces every digest; 1 if it does not."""
  golden, here = json.loads(GOLDEN.read_text()), platform_key()
  if here in platforms(golden):
    print("this platform is already in the golden file")
    return 0
  got = compute_all()
  differing = [name for name, want in golden["configs"].items()
               if (got[name]["leaf_digests"], got[name]["trace_sha256"]) !=
               (want["leaf_digests"], want["trace_sha256"])]
  if differing:
    print(f"NOT confirmed: {', '.join(differing)} differ on this platform")
    return 1
  golden["confirmed_on"] = [*golden.get("confirmed_on", []), here]
  _write(golden)
  print(f"confirmed: every digest is equal here; added this platform to {GOLDEN}")
  return 0


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  action = parser.add_mutually_exclusive_group(required=True)
  action.add_argument("--update", action="store_true",
                      help="recompute and rewrite tests/golden/digests.json")
  action.add_argument("--confirm", action="store_true",
                      help="add this platform if it reproduces every digest")
  args = parser.parse_args()
  sys.exit(confirm() if args.confirm else update())
