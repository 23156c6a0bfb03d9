"""bin/verify: two runs compared bit for bit, or a model's lineage checked."""

from __future__ import annotations

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS

def define_flags() -> None:
  flags.DEFINE_boolean("lineage", False, "bin/verify --lineage RUN: check each ancestor of "
                       "RUN's model (what it was warm-started or exported from) against its "
                       "recorded digest: intact, changed or missing.")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/verify RUN_A RUN_B: 0 bitwise identical, 1 different, 2 bad input.

  bin/verify --lineage RUN: 0 no ancestor changed, 1 one did, 2 bad input.
  """
  wanted = 1 if FLAGS.lineage else 2
  if len(argv) - 1 != wanted:
    common.exit_bad_input(f"expected {'RUN' if wanted == 1 else 'RUN_A RUN_B'}, got {len(argv) - 1} "
                    f"argument(s) (see --helpfull)")
  if FLAGS.lineage:
    from repro.proof import lineage
    checked = lineage.check(argv[1])
    common.print_out(lineage.report(checked))
    return checked.exit_code
  from repro.proof import verify
  comparison = verify.compare(argv[1], argv[2])
  common.print_out(verify.report(comparison))
  return 0 if comparison.identical else 1
