"""A task's options on the command line: --task.<option>=value, typed as the task declares them.

A task's options are not absl flags, since which ones exist depends on the
task: the binaries take every --task.<option>=value out of argv before absl
parses the rest (take_task_options), and read them against the task the run
will use (read_task_options), each typed as the task declares it. So --task
and its options may come in any order.
"""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from typing import Any, Callable, Sequence

from repro.config import DEFAULT_TASK
from repro.errors import ReproError

if typing.TYPE_CHECKING:  # repro.task imports JAX: a command line is read without it
  from repro import task as task_lib

TASK_FLAG = "task"  # the Config field, and its flag, that names the task
# A task-option argument: --task.<option>=value, or --task.<option> / --notask.<option>
# alone (a bool option's switch); one or two dashes, as for absl's flags.
OPTION_ARG = re.compile(rf"--?(?P<no>no(?={TASK_FLAG}\.[^=]*$))?{TASK_FLAG}\."
                         rf"(?P<name>[^=]*)(?:=(?P<text>.*))?", re.DOTALL)
_NONE_WORDS = ("None", "none")  # the value None of an `X | None` option


def take_task_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """argv without its task-option arguments, and those, each as one word.

  absl's two-word form `--task.x value` becomes `--task.x=value` (where the
  value does not start with '-'). Nothing after `--` is taken.
  """
  kept, taken, words = [], [], list(argv)
  while words:
    word = words.pop(0)
    if word == "--":
      return [*kept, word, *words], taken
    match = OPTION_ARG.fullmatch(word)
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
  matches = [OPTION_ARG.fullmatch(word) for word in words]
  unknown = sorted({match["name"] for match in matches} - set(kinds))
  if unknown:
    raise ReproError(f"task {spec} has no option {', '.join(unknown)}; its options: "
                     f"{', '.join(sorted(kinds)) or 'none'} (--task.<option>=value)")
  return {match["name"]: _option_value(match, kinds[match["name"]], spec) for match in matches}


def named_task(argv: Sequence[str]) -> str:
  """The task that argv's --task names (the last one, as absl reads it), else the default."""
  spec = DEFAULT_TASK
  for i, word in enumerate(argv):
    if word == "--":
      break
    name, equals, value = word.partition("=")
    if name in (f"-{TASK_FLAG}", f"--{TASK_FLAG}"):
      spec = value if equals else (argv[i + 1:] or [spec])[0]
  return spec
