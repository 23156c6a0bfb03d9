#!/usr/bin/env python3
"""bin/train with a SIGKILL at a chosen point: test-only fault injection (tests/test_faults.py).

REPRO_TEST_FAULT=kill_after_chunk:<step>  SIGKILLs the process at the chunk boundary at
                                          <step>, after repro's own phases acted
REPRO_TEST_FAULT=kill_in_save:<step>      SIGKILLs it once the checkpoint of <step> has
                                          started writing in the background
REPRO_TEST_FAULT=term_after_chunk:<step>  sends it a SIGTERM there (the run stops at that
                                          boundary, after the hooks, as for any SIGTERM)
REPRO_TEST_FAULT=enospc_sync:<step>       the save of <step> fails with ENOSPC ("No space
                                          left on device") before it returns
REPRO_TEST_FAULT=enospc_async:<step>      ... while it is written in the background
The library itself has no fault hook: this adds a repro.Hook to bin/train,
or makes Orbax's writer of JSON items fail as a full disk would.
"""

import errno
import functools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_tasks
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app  # noqa: E402

import repro  # noqa: E402
from repro.cli import common, train  # noqa: E402


class KillAt(repro.Hook):
  def __init__(self, spec: str):
    kind, _, step = spec.partition(":")
    self.kind, self.step = kind, int(step)

  def at_boundary(self, info: repro.StepInfo) -> None:
    if info.step != self.step:
      return
    if self.kind == "term_after_chunk":
      os.kill(os.getpid(), signal.SIGTERM)
    elif self.kind == "kill_after_chunk" or info.checkpoint:
      os.kill(os.getpid(), signal.SIGKILL)


def disk_full_at(step: int, in_background: bool) -> None:
  """Orbax's JSON item writer fails with ENOSPC for the checkpoint of `step`."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

  def full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  original = handler.JsonCheckpointHandler._save_fn if in_background else (
      handler.JsonCheckpointHandler.async_save)

  async def failing(self, *args, **kwargs):
    if any(f"{step}.orbax-checkpoint-tmp" in str(a) for a in (*args, *kwargs.values())):
      full()
    return await original(self, *args, **kwargs)

  name = "_save_fn" if in_background else "async_save"
  setattr(handler.JsonCheckpointHandler, name, failing)


train.define_flags()

if __name__ == "__main__":
  fault = os.environ.get("REPRO_TEST_FAULT", "")
  kind, _, at = fault.partition(":")
  hooks = []
  if kind.startswith("enospc_"):
    disk_full_at(int(at), in_background=kind == "enospc_async")
  elif fault:
    hooks.append(KillAt(fault))
  app.run(functools.partial(train.main, hooks=hooks),
          flags_parser=common.parse_flags_or_exit)
