"""The Task seam: what a researcher writes so that repro trains their model.

A task is a small object, usually a `@dataclasses.dataclass` whose fields are
its options. It gives the model, the loss, the data and (optionally) the
evaluation metrics and the optimizer; repro gives it every guarantee:

    @dataclasses.dataclass
    class Regression(repro.Task):
      name = "regression"
      hidden: int = 32

      def model(self, rngs):
        return MLP(self.hidden, rngs=rngs)

      def loss(self, model, batch):
        return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)

      def data(self):
        return repro.Splits(train={"x": x, "y": y})

    repro.run(repro.Config(epochs=5), task=Regression(hidden=64))

What must hold for the bits to repeat: the model, the loss and the metrics are
pure JAX (no Python, NumPy or time-based randomness, no host callbacks), and
every piece of state that changes lives in an nnx Variable. Randomness comes
only from the nnx.Rngs repro passes to `model` and from the streams a module
holds; repro reseeds those from (seed, step, micro-shard) before every step.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Callable, ClassVar

import jax
import numpy as np
import optax
from flax import nnx

from repro.errors import DataReadError, ReproError, disk_failed, one_line, os_cause

# The name of the task a run trains when none is named (repro.config.DEFAULT_TASK).
DEFAULT_TASK_NAME = "cnn"

Batch = dict[str, jax.Array]


@dataclasses.dataclass
class Splits:
  """A task's data: each split a dict of arrays sharing their leading dimension, a
  repro.data.source.Source read by index, a Grain MapDataset or a Hugging Face
  datasets.Dataset (repro owns the order and the batches of every one).

  Attributes:
    train: the training examples (any feature names, shapes and dtypes).
    validation: optional; else --validation_examples may hold out the last
      examples of train.
    test: optional; evaluated once, at the end of the run.
    source: where the data came from, for the manifest (a path, a TFDS name).
  """

  train: dict[str, Any]
  validation: dict[str, Any] | None = None
  test: dict[str, Any] | None = None
  source: str = ""

  def named(self) -> dict[str, dict[str, np.ndarray]]:
    """{'train': ..., 'validation': ..., 'test': ...} for the splits that exist."""
    return {name: split for name, split in (("train", self.train), ("validation", self.validation),
                                            ("test", self.test)) if split is not None}


class Task:
  """Base class of tasks. Override model, loss and data; the rest is optional.

  Class attributes:
    name: enters the run's identity and its default output name.
    architecture: a version string of the model code; bump it when a change
      of the code changes the bits, so that old checkpoints are refused.
    higher_is_better: metric names for which larger is better (for --monitor).
    location_options: options that only say where files are; they are left
      out of the identity (the data fingerprint covers what the files hold).
  """

  name: ClassVar[str] = ""
  architecture: ClassVar[str] = ""
  higher_is_better: ClassVar[tuple[str, ...]] = ("accuracy",)
  location_options: ClassVar[tuple[str, ...]] = ()

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    """The model, built (and initialised) from `rngs` ('params' and a default stream)."""
    raise NotImplementedError(f"{type(self).__name__} must define model(rngs)")

  def loss(self, model: nnx.Module, batch: Batch) -> jax.Array | tuple[jax.Array, dict]:
    """The mean loss over `batch`, a scalar; or (loss, {name: scalar metric})."""
    raise NotImplementedError(f"{type(self).__name__} must define loss(model, batch)")

  def data(self) -> Splits:
    """The data splits, as host (NumPy) arrays. Never downloads."""
    raise NotImplementedError(f"{type(self).__name__} must define data()")

  def optimizer(self, learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """The optax transformation, built from repro's learning rate or schedule."""
    return optax.adam(learning_rate)

  def eval_metrics(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """{name: value per example, shape (batch,)}; repro averages them over a split.

    The default evaluates `loss` (and the metrics it returns) on each example
    alone; override it for speed or for metrics that are not means of the loss.
    """
    graphdef, state = nnx.split(model)

    def one(example):  # a copy per example: updates to Variables stay inside it
      model_copy = nnx.merge(graphdef, state, copy=True)
      out = self.loss(model_copy, jax.tree.map(lambda x: x[None], example))
      value, metrics = unpack_loss(out)
      return {"loss": value, **metrics}

    return jax.vmap(one)(batch)

  def augment(self, example: Batch, key: jax.Array) -> Batch:
    """One training example (its fields, no batch axis) randomly transformed with `key`.

    repro runs it inside the compiled step, on the device, for every training example, with
    the key of (seed, epoch, the example's position in the train split): the same example gets
    the same draw on any device count, data path or resume, and another draw each epoch.
    Evaluation never augments. Pure JAX; return the same fields with their shapes and dtypes,
    and any new ones the loss reads (e.g. noisy inputs beside clean targets). Default: no
    augmentation (repro skips it).
    """
    return example

  def init_source(self, leaf: str) -> str | None:
    """The source leaf a warm start (--init_from) gives the weight `leaf` ('head/kernel').

    Default: the leaf of the same path. Return another path to map names, or
    None to keep the weight's fresh initialisation (say, a new head).
    """
    return leaf

  def summarize(self, means: dict[str, float]) -> dict[str, float]:
    """The reported metrics from the split means of eval_metrics (e.g. add perplexity)."""
    return means

  def options(self) -> dict[str, Any]:
    """The task's options: its dataclass fields that hold plain JSON values.

    Fields marked as data (`metadata={"data": True}`), and arrays or other
    objects, are data, not options: the data fingerprint covers them.
    """
    if not dataclasses.is_dataclass(self):
      return {}
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if not f.metadata.get("data") and is_json(getattr(self, f.name))}

  def identity(self) -> dict[str, Any]:
    """What of the task decides the bits: its name, options and architecture."""
    found = {"task": task_name(self), **{k: v for k, v in self.options().items()
                                        if k not in self.location_options}}
    if self.architecture:
      found["architecture"] = self.architecture
    return found


