"""SIGTERM and SIGINT ask a run to stop at the next chunk boundary with a checkpoint."""

from __future__ import annotations

import signal
import threading

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint saved; rerun to resume


class StopRequests:
  """Context manager: while active, SIGTERM/SIGINT set `signal_name` instead of killing.

  A second signal of the same kind while a stop is pending is ignored; the run
  is already on its way out with a checkpoint. Outside the main thread (where
  Python cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
