"""Per-step JSON-lines logs of a run, cut back to the checkpoint on resume.

metrics.jsonl  {"step", "loss"} for every global step, and {"step", "val_loss",
               "val_accuracy", "lr"} after each evaluation: what a user plots.
trace.jsonl    {"step", "loss", "batch", "params"}: fingerprints of the batch
               indices and of the parameters after each step, and a step-0
               line for the initial parameters; bin/verify finds the first
               step where two runs diverge from them.
events.jsonl   the run's history, never cut back: start, resume, checkpoint, discarded
               and stop events (bin/plot marks them).
timings.jsonl  each chunk's wall time and ms a step, never cut back (speed
               only: it is the one log that differs between equal runs).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from repro.errors import CheckpointWriteError

# The prefixes of metric names: validation, test, and the loss's own metrics.
VAL, TEST, TRAIN = "val_", "test_", "train_"
FILENAME = "metrics.jsonl"
TRACE_FILENAME = "trace.jsonl"
EVENTS_FILENAME = "events.jsonl"
TIMINGS_FILENAME = "timings.jsonl"


def now() -> str:
  """The time of an event, a manifest or an export: UTC, ISO 8601."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def read(path: Path) -> list[dict]:
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      break  # a torn last line from a crash; everything after it is dropped
  return records


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
  """The file system failing under a run's log is the run's write failing: one line, exit 74."""
  try:
    yield
  except OSError as err:
    raise CheckpointWriteError(
        f"cannot write {path}: {err.strerror or err}; the checkpoints finalized before are "
        f"intact and a resume cuts the logs back to them: fix the cause and rerun the same "
        f"command to resume") from None


class MetricsLog:
  """Appends per-step records; records past the resumed step are dropped first.

  Used for metrics.jsonl and trace.jsonl alike.
  """

  def __init__(self, path: Path, resume_step: int | None):
    """resume_step None keeps every record (a history such as events.jsonl)."""
    self.path = path
    with writing(self.path):
      if resume_step is not None:
        kept = [r for r in read(path) if r.get("step", 0) <= resume_step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)
      self._file = open(path, "a")

  def append(self, records: Iterable[dict]) -> None:
    with writing(self.path):
      self._file.write("".join(json.dumps(r) + "\n" for r in records))
      self._file.flush()

  def sync(self) -> None:
    """Makes what was appended durable (called before each checkpoint)."""
    with writing(self.path):
      self._file.flush()
      os.fsync(self._file.fileno())


  def close(self) -> None:
    self._file.close()
