"""What every binary shares: one absl parser, flags -> Config, errors -> one line and an exit code.

One parser reads a command line: absl's, with one flag per Config field (its
type, default and help come from the field) and the process flags; a task's
--task.<option> arguments are taken out first (repro.cli.task_options) and
read once the task is known. A bad flag, argument or config is one line on
stderr and exit 2; a main wrapped in one_line_errors turns repro's errors into
one line and their exit codes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import typing
from pathlib import Path
from typing import NoReturn, Sequence

from absl import flags, logging

from repro.cli.task_options import (OPTION_ARG, TASK_FLAG, named_task, read_task_options,
                                    take_task_options)
from repro.config import Config
from repro.errors import (CheckpointReadError, CheckpointWriteError, DataReadError,
                          NonFiniteLoss, OutputWriteError, ReproError, os_cause, squeezed)

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2
OPTIONS_FIELD = "task_options"  # the Config field that the --task.<option> arguments fill
HELP_FLAGS = ("help", "helpfull", "helpshort", "helpxml", "h", "?")  # absl's


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


def flag_fields() -> list[dataclasses.Field]:
  """The Config fields that are flags: all but the task's options (--task.<option>)."""
  return [field for field in dataclasses.fields(Config) if field.name != OPTIONS_FIELD]


def define_train_flags() -> None:
  """bin/train's flags: one per Config field (--task among them), --config, the process flags."""
  hints = typing.get_type_hints(Config)
  for field in flag_fields():
    _define_config_flag(field, hints[field.name])
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a multi-process "
                      "run (jax.distributed); default $JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_string("config", None, "A JSON config (as written to <output>/config.json); "
                      "flags given explicitly override it.")


def _describe_task(spec: str) -> None:
  """--task's help names task `spec`'s options and their defaults (for --help)."""
  from repro import task as task_lib  # imports JAX: only once the flags ask for a task
  try:
    options = task_lib.resolve(spec).options()
  except ReproError as err:
    exit_bad_input(str(err))
  field = next(field for field in flag_fields() if field.name == TASK_FLAG)
  defaults = ",\n".join(f"{name}={value!r}" for name, value in options.items())
  FLAGS[TASK_FLAG].help = (  # one option a line: absl wraps lines at spaces and hyphens
      f"{field.metadata['help']} It names a repro.Task class, instance or factory. Its options "
      f"are set with --task.<option>=value (before or after --task) and recorded in "
      f"config.json; with their defaults:\n{spec}({defaults})")


def _is_help(word: str) -> bool:
  return word.startswith("-") and word.lstrip("-").split("=")[0] in HELP_FLAGS


