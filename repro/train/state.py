"""The train state of a task: built from its model and optimizer, checked, restored into.

The state is the nnx.State of {'model', 'optimizer'}; its pure dict is what a
checkpoint holds. Restore goes nnx.eval_shape template -> Orbax ->
nnx.replace_by_pure_dict -> nnx.update.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from flax import nnx

from repro.train import optim
from repro.machine import parallel
from repro.train import rng
from repro.errors import ReproError
from repro.task import Task, guarded, task_name, unpack_loss


@dataclasses.dataclass
class Built:
  """A freshly initialised train state and what restoring into it needs.

  Attributes:
    graphdef: the static part of {'model', 'optimizer'}.
    state: the initial state, placed on the run's device(s).
    objects: the live {'model', 'optimizer'} (restore updates them).
    abstract: the nnx.eval_shape state: the restore template's structure.
    template: its pure dict of ShapeDtypeStructs with the run's shardings.
    module_streams: whether the model holds nnx.RngStreams (reseeded every step).
  """

  graphdef: nnx.GraphDef
  state: nnx.State
  objects: dict
  abstract: nnx.State
  template: dict
  module_streams: bool


def abstract_model(task: Task, keys: dict) -> nnx.Module:
  """The task's model built under nnx.eval_shape (shapes only); one line if that fails.

  A model() that only works eagerly (say, one that restores weights from a file)
  fails here, as one line naming the task.
  """
  return guarded(_ABSTRACT, task, lambda: nnx.eval_shape(lambda: task.model(
      rng.init_rngs(keys))))


_ABSTRACT = "building the model (traced, under nnx.eval_shape)"


def build(task: Task, config, keys: dict, total_steps: int, mesh,
          warm: Callable[[nnx.Module], None] | None = None) -> Built:
  """Initialises the task's model and optimizer from the 'params' key stream.

  warm: called with the initialised model before the optimizer is built (a
  warm start, repro.train.warmstart), in the concrete build only.
  """
  tx = guarded("building the optimizer", task,
                lambda: optim.make_tx(config, total_steps, task.optimizer))

  def create(warm=None):
    model = task.model(rng.init_rngs(keys))
    if not isinstance(model, nnx.Module):
      raise ReproError(f"task {task_name(task)}: model() returned a {type(model).__name__}, "
                       f"not an nnx.Module")
    if warm is not None:
      warm(model)
    return {"model": model, "optimizer": nnx.Optimizer(model, tx, wrt=nnx.Param)}

  objects = guarded("building the model", task, lambda: create(warm))
  graphdef, state = nnx.split(objects)
  _, abstract = nnx.split(guarded(_ABSTRACT, task, lambda: nnx.eval_shape(create)))
  return Built(graphdef=graphdef, state=parallel.replicate(state, mesh), objects=objects,
               abstract=abstract, template=parallel.abstract(nnx.to_pure_dict(abstract), mesh),
               module_streams=rng.has_streams(objects["model"]))


def restore(built: Built, pure: dict) -> nnx.State:
  """The state of a restored checkpoint's pure dict."""
  nnx.replace_by_pure_dict(built.abstract, pure)
  nnx.update(built.objects, built.abstract)
  return nnx.state(built.objects)


def _specs(features: dict, n: int) -> dict:
  return {k: jax.ShapeDtypeStruct((n,) + tuple(shape), dtype)
          for k, (dtype, shape) in features.items()}


def check_task(task: Task, built: Built, features: dict, batch_size: int
               ) -> tuple[list[str], list[str]]:
  """Traces the task's loss and metrics on abstract batches of the train split's features.

  Returns the names of eval_metrics and of the metrics the task reports
  (after summarize).

  One line (ReproError) when the loss is not a scalar, a metric has the wrong
  shape, or the task's code fails on a batch of the train split.
  """
  name = task_name(task)

  def loss_probe(state, batch):
    model = nnx.merge(built.graphdef, state)["model"]
    model.train()
    return unpack_loss(task.loss(model, batch))

  def eval_probe(state, batch):
    model = nnx.merge(built.graphdef, state)["model"]
    model.eval()
    return task.eval_metrics(model, batch)

  batch = _specs(features, batch_size)
  loss, metrics = guarded(f"its loss on a batch of {batch_size} training examples", task,
                           lambda: jax.eval_shape(loss_probe, built.state, batch))
  _need_scalar(name, "loss", loss, "return the mean over the batch")
  for metric, value in metrics.items():
    _need_scalar(name, f"loss metric {metric!r}", value, "return batch means")
  per_example = guarded("eval_metrics on a batch of the train split", task,
                         lambda: jax.eval_shape(eval_probe, built.state, batch))
  for metric, value in per_example.items():
    if value.shape != (batch_size,):
      raise ReproError(f"task {name}: eval_metrics gave {metric!r} of shape {value.shape}, "
                       f"expected one value per example ({batch_size},)")
  reported = guarded("summarize", task, lambda: task.summarize({k: 1.0 for k in per_example}))
  return sorted(per_example), sorted(reported)


def _need_scalar(name: str, what: str, value, fix: str) -> None:
  if value.shape != () or not jax.numpy.issubdtype(value.dtype, jax.numpy.floating):
    raise ReproError(f"task {name}: its {what} is {value.dtype}{list(value.shape)}, not a float "
                     f"scalar: {fix}")
