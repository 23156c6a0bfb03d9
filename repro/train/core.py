"""The pure training core: a step, a scanned chunk of steps, and evaluation.

State is the nnx.State of {'model', 'optimizer'} (a pytree of arrays); the
graphdef is static. One chunk is one compiled program that scans a fixed number
of steps and masks the tail, so every run (interrupted or not, whatever its
checkpoint interval) executes every step with the same program and gets the
same bits. Nothing here touches a file.

A step is written once. The global batch is cut into shards, each shard's
loss, gradients and updated non-parameter state (e.g. BatchNorm statistics)
come from the task's loss, and a reduction combines the shards:
  Local        one shard, the whole batch, on one device;
  AcrossDevices one shard per device, averaged with pmean (bits follow the
               device count);
  MicroShards  M fixed micro-shards, gathered from every device and summed in
               the order 0..M-1 (the same bits on every device count dividing M).
Non-parameter state: floating-point leaves are averaged over the shards (in
that fixed order with micro-shards); other leaves take shard 0's value. The
model's RngStreams are reseeded from (seed, step, shard) for the step, and
from (seed, step) after it.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repro.train import rewrites
from repro.train import rng
from repro.data import shuffle
from repro.task import Task, augments, unpack_loss

# Examples per evaluation batch. Measured on the reference CNN (BUILD.md): 1000
# made the test evaluation the run's peak memory (conv2's im2col patches alone
# are 226 MB), 1201 MiB against 746 MiB with 100, which also evaluates faster.
EVAL_BATCH = 100
_GOLDEN = 2654435761  # Knuth's multiplicative hash constant (uint32)
# XLA compiles a program for one device through another pipeline than for
# several (no SPMD partitioner), and its algebraic simplifier then rewrites some
# arithmetic differently: measured on the charlm task, a softmax's x / sum
# became x * (1 / sum) on one device only, and the ResNet's bits followed the
# process's device count. Programs of the topology-invariant mode are compiled
# without that pass, so the same floating-point operations run on every device
# count (tests/test_tasks.py); its cost is measured in bench/parallel.py.
INVARIANT_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "algsimp"}
_OTHER = nnx.Not(nnx.Any(nnx.Param, nnx.RngState))  # non-parameter state a step may update


def fingerprint(arrays) -> jax.Array:
  """A uint32 fingerprint of the exact bits of a pytree of arrays (traceable).

  Integer arithmetic wraps modulo 2**32 and is associative, so the result
  does not depend on reduction order: equal bits give equal fingerprints on
  any backend, and a changed bit changes it (up to 2**-32 collisions).
  Position-weighted, so permuted elements count as a change. PRNG keys count
  by their key data.
  """
  total = jnp.uint32(0)
  for leaf in jax.tree.leaves(arrays):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    bits = leaf.ravel()
    if bits.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(bits, jnp.uint32)
    bits = bits.astype(jnp.uint32)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(_GOLDEN) + jnp.uint32(1)
    total = total * jnp.uint32(31) + jnp.sum(bits * weights, dtype=jnp.uint32)
  return total


# The fingerprint of a state outside a compiled step (the initial parameters): one compiled
# program, not one per operation and leaf (measured: 2.1 s of a 6 s run of the tiny CNN
# went to compiling those eagerly). Integer arithmetic: the same value either way.
fingerprint_now = jax.jit(fingerprint)


@jax.jit
def all_finite(tree) -> jax.Array:
  """True if no floating-point leaf of `tree` holds a NaN or an infinity."""
  floats = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in floats] or [True]))


def shard_fn(task: Task, model_def, params, streams, other) -> Callable:
  """fn(batch, key) -> (loss, metrics, grads, other state after the forward pass)."""

  def shard(batch, key):
    def loss_of(params):
      model = nnx.merge(model_def, params, streams, other, copy=True)
      rng.reseed(model, key)
      loss, metrics = unpack_loss(task.loss(model, batch))
      return loss, (metrics, nnx.state(model, _OTHER))

    (loss, (metrics, updated)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return loss, metrics, grads, updated

  return rewrites.fast(shard)


def _gather(data: dict, idx: jax.Array) -> dict:
  return {name: values[idx] for name, values in data.items()}


def _floating(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


class Local:
  """One device, no micro-shards: the whole global batch is one shard."""

  def __init__(self, batch_size: int):
    self.size, self.trip = batch_size, 1

  def __call__(self, shard, examples, step_key, trip):
    return shard(examples(0, self.size), step_key)


class AcrossDevices:
  """Device d trains on slice d of the batch; shards are averaged with pmean."""

  def __init__(self, axis: str, num_devices: int, batch_size: int):
    self.axis, self.size = axis, batch_size // num_devices
    self.trip = 1

  def __call__(self, shard, examples, step_key, trip):
    device = jax.lax.axis_index(self.axis)
    loss, metrics, grads, other = shard(examples(device * self.size, self.size),
                                        jax.random.fold_in(step_key, device))
    mean = lambda x: jax.lax.pmean(x, self.axis)
    first = lambda x: jax.lax.all_gather(x, self.axis)[0]
    other = jax.tree.map(lambda x: mean(x) if _floating(x) else first(x), other)
    return mean(loss), jax.tree.map(mean, metrics), jax.tree.map(mean, grads), other


class MicroShards:
  """M fixed micro-shards summed in the order 0..M-1: the same bits on any device count.

  Each device runs its M/D micro-shards through one fori_loop whose trip
  count is a run-time argument, so XLA compiles the same body for every D.
  """

  def __init__(self, axis: str, num_devices: int, micro_shards: int, batch_size: int):
    self.axis, self.shards = axis, micro_shards
    self.size = batch_size // micro_shards
    self.trip = micro_shards // num_devices

  def __call__(self, shard, examples, step_key, trip):
    device = jax.lax.axis_index(self.axis)
    first = device * trip

    def body(k, acc):
      m = first + k
      out = shard(examples(m * self.size, self.size), jax.random.fold_in(step_key, m))
      return jax.tree.map(lambda buf, x: buf.at[k].set(x), acc, out)

    shapes = jax.eval_shape(lambda: shard(examples(0, self.size), step_key))
    acc = jax.tree.map(lambda s: jnp.zeros((self.trip,) + s.shape, s.dtype), shapes)
    acc = jax.lax.all_gather(jax.lax.fori_loop(0, trip, body, acc), self.axis, tiled=True)
    ordered_mean = lambda x: functools.reduce(jnp.add, [x[m] for m in range(self.shards)]) / (
        self.shards)
    loss, metrics, grads, other = acc
    other = jax.tree.map(lambda x: ordered_mean(x) if _floating(x) else x[0], other)
    return (ordered_mean(loss), jax.tree.map(ordered_mean, metrics),
            jax.tree.map(ordered_mean, grads), other)


def make_step(graphdef: nnx.GraphDef, task: Task, reduction, keys: dict) -> Callable:
  """step(state, examples, global_step, trip) -> (state, loss, metrics): one optimizer step.

  examples(start, size) gives the examples at positions [start, start + size)
  of the step's global batch, wherever they come from.
  """

  def step(state, examples, global_step, trip):
    objects = nnx.merge(graphdef, state)
    model = objects["model"]
    model.train()  # repro sets the mode: dropout on, batch statistics (the task need not)
    model_def, params, streams, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
    shard = shard_fn(task, model_def, params, streams, other)
    step_key = rng.step_key(keys, global_step)
    loss, metrics, grads, other = reduction(shard, examples, step_key, trip)
    nnx.update(model, other)
    rng.reseed(model, step_key)
    objects["optimizer"].update(model, grads)
    return nnx.state(objects), loss, metrics

  return step


def trace_step(graphdef: nnx.GraphDef, task: Task, state, keys: dict, features: dict,
               batch_size: int) -> tuple[set[str], dict]:
  """Traces one training step (the loss, its gradient, the update) on abstract batches of the
  train split's `features` ({name: (dtype, shape)}), compiling and running nothing; the
  task's code fails here, if it fails when traced, before anything is written. Returns the
  names of the rewrites (repro.train.rewrites) its programs apply, and the shapes of a
  step's trace entry (make_train_chunk's `entry`: its masked steps' zeros)."""
  batch = {k: jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype)
           for k, (dtype, shape) in features.items()}

  def probe(state, batch, keys):
    step = _traced(make_step(graphdef, task, Local(batch_size), keys),
                   augmenter(task, keys, batch_size, batch_size))
    return step(state, jnp.int32(0), jnp.int32(1), jnp.zeros(batch_size, jnp.int32),
                lambda start, size: batch)

  with rewrites.recording() as applied:
    _, entry = jax.eval_shape(probe, state, batch, keys)
  return applied, entry


