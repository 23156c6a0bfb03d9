"""Feeding chunks and evaluations from the host: batches gathered by index, one chunk ahead.

HostFeed gives a host-fed chunk (repro.train.core.make_train_chunk(host_fed=True))
its inputs: the batches of its steps, gathered from a repro.data.source.Source by
the same counter-based order as the device-resident path (the batch of step s
is a function of s alone), and their indices. Each device receives only its
own rows of each batch, so each process reads only the examples of its own
micro-shards. A background thread gathers and transfers the next chunk while
the devices compute the current one.

evaluate() runs an evaluation batch by batch from a source, on one device,
the same way on both data paths.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Callable

import jax
import numpy as np

from repro.machine import parallel
from repro.data import shuffle
from repro.errors import ReproError
from repro.data.source import Source


class HostFeed:
  """The inputs of each chunk, gathered on the host and put on the devices, one chunk ahead."""

  def __init__(self, source: Source, shuffle_key: jax.Array, batch_size: int,
               chunk_steps: int, mesh):
    self.source, self.batch_size, self.chunk_steps, self.mesh = (
        source, batch_size, chunk_steps, mesh)
    self.num_examples = len(source)
    self.spe = shuffle.steps_per_epoch(self.num_examples, batch_size)
    self._permutation = jax.jit(functools.partial(shuffle.epoch_permutation, shuffle_key,
                                                  num_examples=self.num_examples))
    self._orders: dict[int, np.ndarray] = {}
    self._stamps = source.stamps()  # what the files were when the run began
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="repro-feed")
    self._next: tuple[int, concurrent.futures.Future] | None = None

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
      self._orders[epoch] = np.asarray(self._permutation(np.int32(epoch)))
    return self._orders[epoch]

  def indices(self, first_step: int, steps: int) -> np.ndarray:
    """(steps, batch) example indices of global steps first_step..: shuffle's order."""
    rows = []
    for step in range(first_step, first_step + steps):
      epoch, within = divmod(step, self.spe)
      rows.append(self._order(epoch)[within * self.batch_size:(within + 1) * self.batch_size])
    return np.stack(rows).astype(np.int32)

  def check_unchanged(self) -> None:
    """One line (ReproError) if a data file changed since the run began (CHANGE_RULE)."""
    now = self.source.stamps()
    for path, stamp in self._stamps.items():
      if now.get(path) != stamp:
        raise ReproError(f"data file {path} changed while the run read it (size and time "
                         f"{stamp} -> {now.get(path)}): restore it, or start a new run on the "
                         f"new data with another --output")

  def _load(self, first_step: int):
    """The chunk's (batches, indices) on the devices, each device with only its rows.

    The files are checked before and after the read, so bytes read while a file
    changed never reach the devices.
    """
    self.check_unchanged()
    idx = self.indices(first_step, self.chunk_steps)
    inputs = self._put(idx)
    self.check_unchanged()
    return inputs

  def _put(self, idx: np.ndarray):
    if self.mesh is None:
      batches = {name: value.reshape(idx.shape + value.shape[1:])
                 for name, value in self.source.gather(idx.ravel()).items()}
      return jax.device_put(batches), jax.device_put(idx)
    sharding = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(None, self.mesh.axis_names[0]))
    feats = self.source.features()
    pieces = {name: [] for name in feats}
    for device, index in sharding.addressable_devices_indices_map(idx.shape).items():
      rows = idx[:, index[1]]
      part = self.source.gather(rows.ravel())
      for name, value in part.items():
        pieces[name].append(jax.device_put(value.reshape(rows.shape + value.shape[1:]), device))
    batches = {name: jax.make_array_from_single_device_arrays(
        idx.shape + tuple(feats[name][1]), sharding, arrays) for name, arrays in pieces.items()}
    return batches, parallel.replicate(idx, self.mesh)

  def get(self, first_step: int):
    """The inputs of the chunk starting at first_step (prefetched if it was asked for)."""
    if self._next is not None and self._next[0] == first_step:
      inputs = self._next[1].result()
    else:
      inputs = self._load(first_step)
    self._next = None
    return inputs

  def prefetch(self, first_step: int) -> None:
    """Starts gathering the chunk at first_step in the background."""
    self._next = (first_step, self._worker.submit(self._load, first_step))

  def close(self) -> None:
    self._worker.shutdown(wait=True, cancel_futures=True)


def evaluate(evaluate_batch: Callable, state, source: Source, batch_size: int) -> dict:
  """{metric: mean over the source's examples}: batches fed from the host to one device.

  evaluate_batch(state, batch, valid) gives each metric's sum over the
  batch's first `valid` examples; the sums are added in batch order in
  float32, so the result does not depend on the data path or the topology.
  """
  device, n = parallel.first_device(), len(source)
  sums = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = min(batch_size, n - start)
    batch = source.gather(np.minimum(idx, n - 1))  # the last batch padded, then masked
    sums.append(evaluate_batch(state, jax.device_put(batch, device), np.int32(valid)))
  totals = {}
  for part in sums:
    for name, value in part.items():
      totals[name] = np.float32(totals.get(name, np.float32(0)) + np.float32(value))
  return {name: np.float32(total / np.float32(n)) for name, total in totals.items()}
