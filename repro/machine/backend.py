"""XLA:CPU's configuration, which decides the bits: repro's choice, set before the backend starts.

Measured on jaxlib 0.10.2 (docs/limits.md, docs/performance.md):
- XLA:CPU splits convolutions, dots and reductions across its thread pool,
  whose size is max(PJRT_NPROC, else NPROC, else the CPUs the process may use;
  the process's device count). The split decides the bits: with the library
  defaults a pool of 1 gave other bits than pools of 2-64, and with Eigen's
  convolutions every pool size gave its own bits. The CPUs the pool's threads
  actually run on change nothing (a pool of 4 pinned to 1 CPU gives a pool of
  4's bits).
- By default dots, convolutions and reductions run as YNNPACK fusions; its
  convolutions were about 1.8x slower than Eigen's on the reference CNN.

So repro fixes the pool by the command, never by the machine: PJRT_NPROC =
pool_size(config), max(--cpu_threads, --micro_shards), set at `import repro`
(for the default config) and again by every entry point before the backend
starts; and it runs convolutions on Eigen (CPU_FLAGS). Both are recorded:
cpu_threads in the config and the identity, the flags and the pool in the
manifest's platform. A backend that already started with another pool cannot
be changed: ensure() refuses with one line instead of training other bits.
"""

from __future__ import annotations

import os
import sys

from repro.errors import ReproError

# Threads of XLA:CPU's pool unless the config says otherwise (Config.cpu_threads).
DEFAULT_THREADS = 2
POOL_ENV = "PJRT_NPROC"  # XLA:CPU reads it when its client starts (xla/pjrt/utils.cc)
# YNNPACK keeps dots and reductions; convolutions go to Eigen (the default also
# sends convolutions, 'individual_convolution', to YNNPACK). Models without a
# convolution compute exactly what the default computes.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"{YNN_FLAG}=individual_dot,reduce",)

# What PJRT_NPROC and XLA_FLAGS were when `import repro` found a backend already
# running (its pool and flags were not repro's); None: none was running then.
_env_at_import: dict | None = None


def pool_size(cpu_threads: int, micro_shards: int = 0) -> int:
  """The pool a run uses: --cpu_threads, raised to --micro_shards in the topology-invariant mode.

  A process of D devices has a pool of at least D threads (XLA's rule), so a
  run whose bits must not follow its device count (micro-shards, D <= M)
  runs every device count on a pool of M or more.
  """
  return max(cpu_threads, micro_shards)


def started() -> bool:
  """Whether a JAX backend has started in this process (its pool is then fixed)."""
  if "jax" not in sys.modules:  # not even imported (and `import repro` does not import it)
    return False
  from jax._src import xla_bridge  # JAX has no public test for it
  return xla_bridge.backends_are_initialized()


def prepare_at_import() -> None:
  """At `import repro`: the default pool, unless a backend already runs (ensure() then checks)."""
  global _env_at_import
  if started():
    _env_at_import = {name: os.environ.get(name, "") for name in (POOL_ENV, "XLA_FLAGS")}
    return
  os.environ[POOL_ENV] = str(DEFAULT_THREADS)


def apply(threads: int) -> None:
  """Sets the pool for a backend not yet started (a no-op once one has: ensure() checks)."""
  if not started():
    os.environ[POOL_ENV] = str(threads)


def _started_with() -> tuple[str, bool]:
  """(PJRT_NPROC the running backend was started with, whether repro's flags were in force)."""
  if _env_at_import is not None:
    return _env_at_import[POOL_ENV] or "unset", YNN_FLAG in _env_at_import["XLA_FLAGS"]
  return os.environ.get(POOL_ENV, "unset"), True


def ensure(cpu_threads: int, micro_shards: int = 0) -> None:
  """Applies the run's pool, or refuses (one line) if the CPU backend runs with another."""
  threads = pool_size(cpu_threads, micro_shards)
  if not started():
    return apply(threads)
  import jax
  if jax.default_backend() != "cpu":
    return  # the pool runs the host's work only
  have, flags = _started_with()
  if have == str(threads) and flags:
    return
  fix = ("import repro before any JAX computation (it sets them at import)"
         if _env_at_import is not None else
         "run it before any other JAX computation in this process")
  raise ReproError(
      f"this process's JAX backend started with an XLA:CPU pool of PJRT_NPROC={have}"
      f"{'' if flags else ' and without repro XLA flags'}, but the run's bits need {threads} "
      f"(--cpu_threads={cpu_threads}{f', --micro_shards={micro_shards}' if micro_shards else ''})"
      f": {fix}, or use bin/train")


def check_devices(cpu_threads: int, micro_shards: int) -> None:
  """With micro-shards, refuses a process whose device count makes its pool larger than M's."""
  found = pool()
  if micro_shards and found is not None and found != pool_size(cpu_threads, micro_shards):
    raise ReproError(
        f"this process has {found} CPU devices, so XLA:CPU's pool has {found} threads, not the "
        f"{pool_size(cpu_threads, micro_shards)} of --micro_shards={micro_shards} on every "
        f"device count: run in a process of at most {micro_shards} devices, or pass "
        f"--cpu_threads={found} on every device count")


def pool() -> int | None:
  """The pool of this process's CPU backend: max(PJRT_NPROC, its device count); None if not CPU."""
  import jax
  if jax.default_backend() != "cpu":
    return None
  have, _ = _started_with()
  return max(int(have) if have.isdigit() else 0, jax.local_device_count())
