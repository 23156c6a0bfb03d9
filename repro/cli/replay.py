"""bin/replay: one stored step retrained and compared with the run's trace (repro.proof.replays)."""

from __future__ import annotations

import sys

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS

def define_flags() -> None:
  flags.DEFINE_integer("step", None, "The step to replay (1 <= N <= the run's last step).")
  flags.DEFINE_string("dump", None, "Write the step's batch, gradients and parameters before "
                      "and after to this .npz file.")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/replay RUN --step=N: 0 the replayed step equals the run's trace, 1 it differs, 2 bad
  input."""
  from repro.proof import replays
  if FLAGS.step is None:
    common.exit_bad_input("bin/replay needs --step=N: the step to replay")
  found = replays.replay(argv[1], FLAGS.step, FLAGS.dump,
                        log=lambda line: print(line, file=sys.stderr))
  common.print_out(replays.report(found))
  return 0 if found.equal else 1
