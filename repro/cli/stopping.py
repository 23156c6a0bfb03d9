"""A signal outside a training loop: one line and exit 75 from a binary's first moment.

Each binary installs this first, before the imports a signal would otherwise interrupt
(`import repro` imports no JAX: the handlers are in place within milliseconds of the
start). A SIGTERM or SIGINT while it imports, reads, compiles, evaluates or writes then
ends it with one line on stderr and exit 75, as soon as Python runs again (a compilation
in XLA's C++ finishes first): never a KeyboardInterrupt traceback, never a bare 143. The
runs a proof trains in fresh processes (bin/check, bin/audit, bin/replay, bin/golden) are
killed with it and their scratch directories removed (repro.proof.processes.stop_all).
While bin/train trains, repro.train.stop's handler takes over and stops the run at a
chunk boundary with a checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys

from repro.train.stop import EXIT_STOPPED

TRAINING = ("outside the training loop; nothing new was saved: rerun the same command (it "
            "resumes from the newest finalized checkpoint, if there is one)")


def install(binary: str) -> None:
  """SIGTERM and SIGINT end `binary` (say "bin/eval") with one line and exit 75."""
  message = TRAINING if binary == "bin/train" else f"before {binary} finished: rerun the " \
      f"same command"

  def stopped(signum, frame):
    del frame
    _end_proofs()
    os.write(2, f"stopped: {signal.Signals(signum).name} {message}\n".encode())
    os._exit(EXIT_STOPPED)  # at once: imports and threads may be anywhere

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stopped)


def _end_proofs() -> None:
  """The proofs' runs in flight killed, their scratch directories removed (if any ran)."""
  processes = sys.modules.get("repro.proof.processes")  # loaded only where a proof runs
  if processes is not None:
    processes.stop_all()
