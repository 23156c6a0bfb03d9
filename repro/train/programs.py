"""Chunk programs: what runs a chunk of steps, behind one interface.

    program(train_state, first_step, num_steps) -> (train_state, trace)

The trace is a dict of per-step device arrays ('loss', 'batch', 'params',
'metrics') of which the first num_steps entries are real; the trainer brings
it to the host once per chunk. A program never depends on where a chunk
starts or how long it is: the same compiled code runs every step, so chunk
lengths never change the bits. close() releases what it holds.

ScanChunks: one compiled lax.scan of chunk_steps steps, tail masked, over the
device-resident train split or the chunk's batches fed from the host
(repro.data.feed.HostFeed); both give the same bits.
StepChunks: one compiled step, dispatched once per step of the chunk.
The two are different compiled code, so they give different bits: the
program is part of a run's identity (--program; 'auto' is resolved by RULE
from the task's model and the platform, never by a timing).
"""

from __future__ import annotations

import functools
from typing import Protocol

import jax
import numpy as np
from flax import nnx

from repro.train import core
from repro.data import feed as feed_lib
from repro.machine import parallel
from repro.data import shuffle


class ChunkProgram(Protocol):
  def __call__(self, train_state, first_step: int, num_steps: int): ...

  def close(self) -> None: ...


class ScanChunks:
  """Each chunk one call of a compiled lax.scan (repro.train.core.make_train_chunk)."""

  def __init__(self, plan):
    config, host_fed = plan.config, plan.config.data_path == "host"
    self.fn = core.make_train_chunk(
        plan.built.graphdef, plan.task, chunk_steps=plan.schedule.chunk_steps,
        num_examples=len(plan.data.train), batch_size=config.batch_size, mesh=plan.mesh,
        micro_shards=config.micro_shards, host_fed=host_fed, entry=plan.entry)
    self.keys, self.target = plan.keys, plan.schedule.target
    self.feed = feed_lib.HostFeed(plan.data.train, plan.shuffle_key, config.batch_size,
                                  plan.schedule.chunk_steps, plan.mesh) if host_fed else None
    self.data = None if host_fed else parallel.replicate(plan.data.resident("train"), plan.mesh)

  def __call__(self, train_state, first_step: int, num_steps: int):
    if self.feed is None:
      return self.fn(train_state, self.data, self.keys, np.int32(first_step),
                     np.int32(num_steps))
    out = self.fn(train_state, self.feed.get(first_step), self.keys, np.int32(first_step),
                  np.int32(num_steps))  # dispatched, not done
    if first_step + num_steps < self.target:
      self.feed.prefetch(first_step + num_steps)  # gathered while the devices compute
    return out

  def close(self) -> None:
    if self.feed is not None:
      self.feed.close()


class StepChunks:
  """Each step its own compiled program (repro.train.core.make_train_step), dispatched in turn.

  The host queues the chunk's steps without waiting for any (JAX dispatches
  asynchronously) and the trainer syncs once, on the chunk's trace. On
  XLA:CPU this runs convolutions at their full speed: inside a loop body
  their kernel gradients run far slower (jax-ml/jax#12868, see docs/
  performance.md). Resident data: each epoch's permutation is computed once,
  by the same function the scan chunk uses.
  """

  def __init__(self, plan):
    config, host_fed = plan.config, plan.config.data_path == "host"
    n = len(plan.data.train)
    self.fn = core.make_train_step(
        plan.built.graphdef, plan.task, num_examples=n, batch_size=config.batch_size,
        mesh=plan.mesh, micro_shards=config.micro_shards, host_fed=host_fed)
    self.keys, self.target, self.mesh = plan.keys, plan.schedule.target, plan.mesh
    self.spe = plan.schedule.steps_per_epoch
    self.feed = feed_lib.HostFeed(plan.data.train, plan.shuffle_key, config.batch_size,
                                  plan.schedule.chunk_steps, plan.mesh) if host_fed else None
    self.data = None if host_fed else parallel.replicate(plan.data.resident("train"), plan.mesh)
    self._permutation = jax.jit(functools.partial(shuffle.epoch_permutation, plan.shuffle_key,
                                                  num_examples=n))
    self._perms: dict[int, jax.Array] = {}

  def _perm(self, epoch: int) -> jax.Array:
    if epoch not in self._perms:
      self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
      self._perms[epoch] = parallel.replicate(self._permutation(np.int32(epoch)), self.mesh)
    return self._perms[epoch]

  def __call__(self, train_state, first_step: int, num_steps: int):
    fed = self.feed.get(first_step) if self.feed is not None else None
    entries = []
    for index in range(num_steps):
      step = first_step + index
      inputs = fed if fed is not None else (self.data, self._perm(step // self.spe))
      train_state, entry = self.fn(train_state, inputs, self.keys, np.int32(step),
                                   np.int32(index))
      entries.append(entry)
    if self.feed is not None and first_step + num_steps < self.target:
      self.feed.prefetch(first_step + num_steps)
    return train_state, jax.tree.map(lambda *steps: list(steps), *entries)

  def close(self) -> None:
    if self.feed is not None:
      self.feed.close()


# Which program runs a run's chunks: --program, with 'auto' resolved by RULE.
PROGRAMS = {"scan": ScanChunks, "step": StepChunks}
RULE = ("auto: 'step' on CPU when the model holds a convolution (nnx.Conv, nnx.ConvTranspose) "
        "and the run is not topology-invariant, else 'scan'")


def resolve(program: str, model, backend: str, micro_shards: int) -> str:
  """The program a run uses: `program`, or for 'auto' RULE's choice (task, config, platform).

  The topology-invariant mode (micro_shards) always runs the scan: measured, the
  per-step program's bits follow the device count there (XLA compiles the lone
  step for one device otherwise than for several, even without its algebraic
  simplifier), so --program=step is refused with it (repro.config).
  """
  if program != "auto":
    return program
  convolves = any(isinstance(node, (nnx.Conv, nnx.ConvTranspose))
                  for _, node in nnx.iter_graph(model))
  return "step" if backend == "cpu" and convolves and not micro_shards else "scan"
