"""The project's golden files: the bits of two small runs of the reference CNN.

tests/test_golden.py checks them on every change with repro.testing.assert_golden,
the mechanism a user's own CI uses (docs/golden.md): one golden format. Each
file is what `bin/golden record` writes: the config, each leaf's sha256 of the
final state, every step's loss and fingerprints, and the scope the bits hold
for (platform class, locked versions, XLA:CPU's configuration).

Re-record after a deliberate change of the bits (a new pin, a model change),
and say in the commit why the bits changed:

    python tests/golden.py --update

On a platform class the files hold no record for (where the test passes if
the bits agree, and skips naming the scope if they do not):

    python tests/golden.py --add

checks each file and records this platform class in it: beside the record
whose bits it has, or with its own bits.

The runs train on the synthetic IDX data of tests/idx_data.py, which the
files name relatively (idx/ and tfds/, written into a temporary directory
that the runs start in); a check passes its own directories as the task's
location options.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import idx_data  # noqa: E402
from repro import Config  # noqa: E402
from repro.proof import golden  # noqa: E402

FILES = HERE / "golden"
# name: (config, steps): two epochs of 16 steps, three of 8.
CONFIGS = {
    "seed0-batch16-lr1e-3": (dict(seed=0, batch_size=16, learning_rate=1e-3, epochs=2), 32),
    "seed1-batch32-lr3e-3": (dict(seed=1, batch_size=32, learning_rate=3e-3, epochs=3), 24),
}
DATA = {"data_dir": "idx", "tfds_dir": "tfds"}  # as the files name them


def path(name: str) -> Path:
  return FILES / f"{name}.json"


def write_data(root: Path) -> dict:
  """The synthetic IDX data under root/idx; the task options that name it absolutely."""
  idx_data.write_dataset(root / DATA["data_dir"], n_train=256, n_test=64, seed=0)
  return {k: str(root / v) for k, v in DATA.items()}


def config(name: str) -> Config:
  values, _ = CONFIGS[name]
  return Config(**values, chunk_steps=8, progress=False, task_options=dict(DATA))


def update() -> int:
  FILES.mkdir(exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
    write_data(Path(tmp))
    for name, (_, steps) in CONFIGS.items():
      done = golden.record(None, config(name), steps=steps, out=path(name))
      print(f"wrote {done.path}: {done.steps} steps, {done.leaves} leaves")
  return 0


def add() -> int:
  """Checks each file here, recording this platform class in it; 1 if a record here differs."""
  codes = []
  with tempfile.TemporaryDirectory() as tmp:
    options = write_data(Path(tmp))
    for name in CONFIGS:
      report = golden.check(path(name), add=True, task_options=options)
      print(golden.format_report(report))
      codes.append(report.exit_code)
  return max(c if c != golden.EXIT_OTHER_SCOPE else 0 for c in codes)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  action = parser.add_mutually_exclusive_group(required=True)
  action.add_argument("--update", action="store_true", help="record every file again")
  action.add_argument("--add", action="store_true",
                      help="record this platform class in every file")
  args = parser.parse_args()
  sys.exit(add() if args.add else update())
