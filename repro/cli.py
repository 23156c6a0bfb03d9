"""The absl faces of repro: flags -> Config -> run(), errors -> one line and exit 2.

One parser reads a command line: absl's, with one flag per Config field (its
type, default and help come from the field) and the process flags. A task's
options are not absl flags, since which ones exist depends on the task:
parse_flags_or_exit takes every --task.<option>=value out of argv before absl
parses the rest, and config_from_flags reads them against the task the run
will use (--task, else --config's task, else the default), each typed as the
task declares it. So --task and its options may come in any order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from absl import flags, logging

from repro import backend
from repro import task as task_lib
from repro.config import Config
from repro.errors import (CheckpointReadError, CheckpointWriteError, NonFiniteLoss, PeerLost,
                          ReproError, squeezed)
from repro.identity import DEFAULT_TASK
from repro.metrics import TEST
from repro.stop import EXIT_STOPPED

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2
TASK_FLAG = "task"  # the Config field, and its flag, that names the task
OPTIONS_FIELD = "task_options"  # the Config field that the --task.<option> arguments fill
HELP_FLAGS = ("help", "helpfull", "helpshort", "helpxml", "h", "?")  # absl's
# A task-option argument: --task.<option>=value, or --task.<option> / --notask.<option>
# alone (a bool option's switch); one or two dashes, as for absl's flags.
_OPTION_ARG = re.compile(rf"--?(?P<no>no(?={TASK_FLAG}\.[^=]*$))?{TASK_FLAG}\."
                         rf"(?P<name>[^=]*)(?:=(?P<text>.*))?", re.DOTALL)
_NONE_WORDS = ("None", "none")  # the value None of an `X | None` option


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


def _flag_fields() -> list[dataclasses.Field]:
  """The Config fields that are flags: all but the task's options (--task.<option>)."""
  return [field for field in dataclasses.fields(Config) if field.name != OPTIONS_FIELD]


def define_train_flags() -> None:
  """bin/train's flags: one per Config field (--task among them), --config, the process flags."""
  hints = typing.get_type_hints(Config)
  for field in _flag_fields():
    _define_config_flag(field, hints[field.name])
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a multi-process "
                      "run (jax.distributed); default $JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_string("config", None, "A JSON config (as written to <output>/config.json); "
                      "flags given explicitly override it.")


def _take_task_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """argv without its task-option arguments, and those, each as one word.

  absl's two-word form `--task.x value` becomes `--task.x=value` (where the
  value does not start with '-'). Nothing after `--` is taken.
  """
  kept, taken, words = [], [], list(argv)
  while words:
    word = words.pop(0)
    if word == "--":
      return [*kept, word, *words], taken
    match = _OPTION_ARG.fullmatch(word)
    if not match:
      kept.append(word)
    elif match["text"] is None and not match["no"] and words and not words[0].startswith("-"):
      taken.append(f"{word}={words.pop(0)}")
    else:
      taken.append(word)
  return kept, taken


def _read_bool(text: str) -> bool:
  words = {"true": True, "1": True, "false": False, "0": False}
  if text.lower() not in words:
    raise ValueError(text)
  return words[text.lower()]


# How an option of each plain type is read from its text, and that type in words.
_READERS = {bool: (_read_bool, "a bool (true, false, 1 or 0)"), int: (int, "an integer"),
            float: (float, "a number"), str: (str, "a string")}


def _non_none(hint):
  """X of an `X | None` (or Optional[X]) type; any other type itself."""
  args = typing.get_args(hint)
  if (typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2
      and type(None) in args):
    return next(arg for arg in args if arg is not type(None))
  return hint


def _read_json(kind: type | None, text: str) -> Any:
  """A JSON value, which must be a `kind` (a JSON list reads as a tuple where one is declared)."""
  value = json.loads(text)  # json.JSONDecodeError is a ValueError
  if kind is tuple and isinstance(value, list):
    value = tuple(value)
  if kind is not None and not isinstance(value, kind):
    raise ValueError(text)
  return value


def _reader(hint) -> tuple[Callable[[str], Any], str]:
  """How to read an option of type `hint` from its text, and that type in words.

  bool, int, float and str as such, `X | None` as X or None, any other type
  as a JSON value of it.
  """
  inner = _non_none(hint)
  if inner is not hint:
    read, what = _reader(inner)
    return (lambda text: None if text in _NONE_WORDS else read(text)), f"{what} or None"
  if hint in _READERS:
    return _READERS[hint]
  kind = typing.get_origin(hint) or hint
  kind = kind if isinstance(kind, type) and kind is not Any else None
  return functools.partial(_read_json, kind), f"a JSON {kind.__name__ if kind else 'value'}"


