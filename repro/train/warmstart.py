"""--init_from: a run whose model starts from another model's weights (a warm start, a fine-tune).

The source is anything repro.checkpoints.stored finds: a run (its newest step, ':best' or ':<step>'), a
step directory, an export, or an Orbax tree that repro did not write. The new model is built
and initialised from the seed as always; then each of its weights (every Variable but the
random streams' state: parameters, BatchNorm statistics, ...) takes the source's leaf of the
same path (or of the path Task.init_source names) when that leaf has its shape, cast to its
dtype. The others keep their fresh initialisation. The optimizer is built afterwards, fresh;
the step is 0 and the data order is the new task's own.

What the new run is a function of: its own settings, and the source's weights digest, step and
task, which enter its identity (a resume against a changed source is refused). Its manifest
records which leaves came from the source and the lineage: the source and its own ancestors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from repro.checkpoints import digest
from repro.checkpoints import stored as stored_lib
from repro import task as task_lib
from repro.errors import ReproError

WEIGHTS = nnx.Not(nnx.RngState)  # what a warm start, an export and a load carry
_SHOWN = 6  # fresh leaves named in the summary line


def parse(spec: str) -> tuple[Path, int | str | None]:
  """(path, step) of 'PATH', 'PATH:best' or 'PATH:<step>'."""
  path, sep, tail = spec.rpartition(":")
  if sep and path and (tail.isdigit() or tail == "best"):
    return Path(path).expanduser(), int(tail) if tail.isdigit() else tail
  return Path(spec).expanduser(), None


def absolute(spec: str) -> str:
  """The spec with an absolute path (config.json records it so)."""
  path, step = parse(spec)
  return str(path.absolute()) + (f":{step}" if step is not None else "")


def check_source(spec: str, output: Path) -> None:
  """Refuses a source inside the run's own output: a run cannot start from itself."""
  source = parse(spec)[0].absolute()
  if source == output or output in source.parents:
    raise ReproError(f"--init_from={spec} is inside this run's --output {output}: a run cannot "
                     f"start from itself; pass another run's directory")


@dataclasses.dataclass(frozen=True)
class Filled:
  """Which of the model's weights came from the source, and which did not."""

  loaded: list[str]
  fresh: list[str]
  unused: list[str]  # the source's leaves that no weight took


def fill(model: nnx.Module, source: dict[str, Any],
         source_name: Callable[[str], str | None]) -> Filled:
  """Sets each weight of `model` to its source leaf where that has the weight's shape."""
  target = nnx.state(model, WEIGHTS)
  available = digest.named_leaves(source, to_host=False)
  loaded, fresh, used = [], [], set()

  def pick(path, leaf):
    name = digest.path_name(path)
    wanted = source_name(name)
    value = available.get(wanted) if wanted is not None else None
    if value is None or tuple(value.shape) != tuple(leaf.shape):
      fresh.append(name)
      return leaf
    loaded.append(name)
    used.add(wanted)
    return jnp.asarray(value, dtype=leaf.dtype)

  filled = jax.tree_util.tree_map_with_path(pick, nnx.to_pure_dict(target))
  nnx.replace_by_pure_dict(target, filled)
  nnx.update(model, target)
  return Filled(sorted(loaded), sorted(fresh), sorted(set(available) - used))


@dataclasses.dataclass
class WarmStart:
  """A run's --init_from: the source read and checked, and (once the model is built) what it
  gave. Called with the freshly built model, before the optimizer is."""

  spec: str
  source: stored_lib.Stored
  weights: dict[str, Any]
  weights_digest: str
  task: task_lib.Task
  filled: Filled | None = None

  @classmethod
  def of(cls, spec: str, task: task_lib.Task) -> "WarmStart":
    try:
      source = stored_lib.find(*parse(spec))
    except ReproError as err:
      raise ReproError(f"--init_from={spec} (the source of this run's weights): {err}") from None
    weights = stored_lib.weights(source)
    return cls(spec, source, weights, digest.tree_digest(weights), task)

  def __call__(self, model: nnx.Module) -> None:
    name = lambda leaf: task_lib.guarded(f"init_source({leaf!r})", self.task,
                                         lambda: self.task.init_source(leaf))
    self.filled = fill(model, self.weights, name)
    if not self.filled.loaded:
      raise ReproError(
          f"--init_from={self.spec}: no weight of the model has a leaf of its path and shape "
          f"in the source (it holds {', '.join(self.filled.unused[:3]) or 'nothing'}, ...): "
          f"pass a source of this model, or map the names with Task.init_source")

  def identity(self) -> dict:
    """What of the source decides the new run's bits."""
    config = self.source.config
    return {"weights_digest": self.weights_digest, "step": self.source.step,
            "task": config.get("task"), "task_options": config.get("task_options"),
            "fresh": self.filled.fresh}

  def record(self) -> dict:
    """The manifest's account of the warm start."""
    return {"from": str(self.source.path), "kind": self.source.kind, **self.identity(),
            "loaded": self.filled.loaded, "unused": self.filled.unused}

  def lineage(self) -> list[dict]:
    """The source, then its own ancestors."""
    return [stored_lib.ancestor(self.source, self.weights_digest)] + self.source.lineage

  def summary(self) -> str:
    loaded, fresh = self.filled.loaded, self.filled.fresh
    at = f" (step {self.source.step})" if self.source.step is not None else ""
    kept = (f"; fresh: {', '.join(fresh[:_SHOWN])}" + (", ..." if len(fresh) > _SHOWN else "")
            if fresh else "")
    unused = f"; {len(self.filled.unused)} source leaves unused" if self.filled.unused else ""
    return (f"warm start from {self.source.path}{at}: {len(loaded)} of "
            f"{len(loaded) + len(fresh)} weights loaded{kept}{unused}")
