"""The fresh-process layer of the proofs: how bin/check, bin/audit and bin/replay train a
task in a process of its own.

A task crosses to the new process as a file (save_task, load_task; a task
defined in the calling script is loaded from it: main_file); each process is
`python -m repro.proof.check_run` (command(), run_way()), with the
environment a Way asks for (process_env(): forced devices, XLA flags, a
compilation cache, pinned CPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from repro import task as task_lib
from repro.config import Config
from repro.errors import ReproError, writable_directory
from repro.machine import environment

MODULE = "repro.proof.check_run"  # the module each process runs
BASE = "base"  # the plain run that most rows compare against (its cache is shared)
# Where bin/audit's and bin/replay's runs compile, if set: a cache those proofs share, so that
# auditing the runs of one task (a sweep) compiles its programs once. Unset (the default),
# each proof compiles afresh and trusts no executable it did not make.
PROOF_CACHE = "REPRO_PROOF_CACHE_DIR"


def shared_cache() -> Path | None:
  """$REPRO_PROOF_CACHE_DIR as an absolute path, or None (unset: each proof's own cache)."""
  shared = os.environ.get(PROOF_CACHE)
  return Path(shared).expanduser().absolute() if shared else None


def proof_cache(root: Path) -> Path:
  """The compilation cache of a proof whose scratch directory is `root` (see PROOF_CACHE)."""
  return shared_cache() or root / "cache"


def check_shared_cache(run: Path) -> None:
  """ReproError (one line) for a $REPRO_PROOF_CACHE_DIR that would let the proof of `run`
  load the run's own executables, write into the run, or cannot be written."""
  shared = shared_cache()
  if shared is None:
    return
  if shared == environment.default_cache_dir().absolute():
    raise ReproError(f"{PROOF_CACHE}={shared} is the cache training compiles into: a proof "
                     f"must not load the run's executables; name a directory only proofs write")
  if shared == run or run in shared.parents:
    raise ReproError(f"{PROOF_CACHE}={shared} is inside the audited run: name a directory "
                     f"outside it")
  writable_directory(shared, PROOF_CACHE, "name a directory this process can write")


@dataclasses.dataclass(frozen=True)
class Way:
  """One way to train: config changes, and how the process is started."""

  changes: dict = dataclasses.field(default_factory=dict)
  resume_at: int = 0  # stop at this step, then resume in a second process
  cpus: int = 0  # pin to this many CPUs (0: all)
  devices: int = 0  # forced host devices (0: as the environment says)
  xla_flags: str = ""
  env: tuple = ()  # (name, value) pairs for its environment; value None: unset
  twice_in_process: bool = False  # train once into a scratch directory first, same process
  own_cache: bool = False  # compile into a cache of its own, not the one the others share
  name: str = ""  # its run directory; given by its row (Row.ways)

  @property
  def processes(self) -> int:
    """The fresh processes it takes: a second one to resume in."""
    return 1 + bool(self.resume_at)


def count(ways: list[Way]) -> int:
  """The fresh processes the ways take: the report's run count and the progress bar's."""
  return sum(way.processes for way in ways)


def command(task_file: Path, config_file: Path, *, cpus: tuple[int, ...] = (),
            main: str | None = None, twice: Path | None = None) -> list[str]:
  """The command line of one run.

  Args:
    task_file: what rebuilds the task (save_task).
    config_file: the run's Config as JSON (Config.to_dict).
    cpus: pin the process to these CPUs (empty: as inherited).
    main: the script that defines the task's class (a task of __main__).
    twice: first train the same config into this scratch directory, in the
      same process (a second run in one process must equal a first).
  """
  argv = [sys.executable, "-m", MODULE, f"--task={task_file}", f"--config={config_file}"]
  if cpus:
    argv.append(f"--cpus={','.join(str(c) for c in cpus)}")
  if main:
    argv.append(f"--main={main}")
  if twice:
    argv.append(f"--twice={twice}")
  return argv


class RunFailed(Exception):
  """A check's run exited non-zero: its last line of stderr."""


def _python_path() -> str:
  """This process's import path beyond the interpreter's own (where the task's module is)."""
  own = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
  extra = [os.path.abspath(p or ".") for p in sys.path
           if os.path.isdir(p or ".") and not os.path.realpath(p or ".").startswith(own)]
  return os.pathsep.join(dict.fromkeys(extra))


def process_env(way: Way, cache: Path) -> dict[str, str]:
  env = dict(os.environ, PYTHONPATH=_python_path(), JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # every program, even tiny ones
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONUNBUFFERED="1")
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if way.devices:
    flags.append(f"--xla_force_host_platform_device_count={way.devices}")
  flags += way.xla_flags.split()
  env["XLA_FLAGS"] = " ".join(flags)
  for name, value in way.env:
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return env


# What a signal's handler ends at once (stop_all, from repro.cli.stopping): the runs this
# process has in flight and the scratch directories of its proofs.
_lock = threading.RLock()  # re-entered by a handler that interrupts the main thread here
_running: set[subprocess.Popen] = set()
_scratch: list[Path] = []
_stopping = False


def train_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
  """subprocess.run(argv, env=env, capture_output=True, text=True), ended by stop_all()."""
  with _lock:
    if _stopping:
      raise RunFailed("stopped by a signal")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _running.add(proc)
  try:
    out, err = proc.communicate()
  finally:
    with _lock:
      _running.discard(proc)
  return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def failure(done: subprocess.CompletedProcess) -> str:
  """What a failed run said last: its last line of stderr, or its exit code."""
  return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
  """A temporary directory for a proof's runs: removed after it, or by stop_all()."""
  root = Path(tempfile.mkdtemp(prefix=prefix))
  _scratch.append(root)
  try:
    yield root
  finally:
    _scratch.remove(root)
    shutil.rmtree(root, ignore_errors=True)


def stop_all() -> None:
  """For a signal's handler: no run starts any more, those running are killed, the scratch
  directories removed."""
  global _stopping
  _stopping = True
  with _lock:
    for proc in list(_running):
      proc.kill()
  for root in list(_scratch):
    shutil.rmtree(root, ignore_errors=True)


def run_way(way: Way, config: Config, steps: int, workdir: Path, task_file: Path,
            main: str | None) -> Path:
  """Trains one way (two processes if it resumes); its run directory. RunFailed on failure."""
  output = workdir / way.name
  config = config.replace(**way.changes, output=str(output), progress=False,
                          checkpoint_every=steps)
  cpus = tuple(sorted(os.sched_getaffinity(0))[:way.cpus])
  twice = workdir / f"{way.name}-first" if way.twice_in_process else None
  cache = workdir / f"cache-{way.name if way.own_cache else BASE}"
  for n, target in enumerate([way.resume_at] * bool(way.resume_at) + [steps]):
    config_file = workdir / f"{way.name}-{n}.json"
    config_file.write_text(json.dumps(config.replace(max_steps=target).to_dict()))
    done = train_process(command(task_file, config_file, cpus=cpus, main=main, twice=twice),
                         process_env(way, cache))
    if done.returncode != 0:
      raise RunFailed(f"{way.name} run failed (exit {done.returncode}): {failure(done)}")
  return output


def main_file(task: task_lib.Task) -> str | None:
  """The script a task's class is defined in, when that is __main__ (loaded in each run)."""
  if type(task).__module__ != "__main__":
    return None
  main = getattr(sys.modules["__main__"], "__file__", None)
  if not main:
    raise ReproError(f"task {task_lib.task_name(task)} is defined in an interactive session: "
                     f"define it in a module or script so that fresh processes can load it")
  return os.path.abspath(main)


def save_task(task: task_lib.Task, path: Path) -> None:
  """Writes what rebuilds `task` in a fresh process: its class, options and arrays.

  path holds {"class": "module:QualName", "fields": {name: JSON value}}; the
  fields that hold arrays go to path.with_suffix(".npz"). A field of any
  other kind is refused with one line.
  """
  import numpy as np
  fields, arrays = {}, {}
  for field in dataclasses.fields(task) if dataclasses.is_dataclass(task) else ():
    if not field.init:
      continue
    value = getattr(task, field.name)
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
      arrays[field.name] = np.asarray(value)
    elif task_lib.is_json(value):
      fields[field.name] = value
    else:
      raise ReproError(f"task {task_lib.task_name(task)}: field {field.name} holds a "
                       f"{type(value).__name__}, which cannot be passed to fresh processes: "
                       f"give the task plain options and arrays")
  path.write_text(json.dumps({"class": task_lib.spec_of(task), "fields": fields}))
  np.savez(path.with_suffix(".npz"), **arrays)


def load_task(path: Path) -> task_lib.Task:
  """The task save_task wrote (its class imported, or found in the loaded __main__ script)."""
  import importlib
  import numpy as np
  described = json.loads(path.read_text())
  module_name, _, qualname = described["class"].partition(":")
  target = importlib.import_module(module_name)
  for part in qualname.split("."):
    target = getattr(target, part)
  with np.load(path.with_suffix(".npz")) as arrays:
    return target(**described["fields"], **{k: arrays[k] for k in arrays.files})
