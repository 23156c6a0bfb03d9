"""bin/golden: record a task's bits once, check them on every commit (repro.proof.golden)."""

from __future__ import annotations

import sys

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS
from repro.cli.task_options import OPTION_ARG, read_task_options

RECORD, CHECK = "record", "check"
USAGE = ("bin/golden record [bin/train's flags] [--steps=20] [--out=golden.json], or "
         "bin/golden check FILE")
CHECK_FLAGS = ("strict", "add", "keep")  # what check takes (and the task's location options)
RECORD_ONLY = ("steps", "out")
PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")  # bin/train's, not ours


def define_flags() -> None:
  """bin/golden's flags: bin/train's (the run to record) and how to record or check it."""
  common.define_train_flags()
  flags.DEFINE_integer("steps", 20, "record: the steps to train and record (>= 1).",
                       lower_bound=1)
  flags.DEFINE_string("out", "golden.json", "record: the golden file to write (replaced).")
  flags.DEFINE_boolean("add", False, "check: record this platform class in the file: beside the "
                       "record whose bits it has, or, where the bits differ on a platform class "
                       "the file holds no record for, with its own bits.")
  flags.DEFINE_string("keep", None, "Keep the run in this new directory (for bin/verify and "
                      "bin/replay); default: a temporary directory, removed.")
  FLAGS["strict"].help = ("check: differing bits on a platform class or environment the file "
                          "holds no record for fail (exit 1) instead of exit 3.")


def _log(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _record(option_words: list[str]) -> int:
  if FLAGS["max_steps"].present:
    common.exit_bad_input("bin/golden record takes --steps=N (default 20), not --max_steps")
  if FLAGS["add"].present:
    common.exit_bad_input("--add is bin/golden check's: record writes a new file")
  config = common.config_from_flags(option_words).validate()
  from repro.proof import golden
  done = golden.record(None, config, steps=FLAGS.steps, out=FLAGS.out, keep=FLAGS.keep, log=_log)
  common.print_out(f"recorded {done.path}: task {done.task}, {done.steps} steps, {done.leaves} "
                   f"leaves, on {golden.describe_scope(done.scope)} ({done.seconds:.0f} s); "
                   f"check it with: bin/golden check {done.path}")
  return 0


def _check(path: str, option_words: list[str]) -> int:
  given = sorted(f.name for f in common.flag_fields() if FLAGS[f.name].present
                 and f.name not in CHECK_FLAGS) + [n for n in RECORD_ONLY if FLAGS[n].present]
  if given or FLAGS["config"].present:
    common.exit_bad_input(f"bin/golden check reruns the record's own config: --"
                          f"{(given or ['config'])[0]} is not taken (record again to change "
                          f"it; check takes --strict, --add, --keep and --task.<option> for "
                          f"where the task's files are)")
  from repro import task as task_lib
  from repro.proof import golden
  options = None
  if option_words:
    config = golden.config_of(golden.load(path))
    options = read_task_options(task_lib.recorded(config), config.task, option_words)
  report = golden.check(path, strict=FLAGS.strict, add=FLAGS.add, task_options=options,
                        keep=FLAGS.keep, log=_log)
  common.print_out(golden.format_report(report))
  return report.exit_code


def _one_process() -> None:
  given = [name for name in PROCESS_FLAGS if FLAGS[name].present]
  if given:
    common.exit_bad_input(f"--{given[0]}: bin/golden trains in one process of its own (a "
                          f"multi-process run cannot be recorded)")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/golden record: 0 written, 2 bad input, or the run's own failure's code.

  bin/golden check FILE: 0 every bit agrees, 1 a regression (or --strict and
  another platform class), 2 bad input, 3 the bits differ on a platform
  class or environment the file holds no record for.
  """
  option_words = [w for w in argv[1:] if OPTION_ARG.fullmatch(w)]
  words = [w for w in argv[1:] if not OPTION_ARG.fullmatch(w)]
  _one_process()
  if words[:1] == [RECORD] and len(words) == 1:
    return _record(option_words)
  if words[:1] == [CHECK] and len(words) == 2:
    return _check(words[1], option_words)
  common.exit_bad_input(f"expected {USAGE}; got {' '.join(words) or 'nothing'} (see --helpfull)")
