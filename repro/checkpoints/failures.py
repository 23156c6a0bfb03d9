"""What an exception from Orbax or tensorstore is: the file system failing, a damaged or
missing item, or neither (a bug, which propagates).

Orbax wraps tensorstore's errors in a bare Exception or a ValueError; the
exception's chain, and the operating system's words in it, say which it is.
Every reader and writer of checkpoints classifies by kind(): an I/O error is
never called damage or bad input, damage never an I/O error.
"""

from __future__ import annotations

import re
from typing import Iterator

IO, DAMAGE = "io", "damage"
# What Orbax and tensorstore raise for a damaged or missing item (tensorstore
# reports a corrupt or truncated array file as a ValueError).
MISSING = (FileNotFoundError, NotADirectoryError)
_DAMAGE = MISSING + (ValueError, KeyError, EOFError)
# The operating system's words, in tensorstore's messages, for the file system failing.
# (tensorstore also names the errno: "[os_error_code='5']".)
_IO_WORDS = re.compile(r"Input/output error|Permission denied|Stale file handle|UNAVAILABLE|"
                       r"No space left|Disk quota|Read-only file system|RESOURCE_EXHAUSTED|"
                       r"os_error_code='\d+'")


def chain(err: BaseException | None) -> Iterator[BaseException]:
  """err, its cause or context, theirs, ..."""
  while err is not None:
    yield err
    err = err.__cause__ or err.__context__


def kind(err: BaseException) -> str | None:
  """IO for the file system failing, DAMAGE for a missing or unparsable item, else None."""
  errors = list(chain(err))
  if any(isinstance(e, OSError) and not isinstance(e, MISSING) or _IO_WORDS.search(str(e))
         for e in errors):
    return IO
  return DAMAGE if any(isinstance(e, _DAMAGE) for e in errors) else None
