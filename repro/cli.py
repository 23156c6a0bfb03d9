"""The absl faces of repro: flags -> Config -> run(), errors -> one line and exit 2."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import typing

from absl import flags, logging
from ml_collections import config_flags

from repro import task as task_lib
from repro.config import Config
from repro.errors import CheckpointWriteError, NonFiniteLoss, PeerLost, ReproError
from repro.stop import EXIT_STOPPED
from repro.tasks import DEFAULT as DEFAULT_TASK

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2


def _define_config_flag(field: dataclasses.Field, kind) -> None:
  """The --flag of one Config field: its type, default and help come from the field."""
  name, default, help_text = field.name, field.default, field.metadata["help"]
  if "choices" in field.metadata:
    flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text)
  elif kind is bool:
    flags.DEFINE_boolean(name, default, help_text)
  elif kind in (int, int | None):
    flags.DEFINE_integer(name, default, help_text)
  elif kind is float:
    flags.DEFINE_float(name, default, help_text)
  else:
    flags.DEFINE_string(name, default, help_text)


def _task_options(spec: str):
  """The options of task `spec` as a mutable dataclass for ml_collections' overrides.

  Its field types are the task's resolved annotations, so --task.x=value is
  parsed and checked as the task declares it. A ValueError (one line) if the
  task cannot be imported or built.
  """
  try:
    task = task_lib.resolve(spec)
  except ReproError as err:
    raise ValueError(str(err)) from None
  values = task.options()
  try:
    hints = typing.get_type_hints(type(task))
  except Exception:  # unresolvable annotations: fall back to the values' types
    hints = {}
  fields = [(name, hints.get(name, type(value)), dataclasses.field(default=value))
            for name, value in values.items()]
  body = ", ".join(f"{k}={v!r}" for k, v in values.items())
  options = dataclasses.make_dataclass(
      "TaskOptions", fields, repr=False,
      namespace={"__repr__": lambda self: f"{spec}({body})"})
  return options()


def define_train_flags() -> None:
  """bin/train's flags: one per Config field, --task, --config and the process flags."""
  hints = typing.get_type_hints(Config)
  for field in dataclasses.fields(Config):
    if field.name not in ("task", "task_options"):
      _define_config_flag(field, hints[field.name])
  try:  # without --task=, ml_collections resolves --task.<option> flags here already
    config_flags.DEFINE_config_dataclass(
        "task", _task_options(DEFAULT_TASK),
        "The task, as package.module:attr (a repro.Task class, instance or factory); default "
        f"{DEFAULT_TASK}. Its options are set with --task.<option>=value and recorded in "
        "config.json.", parse_fn=_task_options)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as err:
    _exit_bad_task_flag(sys.argv, err)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a multi-process "
                      "run (jax.distributed); default $JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_string("config", None, "A JSON config (as written to <output>/config.json); "
                      "flags given explicitly override it.")