def exit_bad_input(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def parse_flags_or_exit(argv: list[str], positional: int = 0, usage: str = "") -> list[str]:
  """absl's parser, but a bad flag is one line on stderr and exit code 2.

  Returns absl's leftovers (the program name and the positional arguments)
  followed by the task-option arguments, which config_from_flags reads once
  the task is known. `positional` is how many arguments besides flags the
  binary takes (-1: one or more; `usage` says which, when none is given).
  """
  takes_task = TASK_FLAG in FLAGS
  argv, option_words = take_task_options(argv) if takes_task else (argv, [])
  asked = any(_is_help(word) for word in argv[1:])
  if asked and takes_task:
    _describe_task(named_task(argv))
  try:
    rest = FLAGS(argv)
  except SystemExit as stop:  # absl exits 1 after --help/--helpfull: asked for, so 0
    sys.exit(0 if asked and stop.code == 1 else stop.code)
  except flags.Error as err:
    exit_bad_input(f"{squeezed(err, 10**6)} (see --helpfull)")
  given = len(rest) - 1
  if positional == -1 and given < 1:
    exit_bad_input(f"expected {usage or 'at least one argument'} (see --helpfull)")
  if positional == 0 and given:
    exit_bad_input(f"unexpected argument(s) {' '.join(rest[1:])}: every setting is a --flag "
                    f"(see --helpfull)")
  if positional > 0 and given != positional:
    exit_bad_input(f"expected {positional} arguments, got {given} (see --helpfull)")
  return rest + option_words


def parse_flags_or_exit_with_run(argv: list[str]) -> list[str]:
  """parse_flags_or_exit for a binary of one positional RUN and the task-option arguments."""
  rest = parse_flags_or_exit(argv, positional=-1)
  runs = [word for word in rest[1:] if not OPTION_ARG.fullmatch(word)]
  if len(runs) != 1:
    exit_bad_input(f"expected one RUN, got {len(runs)}: {' '.join(runs) or 'none'} "
                    f"(see --helpfull)")
  return rest


def config_from_flags(option_words: Sequence[str] = ()) -> Config:
  """--config's JSON (or the defaults), overridden by the flags given explicitly.

  --task=spec replaces the task (and drops the JSON's options for another
  task); each of `option_words` (--task.<option>=value, from
  parse_flags_or_exit) overrides one option of the task the run will use.
  A ReproError if that task cannot be built or an option is bad.
  """
  base = _json_config(FLAGS.config) if FLAGS.config else Config()
  changes = {f.name: FLAGS[f.name].value for f in flag_fields() if FLAGS[f.name].present}
  base.replace(**changes).validate()  # a bad value is refused before the task is imported
  from repro import task as task_lib  # imports JAX
  spec = changes.get(TASK_FLAG, base.task)
  options = dict(base.task_options) if spec == base.task else {}
  options.update(read_task_options(task_lib.resolve(spec), spec, option_words))
  return base.replace(**changes, **{OPTIONS_FIELD: options})


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


def exit_at_once(err: Exception) -> NoReturn:
  """One line and err's exit code, now: after a failed read or write, Orbax's threads may wait
  for what will never come, and Python's exit would wait for them (measured: bin/export after
  an EIO from mkdir printed its line, then hung)."""
  print(f"error: {err}", file=sys.stderr, flush=True)
  try:
    sys.stdout.flush()
  except OSError:
    pass  # stdout is what failed: its line is the one above
  os._exit(err.exit_code)


def one_line_errors(main):
  """A binary's main: quiet absl logging, and a ReproError becomes one line and exit 2."""

  @functools.wraps(main)
  def wrapped(argv: list[str], **kwargs) -> int:
    if not FLAGS["verbosity"].present:  # repro says what matters in its own lines;
      logging.set_verbosity(logging.FATAL)  # Orbax, TFDS, ...: -v 0 shows their logs
    try:
      return main(argv, **kwargs)
    except (ReproError, NonFiniteLoss, DataReadError) as err:
      print(f"error: {err}", file=sys.stderr)
      return err.exit_code
    except (CheckpointReadError, CheckpointWriteError, OutputWriteError) as err:
      exit_at_once(err)
    except BrokenPipeError:  # `bin/train | head`: the reader has all it wanted
      _drop_stdout()
      return 0

  return wrapped


def print_out(text: str) -> None:
  """Prints a command's output; OutputWriteError (exit 74) if stdout's file cannot take it."""
  try:
    print(text, flush=True)
  except BrokenPipeError:  # `bin/verify A B | head`: the verdict still goes in the exit code
    _drop_stdout()
  except OSError as err:  # `bin/eval --json > out.json` on a full or failing disk
    _drop_stdout()  # what stays buffered is not written again at exit
    raise OutputWriteError(f"cannot write the output to stdout: {os_cause(err)}; free space "
                           f"or fix the file system and rerun") from None


def define_step_flag(what: str) -> None:
  flags.DEFINE_string("step", "latest", f"The checkpoint {what}: latest, best (the kept best "
                      f"validation result) or a step number.")


def step_of(text: str) -> int | str | None:
  if text == "latest":
    return None
  if text == "best" or text.isdigit():
    return text if text == "best" else int(text)
  exit_bad_input(f"--step={text}: pass --step=latest, --step=best or --step=<a step number>")
