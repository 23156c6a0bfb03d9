"""The exceptions users see: each a message naming the problem and the fix, and an exit code.

bin/train prints the message as one line `error: ...` and exits with the
class's exit_code (docs/faults.md's table of exit codes is this file):
  2   ReproError      bad input, a bad task, an incompatible resume
  3   NonFiniteLoss   the loss became NaN or infinite; nothing non-finite was saved
  74  CheckpointWriteError  a checkpoint could not be written (disk full, I/O error)
  74  CheckpointReadError   a checkpoint could not be read (an I/O error; nothing renamed)
  74  OutputWriteError      a command's output (an export, what bin/eval prints) could not
                            be written; nothing half-written is left in its place
  74  DataReadError   a data source could not be read (an I/O error, not damaged data)
  75  PeerLost        another process of the run died (a signal also exits 75)
"""

import os
import re


class ReproError(Exception):
  """Bad input, a bad path, a bad task or an incompatible checkpoint."""

  exit_code = 2


def writable_directory(path, name: str, fix: str) -> None:
  """Makes the directory `path` (a pathlib.Path); ReproError (one line: `name`, the cause,
  `fix`) if it cannot be made or written."""
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ReproError(f"cannot create {name} {path} ({err.strerror}): {fix}") from None
  if not os.access(path, os.W_OK):
    raise ReproError(f"{name} {path} is not writable: {fix}")


class NonFiniteLoss(Exception):
  """The loss (or the state about to be saved) became NaN or infinite.

  The run stops at once: no non-finite state is saved, so no finite
  checkpoint is rotated away. Rerunning with other settings (a lower learning
  rate, gradient clipping) and a new --output trains again; --allow_nonfinite
  trains on regardless.
  """

  exit_code = 3


class CheckpointWriteError(Exception):
  """A checkpoint could not be written: the disk is full or the file system failed.

  The half-written step is discarded and the finalized ones are intact;
  rerunning once the cause is fixed resumes from the newest of them, bitwise.
  bin/train exits at once: the checkpoint writer's threads are abandoned.
  """

  exit_code = 74  # EX_IOERR


class CheckpointReadError(Exception):
  """A checkpoint could not be read because the file system failed (not because it is damaged).

  Nothing is renamed or set aside: the checkpoint may be intact. Rerunning once
  the disk is healthy resumes from it.
  """

  exit_code = 74  # EX_IOERR


class OutputWriteError(Exception):
  """A command's output could not be written: the disk is full or the file system failed.

  An export is written beside its --out and renamed into place, so a failed one
  leaves nothing at --out; rerunning once the cause is fixed writes it whole.
  """

  exit_code = 74  # EX_IOERR


class DataReadError(Exception):
  """A data source could not be read because the file system failed (not because it is damaged).

  The run stops at the chunk being read; the finalized checkpoints are intact.
  Rerunning once the disk is healthy resumes from the newest of them, bitwise.
  """

  exit_code = 74  # EX_IOERR


class PeerLost(Exception):
  """Another process of a multi-process run died; this one cannot go on alone.

  Nothing since the last finalized checkpoint is kept; restarting every
  process resumes from it. bin/train prints the message and exits 75 at once,
  without waiting for jax.distributed's shutdown barrier, which would wait for
  the dead process's heartbeat timeout and then abort.
  """

  exit_code = 75  # EX_TEMPFAIL, as for a stop by a signal


def exit_code_of(err: BaseException) -> int:
  """The documented exit code of an exception (1 for one of no repro class)."""
  return getattr(err, "exit_code", 1)


def squeezed(text: str, limit: int = 160) -> str:
  """`text` on one line (runs of whitespace become one space), cut to `limit` characters."""
  return " ".join(str(text).split())[:limit]


def one_line(err: BaseException) -> str:
  """'Type: message' of an exception on one line (for errors in a user's code)."""
  text = squeezed(err, 200)
  return f"{type(err).__name__}: {text}" if text else type(err).__name__


_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
# A file that vanished: the data or the checkpoint is gone, the disk did not fail.
GONE = (FileNotFoundError, NotADirectoryError)
# The operating system's words for the file system failing, in the messages of libraries
# that raise their own types (tensorstore, array_record: "read() failed: Input/output
# error"; tensorstore also names the errno: "[os_error_code='5']").
_IO_WORDS = re.compile(r"Input/output error|Permission denied|Stale file handle|UNAVAILABLE|"
                       r"No space left|Disk quota|Read-only file system|RESOURCE_EXHAUSTED|"
                       r"os_error_code='\d+'")


def chain(err: BaseException | None):
  """err, its cause or context, theirs, ..."""
  while err is not None:
    yield err
    err = err.__cause__ or err.__context__


def disk_failed(err: BaseException) -> bool:
  """Whether `err` is the file system failing: an OSError in its chain (but a vanished
  file), or the operating system's words for it in a library's own error."""
  return any(isinstance(e, OSError) and not isinstance(e, GONE) or _IO_WORDS.search(str(e))
             for e in chain(err))


def os_cause(err: BaseException) -> str:
  """The operating system's words for what failed (e.g. 'No space left on device').

  The first OSError in the exception's chain names it; otherwise the
  exception's own first line.
  """
  seen = err
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    code = _OS_ERROR_CODE.search(str(seen))  # tensorstore's words for an errno
    if code:
      return os.strerror(int(code[1]))
    seen = seen.__cause__ or seen.__context__
  return one_line(err)
