"""bin/eval: a stored model evaluated on a split, as a table or JSON."""

from __future__ import annotations

import json

from absl import flags

from repro.cli import common
from repro.cli.common import FLAGS
from repro.cli.task_options import TASK_FLAG, read_task_options
from repro.config import DEFAULT_TASK

def define_flags() -> None:
  """bin/eval's flags: which checkpoint, which split, the output form, the task's options."""
  from repro.model.evaluation import PREFIXES
  common.define_step_flag("to evaluate")
  flags.DEFINE_enum("split", "test", list(PREFIXES), "The split to evaluate (validation: the "
                    "run's, held out as it was).")
  flags.DEFINE_boolean("json", False, "Print one JSON object instead of the table.")
  flags.DEFINE_string(TASK_FLAG, None, "Evaluate as this task (package.module:attr; default: "
                      "the run's). Options that change only what is evaluated may be set with "
                      "--task.<option>=value, e.g. --task.test_examples=10000.")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/eval RUN: 0 evaluated, 2 bad input. argv: RUN and the --task.<option> arguments."""
  from repro.model import evaluation
  from repro.checkpoints import stored
  from repro import task as task_lib
  from repro.machine import environment
  environment.settle_imports()
  step = common.step_of(FLAGS.step)
  spec = FLAGS.task or stored.find(argv[1], step).config.get("task", DEFAULT_TASK)
  task = task_lib.resolve(spec)
  options = read_task_options(task, spec, argv[2:])
  found = evaluation.evaluate(argv[1], step, FLAGS.split, task if FLAGS.task else None, options)
  common.print_out(json.dumps(found.to_dict(), sort_keys=True) if FLAGS.json else evaluation.table(found))
  return 0