def augments(task: Task) -> bool:
  """Whether the task defines its own augment (the default leaves examples unchanged)."""
  return type(task).augment is not Task.augment


def task_name(task: Task) -> str:
  return task.name or type(task).__name__.lower()


def unpack_loss(out) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) from what Task.loss returned."""
  if isinstance(out, tuple):
    if len(out) != 2 or not isinstance(out[1], dict):
      raise ReproError("a task's loss must return a scalar or (scalar, {name: scalar})")
    return out
  return out, {}


def guarded(what: str, task: Task, fn: Callable) -> Any:
  """fn(), where fn runs the task's code: its failure becomes one line naming the task."""
  try:
    return fn()
  except ReproError:
    raise
  except Exception as err:  # the user's code: one line, not a traceback
    if disk_failed(err):  # the disk under it, not the task: exit 74
      raise DataReadError(f"task {task_name(task)}: {what} failed reading a file "
                          f"({os_cause(err)}): the file system failed, not the task; rerun "
                          f"once it is healthy") from None
    raise ReproError(f"task {task_name(task)}: {what} failed ({one_line(err)})") from None


def spec_of(task: Task) -> str:
  """'package.module:Class' of a task object (recorded in config.json)."""
  return f"{type(task).__module__}:{type(task).__qualname__}"


def is_json(value) -> bool:
  try:
    json.dumps(value)
  except (TypeError, ValueError):
    return False
  return True


def resolve(spec: str) -> Task:
  """The task named by 'package.module:attr': a Task class, instance or factory.

  Raises ReproError with one line when it cannot be imported or built.
  """
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ReproError(f"--task={spec!r} is not of the form package.module:attr")
  try:
    target = getattr(importlib.import_module(module_name), attr)
  except ModuleNotFoundError as err:
    raise ReproError(f"cannot import task {spec} ({err}): check --task and that the "
                     f"package is installed or on PYTHONPATH") from None
  except AttributeError:
    raise ReproError(f"module {module_name} has no attribute {attr!r}: check --task") from None
  except Exception as err:  # the user's module raised on import
    raise ReproError(f"importing task {spec} failed ({one_line(err)})") from None
  return build(target, spec)


def build(target: Callable | Task, spec: str) -> Task:
  """A Task from a class, a factory or an instance; one line if that fails."""
  if isinstance(target, Task):
    return target
  if not callable(target):
    raise ReproError(f"task {spec} is a {type(target).__name__}, not a repro.Task, a Task "
                     f"class or a function returning one")
  try:
    task = target()
  except ReproError:
    raise
  except Exception as err:
    raise ReproError(f"building task {spec} failed ({one_line(err)})") from None
  if not isinstance(task, Task):
    raise ReproError(f"task {spec} gave a {type(task).__name__}, not a repro.Task")
  return task


def recorded(config) -> Task:
  """The task a Config names (config.task), with its options (config.task_options)."""
  return with_options(resolve(config.task), config.task_options, config.task)


def with_options(task: Task, options: dict[str, Any], spec: str = "") -> Task:
  """`task` with `options` replaced (its own validation runs again); one line on error."""
  known = set(task.options())
  unknown = sorted(set(options) - known)
  if unknown:
    raise ReproError(f"task {task_name(task)} has no option {', '.join(unknown)}; its options: "
                     f"{', '.join(sorted(known)) or 'none'}")
  if not options:
    return task
  try:
    return dataclasses.replace(task, **options)
  except ReproError:
    raise
  except Exception as err:
    raise ReproError(f"task {spec or task_name(task)} refused its options "
                     f"({one_line(err)})") from None
