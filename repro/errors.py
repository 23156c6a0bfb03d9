"""The one exception type users see: a message that names the problem and the fix."""


class ReproError(Exception):
  """Bad input, a bad path or an incompatible checkpoint.

  The message is one line that says what was wrong and how to fix it; the
  binaries print it without a traceback and exit with code 2.
  """


class PeerLost(Exception):
  """Another process of a multi-process run died; this one cannot go on alone.

  Nothing since the last finalized checkpoint is kept; restarting every
  process resumes from it. bin/train prints the message and exits 75 at once,
  without waiting for jax.distributed's shutdown barrier, which would wait for
  the dead process's heartbeat timeout and then abort.
  """


def one_line(err: BaseException) -> str:
  """'Type: message' of an exception on one line (for errors in a user's code)."""
  text = " ".join(str(err).split())
  return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