def make_train_chunk(graphdef: nnx.GraphDef, task: Task, *, chunk_steps: int,
                     num_examples: int, batch_size: int, mesh=None, micro_shards: int = 0,
                     host_fed: bool = False, entry: dict | None = None) -> Callable:
  """A jitted fn(state, inputs, keys, first_step, num_steps) -> (state, trace).

  Runs global steps first_step .. first_step + num_steps - 1 (num_steps <=
  chunk_steps); keys holds the 'shuffle' and 'dropout' streams. inputs is the
  device-resident train split (a dict of arrays; each step gathers its batch
  by the counter-based order), or with host_fed the chunk's batches and their
  indices as repro.data.feed.HostFeed gives them ((chunk_steps, batch, ...), each
  device holding only its rows). Both give the same bits. trace is {'loss',
  'batch', 'params', 'metrics'}, each with chunk_steps entries of which the
  first num_steps are real: the loss of each step, the fingerprint of its
  batch indices, the fingerprint of the model state after it, and the loss's
  own metrics. With a mesh the chunk runs data-parallel over its devices.
  entry: the shapes of a step's trace entry, as trace_step gives them (None: traced here,
  one more trace of the step; the program is the same).
  """
  reduction = _reduction(mesh, micro_shards, batch_size)
  rows = batch_size // (mesh.size if mesh is not None else 1)  # a device's rows, host-fed

  def chunk(state, inputs, keys, first_step, num_steps, trip):
    step = _traced(make_step(graphdef, task, reduction, keys),
                   augmenter(task, keys, num_examples, batch_size))
    if host_fed:
      examples_at = _fed_examples(inputs, rows, mesh)
    else:
      examples_at = _resident_examples(inputs, keys["shuffle"], first_step, chunk_steps,
                                       num_examples, batch_size)
    one = lambda state, i: step(state, first_step + i, trip, *examples_at(i))
    return _scan_steps(one, state, num_steps, chunk_steps, entry)

  compiled = _compile(chunk, mesh, micro_shards, host_fed)

  def train_chunk(state, inputs, keys, first_step, num_steps):
    return compiled(state, inputs, keys, first_step, num_steps, np.int32(reduction.trip))

  train_chunk.cache_size = compiled._cache_size
  return train_chunk


