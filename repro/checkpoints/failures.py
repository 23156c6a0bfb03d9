"""What an exception from Orbax or tensorstore is: the file system failing, a damaged or
missing item, or neither (a bug, which propagates).

Orbax wraps tensorstore's errors in a bare Exception or a ValueError; the
exception's chain, and the operating system's words in it, say which it is.
Every reader and writer of checkpoints classifies by kind(): an I/O error is
never called damage or bad input, damage never an I/O error.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings

from repro.errors import GONE, chain, disk_failed

IO, DAMAGE = "io", "damage"
# What Orbax and tensorstore raise for a damaged or missing item (tensorstore
# reports a corrupt or truncated array file as a ValueError).
_DAMAGE = GONE + (ValueError, KeyError, EOFError)


def kind(err: BaseException) -> str | None:
  """IO for the file system failing (repro.errors.disk_failed: an OSError, or the operating
  system's words in tensorstore's message), DAMAGE for a missing or unparsable item, else
  None."""
  if disk_failed(err):
    return IO
  return DAMAGE if any(isinstance(e, _DAMAGE) for e in chain(err)) else None


_quieted = False  # quiet_closed_loops() ran in this process


def _closed_loop(err: BaseException | None) -> bool:
  return isinstance(err, RuntimeError) and str(err) == "Event loop is closed"


def quiet_closed_loops() -> None:
  """Drops one message, and only it: "RuntimeError: Event loop is closed" from Orbax's writer
  threads, which tensorstore's callbacks raise when a failed save's loop is gone.

  Measured: a full disk or an I/O error during a save printed three to six such
  tracebacks, some before repro's one line (so hooks installed after the failure
  came too late). Any other exception of a thread, or unraisable, is printed as
  Python prints it. Installed once a process, whoever asks first.
  """
  global _quieted
  if _quieted:
    return
  _quieted = True
  thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook
  threading.excepthook = lambda args: (None if _closed_loop(args.exc_value)
                                       else thread_hook(args))
  sys.unraisablehook = lambda unraisable: (None if _closed_loop(unraisable.exc_value)
                                           else unraisable_hook(unraisable))
  logging.getLogger("asyncio").addFilter(
      lambda record: not (record.exc_info and _closed_loop(record.exc_info[1])))


def silence_abandoned_writers() -> None:
  """After a failed write, Orbax's writer threads are abandoned: what they raise is no news.

  Measured: a full disk during a save, then three "RuntimeError: Event loop is
  closed" tracebacks from its background threads after repro's one line.
  """
  threading.excepthook = lambda args: None
  sys.unraisablehook = lambda unraisable: None
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  # and, at exit, "RuntimeWarning: coroutine ... was never awaited" for their unfinished
  # writes (measured: after a failed mkdir of an export).
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
