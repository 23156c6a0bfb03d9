"""One writer per run directory: an flock on <output>/.repro.lock.

The kernel releases an flock when its process dies, SIGKILL included, so a
lock left by a dead run is free and is taken over; its file still names the
dead pid, which is reported.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from repro.errors import CheckpointWriteError, ReproError

FILENAME = ".repro.lock"


class RunLock:
  """Held for the life of a run; `stale_owner` names a dead holder it replaced."""

  def __init__(self, directory: Path):
    self.path = Path(directory) / FILENAME
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = self._read_owner()
      os.close(self._fd)
      raise ReproError(
          f"another run ({owner or 'unknown process'}) is writing {directory}: wait for it "
          f"to finish or stop it, or pass another --output") from None
    self.stale_owner = self._read_owner() or None
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
      os.fsync(self._fd)
    except OSError as err:  # the file system failing, before anything was trained
      os.close(self._fd)
      raise CheckpointWriteError(f"cannot write the run's lock {self.path}: {err.strerror}; "
                                 f"nothing was trained or changed: fix the cause and rerun "
                                 f"the same command") from None

  def _read_owner(self) -> str:
    return os.pread(self._fd, 200, 0).decode(errors="replace").strip()

  def release(self) -> None:
    if self._fd >= 0:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = -1
