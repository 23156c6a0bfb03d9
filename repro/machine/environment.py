"""What the bits of a run depend on besides its config: versions, platform, code.

Measured on this project's 2-core x86-64 CPU machines (bench/determinism.py):
one compiled chunk called 30 times on the same inputs gives one result (no
drift across calls as in jax-ml/jax#39741). XLA:CPU splits work by its thread
pool's size, which repro fixes from the config (repro.machine.backend), so the number
of CPUs no longer decides the bits; it is recorded, with the pool, the XLA
flags and the CPU's vector features (compared on resume like the versions).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from repro.machine import backend

# XLA flags that decide the bits; set before a backend starts.
# --xla_gpu_deterministic_ops: GPU reductions and scatters without atomics
# (the CPU build accepts and ignores it). On CPU, which library runs
# convolutions (repro.machine.backend.CPU_FLAGS; the pool is repro.machine.backend's too).
DETERMINISM_FLAGS = ("--xla_gpu_deterministic_ops=true", *backend.CPU_FLAGS)
# CPU features that change XLA:CPU's generated code, and so may change bits.
_CPU_FEATURES = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512\w*|amx\w*|neon|asimd\w*|sve\w*)$")

# Packages whose versions decide (or may decide) the trained bits.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
            "tensorflow-datasets", "repro")


# The lock of every package the README's install command installs, made by
# pip-compile from setup.cfg's pins (BUILD.md); requirements-test.lock adds
# the test extras. Beside the package in a checkout or editable install.
ROOT = Path(__file__).resolve().parents[2]  # the checkout (repro/machine/environment.py)
LOCK = ROOT / "requirements.lock"


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
  """{normalized name: version} of the `name==version` lines of a pip-compile lock."""
  found = {}
  for line in lock.read_text().splitlines():
    match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
    if match:
      found[_normalized(match.group(1))] = match.group(2)
  return found


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def installed_versions() -> dict[str, str]:
  """{normalized name: version} of every distribution installed in this environment.

  Read once per process (0.2 s: every distribution's metadata): a package installed
  after its import does not change the code this process runs."""
  return {_normalized(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
          if d.metadata["Name"]}


def lock_status(lock: Path = LOCK) -> dict[str, object]:
  """The lock's sha256, and each locked package installed at another version (or absent)."""
  if not lock.is_file():
    return {"lock_digest": None, "differs_from_lock": None}
  installed = installed_versions()
  differs = [f"{name}: locked {version}, installed {installed.get(name, 'none')}"
             for name, version in sorted(locked_versions(lock).items())
             if installed.get(name) != version]
  return {"lock_digest": hashlib.sha256(lock.read_bytes()).hexdigest(),
          "differs_from_lock": differs}


def versions() -> dict[str, str | None]:
  found = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def set_determinism_flags() -> None:
  """Adds DETERMINISM_FLAGS to XLA_FLAGS unless the user set them either way.

  Must run before the first JAX computation starts a backend; repro does it
  at import.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in DETERMINISM_FLAGS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags


def defer_collection() -> None:
  """No garbage collection until settle_imports(): for a process's entry point, at its start.

  Importing JAX, Flax, Optax and Orbax makes ~150,000 objects that live as long as the
  process; the collector's full collections walked them again and again while they were
  made. Not for the library's functions: a user's process decides its own collector.
  """
  gc.disable()


def settle_imports() -> None:
  """Collection again, without what the process has imported so far (gc.freeze: objects that
  live as long as the process, which every full collection walked again).

  For a process's entry point, once its heavy imports are done (after defer_collection()).
  Measured on a short bin/train of the reference task (2-core AMD EPYC, fresh processes,
  alternating with the code before): 3.59 -> 2.89 CPU-s with a warm compilation cache,
  10.8 -> 9.4 compiling afresh (docs/performance.md, "Compiling").
  """
  gc.freeze()
  gc.enable()


def default_cache_dir() -> Path:
  """Where training compiles into unless JAX was configured otherwise:
  $JAX_COMPILATION_CACHE_DIR, else ~/.cache/repro/jax."""
  return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or "~/.cache/repro/jax").expanduser()


def enable_compilation_cache() -> str:
  """Turns on JAX's persistent compilation cache (unless the user configured one).

  A second start of the same run loads its compiled chunk instead of
  compiling it (measured: 2.8 s -> 0.85 s for the first chunk), with the same
  bits: it is the same executable, keyed by JAX on versions, flags and device.
  Default location: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/repro/jax.
  """
  import jax  # here, not at import: `import repro` imports no JAX (repro/__init__.py)
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(default_cache_dir()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return jax.config.jax_compilation_cache_dir


def cpu_info() -> dict[str, object]:
  """CPU model, the vector features XLA may use, and the CPUs this process may run on."""
  model, features = platform.processor() or platform.machine(), []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
          model = value.strip()
        elif key.strip() in ("flags", "Features"):
          features = sorted(x for x in set(value.split()) if _CPU_FEATURES.match(x))
          break
  except OSError:
    pass
  try:
    visible = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    visible = os.cpu_count()
  return {"cpu_model": model, "cpu_features": features, "cpus_visible": visible,
          "cpu_count": os.cpu_count()}


def platform_info(devices_used: int = 1) -> dict[str, object]:
  """The platform; devices_used is the size of the run's data-parallel mesh."""
  import jax
  devices = jax.devices()
  return {
      "system": platform.system(),
      "machine": platform.machine(),
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "devices_used": devices_used,
      "process_count": jax.process_count(),
      **cpu_info(),
      "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
      "jax_default_prng_impl": str(jax.config.jax_default_prng_impl),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_cpu_pool": backend.pool(),
  }


def code_revision() -> dict[str, object] | None:
  """The git commit of the repro source tree and whether it had local edits, if known."""
  root = ROOT
  try:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10)
    if head.returncode != 0:
      return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "repro"],
                           capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def describe(devices_used: int = 1) -> dict[str, object]:
  return {"versions": {**versions(), **lock_status()}, "platform": platform_info(devices_used),
          "code": code_revision()}


def bit_flags(xla_flags: str) -> str:
  """XLA_FLAGS less the ones that only create devices (their use is devices_used)."""
  return " ".join(f for f in xla_flags.split()
                  if not f.startswith("--xla_force_host_platform_device_count"))
