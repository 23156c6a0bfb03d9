"""The one exception type users see: a message that names the problem and the fix."""


class ReproError(Exception):
  """Bad input, a bad path or an incompatible checkpoint.

  The message is one line that says what was wrong and how to fix it; the
  binaries print it without a traceback and exit with code 2.
  """
