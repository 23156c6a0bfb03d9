#!/usr/bin/env python3
"""bin/train with a SIGKILL at a chosen point: test-only fault injection (tests/test_faults.py).

REPRO_TEST_FAULT=kill_after_chunk:<step>  SIGKILLs the process at the chunk boundary at
                                          <step>, after repro's own components acted
REPRO_TEST_FAULT=kill_in_save:<step>      SIGKILLs it once the checkpoint of <step> has
                                          started writing in the background
REPRO_TEST_FAULT=term_after_chunk:<step>  sends it a SIGTERM there (the run stops at the
                                          next boundary, as for any SIGTERM)
The library itself has no fault hook: this adds a repro.Component to bin/train.
"""

import functools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_tasks
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app  # noqa: E402

import repro  # noqa: E402
from repro import cli  # noqa: E402


class KillAt(repro.Component):
  def __init__(self, spec: str):
    kind, _, step = spec.partition(":")
    self.kind, self.step = kind, int(step)

  def at_boundary(self, ctx: repro.Context) -> None:
    if ctx.step != self.step:
      return
    if self.kind == "term_after_chunk":
      os.kill(os.getpid(), signal.SIGTERM)
    elif self.kind == "kill_after_chunk" or ctx.saved_step == ctx.step:
      os.kill(os.getpid(), signal.SIGKILL)


cli.define_train_flags()

if __name__ == "__main__":
  fault = os.environ.get("REPRO_TEST_FAULT")
  main = functools.partial(cli.train_main, components=[KillAt(fault)] if fault else [])
  app.run(main, flags_parser=cli.parse_flags_or_exit)
