"""Chunk programs: what runs a chunk of steps, behind one interface.

    program(train_state, first_step, num_steps) -> (train_state, trace)

The trace is a dict of per-step device arrays ('loss', 'batch', 'params',
'metrics') of which the first num_steps entries are real; the trainer brings
it to the host once per chunk. A program never depends on where a chunk
starts or how long it is: the same compiled code runs every step, so chunk
lengths never change the bits. close() releases what it holds.

ScanChunks: one compiled lax.scan of chunk_steps steps, tail masked, over the
device-resident train split or the chunk's batches fed from the host
(repro.feed.HostFeed); both give the same bits.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from repro import core
from repro import feed as feed_lib
from repro import parallel


class ChunkProgram(Protocol):
  def __call__(self, train_state, first_step: int, num_steps: int): ...

  def close(self) -> None: ...


class ScanChunks:
  """Each chunk one call of a compiled lax.scan (repro.core.make_train_chunk)."""

  def __init__(self, plan):
    config, host_fed = plan.config, plan.config.data_path == "host"
    self.fn = core.make_train_chunk(
        plan.built.graphdef, plan.task, chunk_steps=config.chunk_steps,
        num_examples=len(plan.data.train), batch_size=config.batch_size, mesh=plan.mesh,
        micro_shards=config.micro_shards, host_fed=host_fed)
    self.keys, self.target = plan.keys, plan.schedule.target
    self.feed = feed_lib.HostFeed(plan.data.train, plan.shuffle_key, config.batch_size,
                                  config.chunk_steps, plan.mesh) if host_fed else None
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