def _option_types(task: task_lib.Task) -> dict[str, Any]:
  """Each option's type: as the task's class declares it, else its default value's type."""
  try:
    hints = typing.get_type_hints(type(task))
  except (NameError, TypeError, AttributeError, SyntaxError):  # annotations that do not resolve
    hints = {}
  return {name: hints.get(name, Any if value is None else type(value))
          for name, value in task.options().items()}


def _option_value(match: re.Match, kind, spec: str) -> Any:
  """The value of one task-option argument, for an option of type `kind`."""
  name, text = match["name"], match["text"]
  read, what = _reader(kind)
  if text is not None:
    try:
      return read(text)
    except ValueError:
      raise ReproError(f"--task.{name}={text}: task {spec} takes {what} for {name}") from None
  if _non_none(kind) is not bool:  # --task.x or --notask.x alone: a bool's switch
    raise ReproError(f"--task.{name} needs a value: pass --task.{name}=<{what}>")
  return not match["no"]


def read_task_options(task: task_lib.Task, spec: str, words: Sequence[str]) -> dict[str, Any]:
  """The options that `words` (--task.<option>=value, ...) set, typed as `task` declares them.

  A ReproError names the task's options for an unknown one, and the expected
  type for a value that is not of it. A later word wins, as for absl's flags.
  """
  kinds = _option_types(task)
  matches = [_OPTION_ARG.fullmatch(word) for word in words]
  unknown = sorted({match["name"] for match in matches} - set(kinds))
  if unknown:
    raise ReproError(f"task {spec} has no option {', '.join(unknown)}; its options: "
                     f"{', '.join(sorted(kinds)) or 'none'} (--task.<option>=value)")
  return {match["name"]: _option_value(match, kinds[match["name"]], spec) for match in matches}


def _describe_task(spec: str) -> None:
  """--task's help names task `spec`'s options and their defaults (for --help)."""
  try:
    options = task_lib.resolve(spec).options()
  except ReproError as err:
    _exit_bad_input(str(err))
  field = next(field for field in _flag_fields() if field.name == TASK_FLAG)
  defaults = ",\n".join(f"{name}={value!r}" for name, value in options.items())
  FLAGS[TASK_FLAG].help = (  # one option a line: absl wraps lines at spaces and hyphens
      f"{field.metadata['help']} It names a repro.Task class, instance or factory. Its options "
      f"are set with --task.<option>=value (before or after --task) and recorded in "
      f"config.json; with their defaults:\n{spec}({defaults})")


def _named_task(argv: Sequence[str]) -> str:
  """The task that argv's --task names (the last one, as absl reads it), else the default."""
  spec = DEFAULT_TASK
  for i, word in enumerate(argv):
    if word == "--":
      break
    name, equals, value = word.partition("=")
    if name in (f"-{TASK_FLAG}", f"--{TASK_FLAG}"):
      spec = value if equals else (argv[i + 1:] or [spec])[0]
  return spec


def _is_help(word: str) -> bool:
  return word.startswith("-") and word.lstrip("-").split("=")[0] in HELP_FLAGS


