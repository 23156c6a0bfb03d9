"""A signal outside a training loop: one line and exit 75 from a binary's first moment.

Each binary installs this first, before the imports a signal would otherwise interrupt
(`import repro` imports no JAX: the handlers are in place within milliseconds of the
start). A SIGTERM or SIGINT while it imports, reads, compiles, evaluates or writes then
ends it at once with one line on stderr and exit 75: never a KeyboardInterrupt traceback,
never a bare 143. The fresh processes a proof started (bin/check, bin/audit, bin/replay
train scratch runs) are killed with it. While bin/train trains, repro.train.stop's handler
takes over and stops the run at a chunk boundary with a checkpoint.
"""

from __future__ import annotations

import os
import signal

from repro.train.stop import EXIT_STOPPED

TRAINING = ("outside the training loop; nothing new was saved: rerun the same command (it "
            "resumes from the newest finalized checkpoint, if there is one)")


def install(binary: str) -> None:
  """SIGTERM and SIGINT end `binary` (say "bin/eval") with one line and exit 75."""
  message = TRAINING if binary == "bin/train" else f"before {binary} finished: rerun the " \
      f"same command"

  def stopped(signum, frame):
    del frame
    _kill_children()
    os.write(2, f"stopped: {signal.Signals(signum).name} {message}\n".encode())
    os._exit(EXIT_STOPPED)  # at once: imports and threads may be anywhere

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stopped)


def _kill_children() -> None:
  """SIGKILL to the processes this one started (Linux's /proc lists them): scratch runs."""
  try:
    tasks = os.listdir("/proc/self/task")
  except OSError:
    return
  for task in tasks:
    try:
      with open(f"/proc/self/task/{task}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
      continue
    for pid in children:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass  # gone already
