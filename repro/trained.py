"""repro.load: a trained model from a run directory or a checkpoint step, verified.

    trained = repro.load("runs/mine")            # the newest finalized step
    logits = trained.model(images)               # in eval mode, on one device

The manifest is read first; the task is rebuilt from the spec and options it
records (or passed in); the restore goes nnx.eval_shape template -> Orbax
(onto this process's first device, whatever devices wrote it) ->
nnx.replace_by_pure_dict -> nnx.update; every leaf's checksum is verified
against the manifest. Nothing is written: it is safe while the run trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from repro import digest
from repro import identity as identity_lib
from repro import rng
from repro import state as state_lib
from repro import task as task_lib
from repro.config import Config
from repro.errors import ReproError, squeezed


@dataclasses.dataclass(frozen=True)
class Trained:
  """A trained model and where it came from.

  Attributes:
    model: the task's nnx.Module with the checkpoint's state, in eval mode.
    task: the repro.Task it was trained as.
    config: the run's Config.
    step: the checkpoint's global step.
    metrics: what the run observed at that step ('loss', 'val_*', 'test_*').
    manifest: the checkpoint's whole manifest (identity, versions, checksums).
    path: the checkpoint step directory.
  """

  model: nnx.Module
  task: task_lib.Task
  config: Config
  step: int
  metrics: dict
  manifest: dict
  path: Path


def _finalized(run: Path) -> list[int]:
  # Orbax renames <step>.orbax-checkpoint-tmp* to <step> only once complete.
  return sorted(int(p.name) for p in run.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def _json_item(step_dir: Path, item: str) -> dict:
  try:
    return ocp.JsonCheckpointHandler().restore(epath.Path(step_dir / item))
  except (OSError, ValueError, KeyError) as err:
    raise ReproError(f"cannot read {step_dir / item} ({type(err).__name__}): pass a repro run "
                     f"directory or one of its step directories") from None


def locate(path: str | Path, step: int | str | None = None) -> Path:
  """The step directory of `path` (a run or a step directory) at `step` (None: the newest;
  'best': the kept best validation result; an integer: that step)."""
  path = Path(path).expanduser().absolute()
  if not path.is_dir():
    raise ReproError(f"{path} is not a directory: pass a run directory or a checkpoint step")
  if (path / "state").is_dir() and step is None:
    return path
  run = path.parent if (path / "state").is_dir() else path
  steps = _finalized(run)
  if not steps:
    raise ReproError(f"{run} holds no finalized checkpoint: pass a run directory (or a step "
                     f"directory <run>/<step>) of a run that saved one")
  if step == "best":
    best = _json_item(run / str(steps[-1]), "manifest").get("best", {}).get("step")
    if best is None:
      raise ReproError(f"{run} has no best step (it ran without validation): pass step=None "
                       f"or an integer")
    step = best
  if step is None:
    step = steps[-1]
  if not isinstance(step, int) or step not in steps:
    raise ReproError(f"{run} has no finalized checkpoint of step {step!r}: pass one of "
                     f"{', '.join(map(str, steps))}, 'best' or none")
  return run / str(step)


def load(path: str | Path, step: int | str | None = None,
         task: task_lib.Task | None = None) -> Trained:
  """The model of a checkpoint, in eval mode on one device; ReproError (one line) if the path,
  the step or the task does not fit, or a leaf does not match its checksum."""
  step_dir = locate(path, step)
  manifest = _json_item(step_dir, "manifest")
  cursor = _json_item(step_dir, "cursor")
  config = Config.from_dict(manifest["config"])
  if task is None:
    task = task_lib.with_options(task_lib.resolve(config.task), config.task_options, config.task)
  total = config.epochs * int(cursor.get("steps_per_epoch", 1))
  built = state_lib.build(task, config, rng.streams(config.seed), total, None)
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / "state")).tree
  identity_lib.check_structure(
      step_dir.parent, int(cursor["step"]), saved, built.template, action="load",
      fix=f"pass the task it was trained as: repro.load(path, task={type(task).__name__}(...))")
  try:
    pure = ocp.StandardCheckpointer().restore(step_dir / "state", built.template)
  except (OSError, ValueError) as err:
    raise ReproError(f"cannot restore {step_dir / 'state'} ({type(err).__name__}: "
                     f"{squeezed(err, 120)}): the checkpoint is damaged") from None
  _verify(step_dir, manifest.get("leaf_digests", {}), pure)
  model = nnx.merge(built.graphdef, state_lib.restore(built, pure))["model"]
  model.eval()
  return Trained(model=model, task=task, config=config, step=int(cursor["step"]),
                 metrics=dict(manifest.get("metrics", {})), manifest=manifest, path=step_dir)


def _verify(step_dir: Path, expected: dict[str, str], pure: dict[str, Any]) -> None:
  found = digest.leaf_digests(pure)
  bad = sorted(set(expected) ^ set(found) | {k for k in found if expected.get(k) != found[k]})
  if not expected or bad:
    what = "carries no checksums" if not expected else f"fails its checksums ({', '.join(bad[:3])})"
    raise ReproError(f"checkpoint {step_dir} {what}: it is damaged; load another step")