def make_train_step(graphdef: nnx.GraphDef, task: Task, *, num_examples: int, batch_size: int,
                    mesh=None, micro_shards: int = 0, host_fed: bool = False) -> Callable:
  """A jitted fn(state, inputs, keys, step, index) -> (state, trace of that one step).

  The per-step program: the same step as make_train_chunk's, compiled on its
  own and dispatched once per step (no host sync between steps). inputs is
  (the device-resident train split, the permutation of the step's epoch), or
  with host_fed the chunk's fed (batches, indices), of which the step takes
  row `index`. The trace holds the step's 'loss', 'batch', 'params' and
  'metrics'. The state's buffers are not donated: on CPU, Orbax's async save
  may still read a checkpoint's arrays through zero-copy host views while the
  next steps run.
  """
  reduction = _reduction(mesh, micro_shards, batch_size)
  rows = batch_size // (mesh.size if mesh is not None else 1)
  spe = shuffle.steps_per_epoch(num_examples, batch_size)

  def one(state, inputs, keys, global_step, index, trip):
    step = _traced(make_step(graphdef, task, reduction, keys),
                   augmenter(task, keys, num_examples, batch_size))
    if host_fed:
      return step(state, global_step, trip, *_fed_examples(inputs, rows, mesh)(index))
    data, perm = inputs
    idx = jax.lax.dynamic_slice_in_dim(perm, (global_step % spe) * batch_size, batch_size)
    return step(state, global_step, trip, idx,
                lambda start, size: _gather(data, jax.lax.dynamic_slice_in_dim(idx, start, size)))

  compiled = _compile(one, mesh, micro_shards, host_fed)

  def train_step(state, inputs, keys, global_step, index):
    return compiled(state, inputs, keys, global_step, index, np.int32(reduction.trip))

  train_step.cache_size = compiled._cache_size
  return train_step


def augment_batch(task: Task, keys: dict, batch: dict, idx: jax.Array, epoch) -> dict:
  """The batch's examples through task.augment, each with the key of (seed, epoch, its
  position `idx` in the train split) (traceable)."""
  example_keys = jax.vmap(lambda i: rng.example_key(keys, epoch, i))(idx)
  return jax.vmap(task.augment)(batch, example_keys)