def _exit_bad_input(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def parse_flags_or_exit(argv: list[str], positional: int = 0) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr and exit code 2.

  Returns absl's leftovers (the program name and the positional arguments)
  followed by the task-option arguments, which config_from_flags reads once
  the task is known. `positional` is how many arguments besides flags the
  binary takes (-1: one or more).
  """
  takes_task = TASK_FLAG in FLAGS
  argv, option_words = _take_task_options(argv) if takes_task else (argv, [])
  asked = any(_is_help(word) for word in argv[1:])
  if asked and takes_task:
    _describe_task(_named_task(argv))
  try:
    rest = FLAGS(argv)
  except SystemExit as stop:  # absl exits 1 after --help/--helpfull: asked for, so 0
    sys.exit(0 if asked and stop.code == 1 else stop.code)
  except flags.Error as err:
    _exit_bad_input(f"{squeezed(err, 10**6)} (see --helpfull)")
  given = len(rest) - 1
  if positional == -1 and given < 1:
    _exit_bad_input("expected at least one argument (see --helpfull)")
  if positional == 0 and given:
    _exit_bad_input(f"unexpected argument(s) {' '.join(rest[1:])}: every setting is a --flag "
                    f"(see --helpfull)")
  if positional > 0 and given != positional:
    _exit_bad_input(f"expected {positional} arguments, got {given} (see --helpfull)")
  return rest + option_words


def parse_flags_or_exit_with_run(argv: list[str]) -> list[str]:
  """parse_flags_or_exit for a binary of one positional RUN and the task-option arguments."""
  rest = parse_flags_or_exit(argv, positional=-1)
  runs = [word for word in rest[1:] if not _OPTION_ARG.fullmatch(word)]
  if len(runs) != 1:
    _exit_bad_input(f"expected one RUN, got {len(runs)}: {' '.join(runs) or 'none'} "
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
  changes = {f.name: FLAGS[f.name].value for f in _flag_fields() if FLAGS[f.name].present}
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


def _one_line_errors(main):
  """A binary's main: quiet absl logging, and a ReproError becomes one line and exit 2."""

  @functools.wraps(main)
  def wrapped(argv: list[str], **kwargs) -> int:
    if not FLAGS["verbosity"].present:  # repro says what matters in its own lines;
      logging.set_verbosity(logging.FATAL)  # Orbax, TFDS, ...: -v 0 shows their logs
    try:
      return main(argv, **kwargs)
    except (ReproError, NonFiniteLoss, CheckpointReadError) as err:
      print(f"error: {err}", file=sys.stderr)
      return err.exit_code
    except BrokenPipeError:  # `bin/train | head`: the reader has all it wanted
      _drop_stdout()
      return 0

  return wrapped


@_one_line_errors
def train_main(argv: list[str], hooks=()) -> int:
  """bin/train: 0 done, 2 bad input, 75 stopped with a checkpoint (rerun to resume).

  argv: from parse_flags_or_exit, the program name and the --task.<option> arguments.
  hooks: repro.Hooks for the run (tests add fault injection here).
  """
  # XLA:CPU's pool before the task's module is imported (it may compute with JAX).
  backend.apply(backend.pool_size(FLAGS.cpu_threads, FLAGS.micro_shards))
  config = config_from_flags(argv[1:]).validate()
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
  tests = "".join(f", test {name.removeprefix(TEST)} {value:.4f}"
                  for name, value in sorted(result.test.items()))
  if not result.already_complete:
    speed = f"; {result.ms_step:.3g} ms a step" if result.ms_step is not None else ""
    print(f"done: step {result.step}, loss {result.loss:.4f}{tests}{speed}; checkpoint "
          f"{result.checkpoint}")
  else:
    print(f"done: step {result.step} (already complete){tests}; checkpoint {result.checkpoint}")
  return 0


def define_verify_flags() -> None:
  flags.DEFINE_boolean("lineage", False, "bin/verify --lineage RUN: check each ancestor of "
                       "RUN's model (what it was warm-started or exported from) against its "
                       "recorded digest: intact, changed or missing.")


def _print(text: str) -> None:
  try:
    print(text, flush=True)
  except BrokenPipeError:  # `bin/verify A B | head`: the verdict still goes in the exit code
    _drop_stdout()


@_one_line_errors
def verify_main(argv: list[str]) -> int:
  """bin/verify RUN_A RUN_B: 0 bitwise identical, 1 different, 2 bad input.

  bin/verify --lineage RUN: 0 no ancestor changed, 1 one did, 2 bad input.
  """
  wanted = 1 if FLAGS.lineage else 2
  if len(argv) - 1 != wanted:
    _exit_bad_input(f"expected {'RUN' if wanted == 1 else 'RUN_A RUN_B'}, got {len(argv) - 1} "
                    f"argument(s) (see --helpfull)")
  if FLAGS.lineage:
    from repro import lineage
    checked = lineage.check(argv[1])
    _print(lineage.report(checked))
    return checked.exit_code
  from repro import verify
  comparison = verify.compare(argv[1], argv[2])
  _print(verify.report(comparison))
  return 0 if comparison.identical else 1


def _define_step_flag(what: str) -> None:
  flags.DEFINE_string("step", "latest", f"The checkpoint {what}: latest, best (the kept best "
                      f"validation result) or a step number.")


def _step(text: str) -> int | str | None:
  if text == "latest":
    return None
  if text == "best" or text.isdigit():
    return text if text == "best" else int(text)
  _exit_bad_input(f"--step={text}: pass --step=latest, --step=best or --step=<a step number>")


def define_eval_flags() -> None:
  """bin/eval's flags: which checkpoint, which split, the output form, the task's options."""
  from repro.evaluation import PREFIXES
  _define_step_flag("to evaluate")
  flags.DEFINE_enum("split", "test", list(PREFIXES), "The split to evaluate (validation: the "
                    "run's, held out as it was).")
  flags.DEFINE_boolean("json", False, "Print one JSON object instead of the table.")
  flags.DEFINE_string(TASK_FLAG, None, "Evaluate as this task (package.module:attr; default: "
                      "the run's). Options that change only what is evaluated may be set with "
                      "--task.<option>=value, e.g. --task.test_examples=10000.")


@_one_line_errors
def eval_main(argv: list[str]) -> int:
  """bin/eval RUN: 0 evaluated, 2 bad input. argv: RUN and the --task.<option> arguments."""
  from repro import evaluation
  from repro import stored
  step = _step(FLAGS.step)
  spec = FLAGS.task or stored.find(argv[1], step).config.get("task", DEFAULT_TASK)
  task = task_lib.resolve(spec)
  options = read_task_options(task, spec, argv[2:])
  found = evaluation.evaluate(argv[1], step, FLAGS.split, task if FLAGS.task else None, options)
  _print(json.dumps(found.to_dict(), sort_keys=True) if FLAGS.json else evaluation.table(found))
  return 0


def define_export_flags() -> None:
  from repro.exports import DTYPES
  _define_step_flag("to export")
  flags.DEFINE_string("out", None, "The export's directory (new).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "The dtype of the floating-point weights.")
  flags.mark_flag_as_required("out")


@_one_line_errors
def export_main(argv: list[str]) -> int:
  """bin/export RUN --out=DIR: 0 written, 2 bad input."""
  from repro.exports import export
  out = export(argv[1], FLAGS.out, _step(FLAGS.step), FLAGS.dtype)
  print(f"exported {argv[1]} to {out} ({FLAGS.dtype}): restore {out}/model with Orbax, or "
        f"repro.load({str(out)!r})")
  return 0


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
  """bin/check: 0 every promise holds for the task here, 1 something does not, 2 bad input.

  argv: from parse_flags_or_exit, the program name and the --task.<option> arguments.
  """
  config = config_from_flags(argv[1:]).validate()
  from repro import checker
  report = checker.check(config, steps=FLAGS.check_steps, pairs=tuple(FLAGS.check_pairs),
                         jobs=FLAGS.jobs,
                         workdir=FLAGS.check_dir, log=lambda line: print(line, file=sys.stderr))
  print(checker.format_report(report), flush=True)
  return report.exit_code


def define_audit_flags() -> None:
  flags.DEFINE_string("links", "all", "The links to audit: all, or N of them (evenly spaced; "
                      "the rule is printed).")
  flags.DEFINE_boolean("from_start", False, "Also audit the link from the seed (step 0) to "
                       "the first kept checkpoint.")
  flags.DEFINE_integer("jobs", 1, "Links trained at a time (each in a fresh process).",
                       lower_bound=1)
  flags.DEFINE_string("out", None, "Where to write the report (default <run>.audit.json, "
                      "beside the run).")


@_one_line_errors
def audit_main(argv: list[str]) -> int:
  """bin/audit RUN: 0 every audited link equal, 1 one differs (or a check fails), 2 bad input."""
  from repro import audits
  if FLAGS.links != "all" and not (FLAGS.links.isdigit() and int(FLAGS.links) > 0):
    _exit_bad_input(f"--links={FLAGS.links}: pass --links=all or --links=<a number >= 1>")
  links = None if FLAGS.links == "all" else int(FLAGS.links)
  found = audits.audit(argv[1], links, FLAGS.from_start, FLAGS.jobs, FLAGS.out,
                      log=lambda line: print(line, file=sys.stderr))
  _print(audits.report(found))
  return found.exit_code


def define_replay_flags() -> None:
  flags.DEFINE_integer("step", None, "The step to replay (1 <= N <= the run's last step).")
  flags.DEFINE_string("dump", None, "Write the step's batch, gradients and parameters before "
                      "and after to this .npz file.")


@_one_line_errors
def replay_main(argv: list[str]) -> int:
  """bin/replay RUN --step=N: 0 the replayed step equals the run's trace, 1 it differs, 2 bad
  input."""
  from repro import replays
  if FLAGS.step is None:
    _exit_bad_input("bin/replay needs --step=N: the step to replay")
  found = replays.replay(argv[1], FLAGS.step, FLAGS.dump,
                        log=lambda line: print(line, file=sys.stderr))
  _print(replays.report(found))
  return 0 if found.equal else 1
