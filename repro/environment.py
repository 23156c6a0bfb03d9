"""What the bits of a run depend on besides its config: versions, platform, code."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

# Packages whose versions decide (or may decide) the trained bits.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
            "tensorflow-datasets", "repro")


def versions() -> dict[str, str | None]:
  found = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def platform_info() -> dict[str, object]:
  devices = jax.devices()
  return {
      "system": platform.system(),
      "machine": platform.machine(),
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "cpu_count": os.cpu_count(),
      "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
      "jax_default_prng_impl": str(jax.config.jax_default_prng_impl),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def code_revision() -> dict[str, object] | None:
  """The git commit of the repro source tree and whether it had local edits, if known."""
  root = Path(__file__).resolve().parent.parent
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


def describe() -> dict[str, object]:
  return {"versions": versions(), "platform": platform_info(), "code": code_revision()}