def augmenter(task: Task, keys: dict, num_examples: int, batch_size: int) -> Callable | None:
  """fn(examples, idx, global_step) -> examples, augmented (None: the task does not augment).

  examples(start, size) gives positions [start, start + size) of the step's global batch,
  whose split positions are idx[start:start + size]: each device and micro-shard augments
  its own examples, with their own keys.
  """
  if not augments(task):
    return None
  steps_per_epoch = shuffle.steps_per_epoch(num_examples, batch_size)

  def augmented(examples, idx, global_step):
    def at(start, size):
      positions = jax.lax.dynamic_slice_in_dim(idx, start, size)
      return augment_batch(task, keys, examples(start, size), positions,
                           global_step // steps_per_epoch)
    return at

  return augmented


def _traced(step: Callable, augment: Callable | None) -> Callable:
  """step(state, examples, global_step, trip) as fn(state, global_step, trip, idx, examples)
  -> (state, {'loss', 'batch', 'params', 'metrics'}): the step (on the examples augmented,
  if `augment`) and its trace entry."""

  def traced(state, global_step, trip, idx, examples):
    if augment is not None:
      examples = augment(examples, idx, global_step)
    state, loss, metrics = step(state, examples, global_step, trip)
    return state, {"loss": loss, "batch": fingerprint(idx),
                   "params": fingerprint(state["model"]), "metrics": metrics}

  return traced


def _compile(fn: Callable, mesh, micro_shards: int, host_fed: bool):
  """jit(fn(state, inputs, keys, a, b, trip)), data-parallel over `mesh` if there is one."""
  if mesh is None:
    return jax.jit(fn)
  replicated = jax.sharding.PartitionSpec()
  fed = (jax.sharding.PartitionSpec(None, mesh.axis_names[0]), replicated)
  inputs = fed if host_fed else replicated
  return jax.jit(jax.shard_map(
      fn, mesh=mesh, in_specs=(replicated, inputs) + (replicated,) * 4, out_specs=replicated,
      check_vma=False),
      compiler_options=INVARIANT_COMPILER_OPTIONS if micro_shards else None)


def _resident_examples(data, shuffle_key, first_step, chunk_steps: int, num_examples: int,
                       batch_size: int) -> Callable:
  """examples_at(i) -> (indices, examples) of chunk step i: gathered from `data`."""
  first_epoch, perms = shuffle.chunk_permutations(shuffle_key, first_step, chunk_steps,
                                                  num_examples, batch_size)

  def examples_at(i):
    idx = shuffle.batch_from_permutations(first_epoch, perms, first_step + i, num_examples,
                                          batch_size)
    return idx, lambda start, size: _gather(data, jax.lax.dynamic_slice_in_dim(idx, start, size))

  return examples_at


def _fed_examples(inputs, rows: int, mesh) -> Callable:
  """examples_at(i) -> (indices, examples) of chunk step i: this device's fed rows."""
  batches, indices = inputs
  offset = jax.lax.axis_index(mesh.axis_names[0]) * rows if mesh is not None else 0

  def examples_at(i):
    batch = {k: v[i] for k, v in batches.items()}
    return indices[i], lambda start, size: {
        k: jax.lax.dynamic_slice_in_dim(v, start - offset, size) for k, v in batch.items()}

  return examples_at


def _reduction(mesh, micro_shards: int, batch_size: int):
  if mesh is None:
    return Local(batch_size)
  axis = mesh.axis_names[0]
  if micro_shards:
    return MicroShards(axis, mesh.shape[axis], micro_shards, batch_size)
  return AcrossDevices(axis, mesh.shape[axis], batch_size)


def _scan_steps(step: Callable, state, num_steps, chunk_steps: int, entry: dict | None):
  """Scans step(state, i) -> (state, trace entry) over a chunk's steps i.

  Steps past num_steps are masked (lax.cond), so one program serves every
  chunk length; the trace holds each step's loss and metrics and the
  fingerprints of its batch and of the model state after it. entry: the
  entry's shapes, for the masked steps' zeros (None: found by tracing the step).
  """
  shapes = entry if entry is not None else jax.eval_shape(step, state, jnp.int32(0))[1]

  def body(state, i):
    skip = lambda state: (state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
    return jax.lax.cond(i < num_steps, lambda s: step(s, i), skip, state)

  return jax.lax.scan(body, state, jnp.arange(chunk_steps, dtype=jnp.int32))


def make_evaluate_batch(graphdef: nnx.GraphDef, task: Task) -> Callable:
  """A jitted fn(state, batch, valid) -> {metric: its sum over the batch's first `valid` examples}.

  The model is in evaluation mode (model.eval(): dropout off, BatchNorm's
  running statistics). repro.data.feed.evaluate feeds it a split batch by batch
  (EVAL_BATCH examples, the last one padded) on one device, and adds the sums
  in a fixed order: the same program on every topology and data path.
  """

  @jax.jit
  def evaluate_batch(state, batch, valid):
    model = nnx.merge(graphdef, state)["model"]
    model.eval()
    values = task.eval_metrics(model, batch)
    mask = jnp.arange(len(next(iter(batch.values())))) < valid
    return {name: jnp.where(mask, value, 0).sum() for name, value in values.items()}

  return evaluate_batch
