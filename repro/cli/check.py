"""bin/check: is a task reproducible here? Pairs of short runs in fresh processes (repro.proof.checker)."""

from __future__ import annotations

import sys

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS

def checker_pairs() -> tuple[str, ...]:
  from repro.proof.checker import PAIRS  # imports jax: only for bin/check
  return PAIRS


def define_flags() -> None:
  """bin/check's flags: bin/train's (the run to check) and how to check it."""
  common.define_train_flags()
  flags.DEFINE_integer("check_steps", 20, "Steps of each run of the check (>= 2).", lower_bound=2)
  flags.DEFINE_string("check_dir", None, "Keep the check's runs here (default: a temporary "
                      "directory, removed).")
  flags.DEFINE_integer("jobs", 0, "Runs at a time (0: one per CPU).", lower_bound=0)
  flags.DEFINE_list("check_pairs", list(checker_pairs()), "The rows to run: "
                    + ",".join(checker_pairs()) + " (default all).")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/check: 0 every promise holds for the task here, 1 something does not, 2 bad input.

  argv: from parse_flags_or_exit, the program name and the --task.<option> arguments.
  """
  config = common.config_from_flags(argv[1:]).validate()
  from repro.proof import checker
  report = checker.check(config, steps=FLAGS.check_steps, pairs=tuple(FLAGS.check_pairs),
                         jobs=FLAGS.jobs,
                         workdir=FLAGS.check_dir, log=lambda line: print(line, file=sys.stderr))
  print(checker.format_report(report), flush=True)
  return report.exit_code
