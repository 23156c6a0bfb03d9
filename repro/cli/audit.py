"""bin/audit: every link between a run's kept checkpoints retrained and compared (repro.proof.audits)."""

from __future__ import annotations

import sys

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS

def define_flags() -> None:
  flags.DEFINE_string("links", "all", "The links to audit: all, or N of them (evenly spaced; "
                      "the rule is printed).")
  flags.DEFINE_boolean("from_start", False, "Also audit the link from the seed (step 0) to "
                       "the first kept checkpoint.")
  flags.DEFINE_integer("jobs", 1, "Links trained at a time (each in a fresh process).",
                       lower_bound=1)
  flags.DEFINE_string("out", None, "Where to write the report (default <run>.audit.json, "
                      "beside the run).")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/audit RUN: 0 every audited link equal, 1 one differs (or a check fails), 2 bad input."""
  from repro.proof import audits
  if FLAGS.links != "all" and not (FLAGS.links.isdigit() and int(FLAGS.links) > 0):
    common.exit_bad_input(f"--links={FLAGS.links}: pass --links=all or --links=<a number >= 1>")
  links = None if FLAGS.links == "all" else int(FLAGS.links)
  found = audits.audit(argv[1], links, FLAGS.from_start, FLAGS.jobs, FLAGS.out,
                      log=lambda line: print(line, file=sys.stderr))
  common.print_out(audits.report(found))
  return found.exit_code
