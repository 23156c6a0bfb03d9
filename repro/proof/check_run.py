"""One run of bin/check, in a fresh process of its own: `python -m repro.proof.check_run --task=...`.

repro.proof.processes starts one per way (two for a way that resumes) with command();
everything the run needs is on its command line: the task file (written by
repro.proof.processes.save_task), the config file, and optionally the CPUs to pin it
to, the script that defines the task's class, and a scratch directory to
train into first. A pinned run starts itself again under the pin, so that
everything it loads (NumPy's OpenBLAS, XLA) sizes its threads for those CPUs,
as under `taskset -c`. Exit status: 0, or the error's exit code with its one
line last on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from repro.machine import environment  # no NumPy or JAX: see _pin

MODULE = __spec__.name  # repro.proof.processes.MODULE, run with -m
MAIN_MODULE = "__repro_check_main__"  # the caller's script, loaded as a module


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
  parser.add_argument("--task", required=True, type=Path, help="the task file (save_task)")
  parser.add_argument("--config", required=True, type=Path, help="the Config as JSON")
  parser.add_argument("--cpus", default="", help="CPUs to pin to, e.g. 0 or 0,1")
  parser.add_argument("--main", default=None, help="the script defining the task's class")
  parser.add_argument("--twice", default=None, help="train into this directory first")
  return parser


def _pin(cpus: set[int], argv: list[str]) -> None:
  """Starts this run again (with `argv`) pinned to `cpus`, unless it already is.

  Pinning in place would be too late: `-m` has imported repro (NumPy, JAX)
  already, and NumPy's OpenBLAS sizes its threads when it loads (measured: 2
  threads when pinned after the import, 1 under `taskset -c 0`).
  """
  if os.sched_getaffinity(0) != cpus:
    os.sched_setaffinity(0, cpus)
    os.execv(sys.executable, [sys.executable, "-m", MODULE, *argv])


def _set_pool(config_file: Path) -> None:
  """The run's XLA:CPU pool, before the task or the caller's script may start JAX's backend."""
  from repro.machine import backend
  values = json.loads(config_file.read_text())
  backend.apply(backend.pool_size(values.get("cpu_threads", backend.DEFAULT_THREADS),
                                  values.get("micro_shards", 0)))


def _load_main(path: str) -> None:
  """Loads the caller's script as __main__ (its `if __name__ == "__main__"` block not run)."""
  spec = importlib.util.spec_from_file_location(MAIN_MODULE, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["__main__"] = module
  spec.loader.exec_module(module)


def train(task_file: Path, config_file: Path, twice: str | None) -> int:
  """Rebuilds the task (load_task) and trains it with repro.run; the exit status."""
  from repro.proof.processes import load_task
  from repro.config import Config
  from repro.errors import ReproError, exit_code_of, one_line
  from repro.runner import run
  environment.settle_imports()
  try:
    task = load_task(task_file)
    config = Config.from_dict(json.loads(config_file.read_text()))
    if twice:
      run(config.replace(output=twice), task, log=lambda _: None)
    run(config, task, log=lambda _: None)
  except Exception as err:  # the report shows it as the row's failure
    print(f"error: {err if isinstance(err, ReproError) else one_line(err)}", file=sys.stderr)
    return exit_code_of(err)
  return 0


def main(argv: list[str]) -> int:
  """The run that `argv` (command()'s arguments) describes; its exit status."""
  environment.defer_collection()  # until train() has imported what it needs
  args = _parser().parse_args(argv)
  if args.cpus:
    _pin({int(c) for c in args.cpus.split(",")}, argv)
  _set_pool(args.config)
  if args.main:
    _load_main(args.main)
  return train(args.task, args.config, args.twice)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
