"""Devices and processes: the data-parallel mesh, replicated placement, host copies.

The engine is JAX's own: a one-axis jax.sharding.Mesh over the devices of
every process (jax.distributed joins the processes), shard_map for the step
(repro.train.core.make_train_chunk) and Orbax for the checkpoints, which
every process writes together. State and data are replicated on every device;
only the global batch is split.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from repro.errors import ReproError, one_line

AXIS = "data"


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, timeout_s: int = 120) -> None:
  """Joins a multi-process run with jax.distributed (before any JAX computation).

  Unset arguments come from JAX_COORDINATOR_ADDRESS and the cluster
  environments jax.distributed detects. CPU processes exchange arrays with
  gloo (JAX's default CPU collectives).
  """
  where = f"{coordinator_address or '$JAX_COORDINATOR_ADDRESS'}"
  if num_processes is not None and num_processes < 1:
    raise ReproError(f"--num_processes must be >= 1, got {num_processes}")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ReproError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s)
  except (ValueError, RuntimeError) as err:  # jax's JaxRuntimeError is a RuntimeError
    raise ReproError(
        f"cannot join the distributed run at {where} as process {process_id} of "
        f"{num_processes} ({one_line(err)}): check --coordinator_address, "
        f"--num_processes and --process_id, and start every process") from None


def is_primary() -> bool:
  """True in the one process that writes logs, locks and renames (process 0)."""
  return jax.process_index() == 0


def make_mesh(devices: int, micro_shards: int, batch_size: int) -> jax.sharding.Mesh | None:
  """The data-parallel mesh over the first `devices` devices (0: all), or None for one.

  None means the single-device program (repro.train.core.make_train_chunk), whose
  bits are those of every release so far. Raises ReproError for counts the
  batch or the micro-shards cannot be split over.
  """
  available = jax.devices()
  count = devices or len(available)
  if count > len(available):
    raise ReproError(
        f"--devices={devices} but {len(available)} device(s) are visible: pass --devices=N "
        f"with N <= {len(available)} (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
        f"makes N devices)")
  if jax.process_count() > 1 and count != len(available):
    raise ReproError(
        f"--devices={devices} in a run of {jax.process_count()} processes: a multi-process "
        f"run uses all {len(available)} devices; leave --devices unset")
  if micro_shards:
    if micro_shards % count:
      raise ReproError(
          f"--micro_shards={micro_shards} cannot be split over {count} devices: pass a "
          f"device count that divides it (--devices=N)")
  elif batch_size % count:
    raise ReproError(
        f"--batch_size={batch_size} cannot be split over {count} devices: pass a batch size "
        f"divisible by {count} or --devices=N")
  if count == 1 and not micro_shards:
    return None
  return jax.make_mesh((count,), (AXIS,), devices=available[:count])


def replicated(mesh: jax.sharding.Mesh | None):
  """The sharding that keeps a whole copy on every device of `mesh`."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh else None


def replicate(tree, mesh: jax.sharding.Mesh | None):
  """Places host or device arrays (the same value in every process) on every device."""
  if mesh is None:
    return jax.device_put(tree)
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(put, tree)


def abstract(tree, mesh: jax.sharding.Mesh | None):
  """A restore template: shapes and dtypes of `tree` on every device of `mesh`.

  With no mesh, on the first device. The sharding must always be given:
  Orbax refuses a checkpoint written on another mesh without one.
  """
  sharding = replicated(mesh) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def first_device() -> jax.Device:
  """This process's first device: where it evaluates (see on_one_device)."""
  return jax.local_devices()[0]


def on_one_device(tree):
  """This process's copy of a replicated pytree, on first_device() (its shard there)."""
  device = first_device()

  def local(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      shard = next((s.data for s in x.addressable_shards if s.device == device), None)
      return shard if shard is not None else jax.device_put(x.addressable_data(0), device)
    return x

  return jax.tree.map(local, tree)


def to_host(x) -> np.ndarray:
  """A host copy of a replicated array, also where other processes hold devices of it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def to_host_tree(tree):
  """to_host of every leaf of a pytree (one transfer per leaf)."""
  return jax.tree.map(to_host, tree)


def from_primary(values: np.ndarray) -> np.ndarray:
  """Process 0's `values` in every process (every process must call this together).

  For what decisions depend on (evaluations -> early stopping, plateau, best
  checkpoint): every process then takes the same branch even if its own
  devices rounded otherwise.
  """
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.broadcast_one_to_all(values))


def any_process(flag: bool) -> bool:
  """True if `flag` is true in any process (every process must call this together)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


def barrier(name: str) -> None:
  """Waits until every process got here (no-op in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
