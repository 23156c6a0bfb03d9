"""bin/export: a run's model written as a plain Orbax tree with its digests and lineage."""

from __future__ import annotations

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS

def define_flags() -> None:
  from repro.model.exports import DTYPES
  common.define_step_flag("to export")
  flags.DEFINE_string("out", None, "The export's directory (new).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "The dtype of the floating-point weights.")
  flags.mark_flag_as_required("out")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/export RUN --out=DIR: 0 written, 2 bad input."""
  from repro.model.exports import export
  from repro.machine import environment
  environment.settle_imports()
  out = export(argv[1], FLAGS.out, common.step_of(FLAGS.step), FLAGS.dtype)
  print(f"exported {argv[1]} to {out} ({FLAGS.dtype}): restore {out}/model with Orbax, or "
        f"repro.load({str(out)!r})")
  return 0