def _exit_bad_task_flag(argv: list[str], err: Exception) -> None:
  """One line for a bad --task or --task.<option>, naming the task's options; exit 2."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(("--task=", "-task="))),
              DEFAULT_TASK)
  try:
    known = sorted(f.name for f in dataclasses.fields(_task_options(spec)))
  except ValueError as bad_task:
    print(f"error: {bad_task}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  given = [a.lstrip("-").split("=")[0].split(".", 1)[1] for a in argv
           if a.lstrip("-").startswith(("task.", "notask."))]
  unknown = sorted({g.split(".")[0] for g in given} - set(known))
  what = (f"task {spec} has no option {', '.join(unknown)}" if unknown
          else " ".join(str(err).split()))
  print(f"error: {what}; its options: {', '.join(known) or 'none'} (--task.<option>=value)",
        file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def parse_flags_or_exit(argv: list[str], positional: int = 0) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr and exit code 2.

  `positional` is how many arguments besides flags the binary takes (-1: one
  or more).
  """
  try:
    rest = FLAGS(argv)
  except SystemExit as stop:  # absl exits 1 after --help/--helpfull: asked for, so 0
    asked = any(a.lstrip("-").split("=")[0] in ("help", "helpfull", "helpshort", "helpxml", "h", "?")
                for a in argv[1:])
    sys.exit(0 if asked and stop.code == 1 else stop.code)
  except flags.Error as err:
    print(f"error: {' '.join(str(err).split())} (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  except (KeyError, AttributeError) as err:  # ml_collections: --task.<no such option>
    _exit_bad_task_flag(argv, err)
  if positional == -1 and len(rest) < 2:
    print("error: expected at least one argument (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if positional == 0 and len(rest) > 1:
    print(f"error: unexpected argument(s) {' '.join(rest[1:])}: every setting is a "
          f"--flag (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if positional > 0 and len(rest) - 1 != positional:
    print(f"error: expected {positional} arguments, got {len(rest) - 1} "
          f"(see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  return rest


def config_from_flags() -> Config:
  """--config's JSON (or the defaults), overridden by the flags given explicitly.

  --task=spec replaces the task (and drops the JSON's options for another
  task); --task.<option>=value overrides one option.
  """
  names = [f.name for f in dataclasses.fields(Config) if f.name not in ("task", "task_options")]
  base = _json_config(FLAGS.config) if FLAGS.config else Config()
  changes = {name: FLAGS[name].value for name in names if FLAGS[name].present}
  task_flag = FLAGS["task"]
  spec = task_flag.config_filename if isinstance(task_flag.config_filename, str) else DEFAULT_TASK
  options = dict(base.task_options) if (not task_flag.present or spec == base.task) else {}
  options.update(task_flag.override_values)
  if task_flag.present:
    changes["task"] = spec
  return base.replace(**changes, task_options=options)


def _json_config(path_text: str) -> Config:
  path = Path(path_text).expanduser()
  try:
    values = json.loads(path.read_text())
  except OSError as err:
    raise ReproError(f"cannot read --config {path} ({err.strerror}): pass a JSON file") from None
  except json.JSONDecodeError as err:
    raise ReproError(f"--config {path} is not valid JSON ({err.msg} at line {err.lineno}): "
                     f"fix the file") from None
  if not isinstance(values, dict):
    raise ReproError(f"--config {path} must hold a JSON object of config fields")
  return Config.from_dict(values)


def _drop_stdout() -> None:
  """Points stdout at /dev/null, so that a closed pipe raises no error at exit."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _one_line_errors(main):
  """A binary's main: quiet absl logging, and a ReproError becomes one line and exit 2."""

  @functools.wraps(main)
  def wrapped(argv: list[str], **kwargs) -> int:
    if not FLAGS["verbosity"].present:  # repro says what matters in its own lines;
      logging.set_verbosity(logging.FATAL)  # Orbax, TFDS, ...: -v 0 shows their logs
    try:
      return main(argv, **kwargs)
    except (ReproError, NonFiniteLoss) as err:
      print(f"error: {err}", file=sys.stderr)
      return err.exit_code
    except BrokenPipeError:  # `bin/train | head`: the reader has all it wanted
      _drop_stdout()
      return 0

  return wrapped


@_one_line_errors
def train_main(argv: list[str], hooks=()) -> int:
  """bin/train: 0 done, 2 bad input, 75 stopped with a checkpoint (rerun to resume).

  hooks: repro.Hooks for the run (tests add fault injection here).
  """
  del argv
  config = config_from_flags().validate()
  from repro import parallel  # imports jax: after the flags are known to be good
  if (FLAGS.coordinator_address or FLAGS.num_processes is not None
      or FLAGS.process_id is not None or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from repro.runner import run
  try:
    result = run(config, hooks=hooks)
  except (PeerLost, CheckpointWriteError) as err:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # At once: jax.distributed's exit barrier would wait for a dead process, and a
    # failed checkpoint writer's threads for what will never come.
    os._exit(err.exit_code)
  if not parallel.is_primary():
    return EXIT_STOPPED if result.stopped_by else 0
  if result.stopped_by:
    print(f"stopped: {result.stopped_by} at step {result.step}; checkpoint "
          f"{result.checkpoint or 'none (nothing trained yet)'}; rerun the same command to resume")
    return EXIT_STOPPED
  tests = "".join(f", test {name[5:]} {value:.4f}" for name, value in sorted(result.test.items()))
  if not result.already_complete:
    print(f"done: step {result.step}, loss {result.loss:.4f}{tests}; checkpoint "
          f"{result.checkpoint}")
  else:
    print(f"done: step {result.step} (already complete){tests}; checkpoint {result.checkpoint}")
  return 0


@_one_line_errors
def verify_main(argv: list[str]) -> int:
  """bin/verify RUN_A RUN_B: 0 bitwise identical, 1 different, 2 bad input."""
  from repro import verify
  comparison = verify.compare(argv[1], argv[2])
  try:
    print(verify.report(comparison), flush=True)
  except BrokenPipeError:  # `bin/verify A B | head`: the verdict still goes in the exit code
    _drop_stdout()
  return 0 if comparison.identical else 1


def define_plot_flags() -> None:
  flags.DEFINE_string("out", "plot.png", "Where to write the PNG.")


@_one_line_errors
def plot_main(argv: list[str]) -> int:
  """bin/plot RUN [RUN ...] --out=plot.png: loss and accuracy curves, overlaid."""
  from repro import plot
  print(f"wrote {plot.plot(argv[1:], FLAGS.out)}")
  return 0


def checker_pairs() -> tuple[str, ...]:
  from repro.checker import PAIRS  # imports jax: only for bin/check
  return PAIRS


def define_check_flags() -> None:
  """bin/check's flags: bin/train's (the run to check) and how to check it."""
  define_train_flags()
  flags.DEFINE_integer("check_steps", 20, "Steps of each run of the check (>= 2).", lower_bound=2)
  flags.DEFINE_string("check_dir", None, "Keep the check's runs here (default: a temporary "
                      "directory, removed).")
  flags.DEFINE_integer("jobs", 0, "Runs at a time (0: one per CPU).", lower_bound=0)
  flags.DEFINE_list("check_pairs", list(checker_pairs()), "The rows to run: "
                    + ",".join(checker_pairs()) + " (default all).")


@_one_line_errors
def check_main(argv: list[str]) -> int:
  """bin/check: 0 every promise holds for the task here, 1 something does not, 2 bad input."""
  del argv
  config = config_from_flags().validate()
  from repro import checker
  report = checker.check(config, steps=FLAGS.check_steps, pairs=tuple(FLAGS.check_pairs),
                         jobs=FLAGS.jobs,
                         workdir=FLAGS.check_dir, log=lambda line: print(line, file=sys.stderr))
  print(checker.format_report(report), flush=True)
  return report.exit_code
