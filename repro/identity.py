"""What a checkpoint must agree on to be resumed bit for bit, and the checks that say so.

The identity of a run is its config's bit-deciding fields, its task's name,
options and architecture, the shuffle scheme, the key streams and the data
fingerprints. A checkpoint is refused (one line per differing field) unless
its identity equals the requested one, and unless its state has the
structure (names, shapes, dtypes) of the model and optimizer built now; both
are read before any array is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import jax

from repro import environment
from repro import rng
from repro import shuffle
from repro.config import IDENTITY_DEFAULTS, Config
from repro.errors import ReproError
from repro.task import Task

_MAX_LINES = 12  # differing structure lines shown; the rest are counted


def of(config: Config, task: Task, data_fingerprints: dict[str, str],
       module_streams: bool) -> dict:
  """Everything a checkpoint must agree on to be resumed bit for bit."""
  found = {**config.identity_fields(), **task.identity(), "shuffle": shuffle.SCHEME,
           "rng_streams": rng.STREAMS, "data_fingerprint": data_fingerprints}
  if module_streams:  # how a module's own nnx.Rngs are reseeded every step
    found["module_rngs"] = rng.RESEED_SCHEME
  return found


def default_output(config: Config, task: Task) -> str:
  """runs/seed<seed>-<8 hex digits of the settings that decide the bits>.

  The settings: the config's bit fields and the task's options (and its name
  unless it is the default task, so that runs from before tasks keep their
  names).
  """
  task_bits = {k: v for k, v in task.identity().items() if k != "architecture"}
  if task_bits.get("task") == IDENTITY_DEFAULTS["task"]:
    del task_bits["task"]
  blob = json.dumps({**config.bit_fields(), **task_bits}, sort_keys=True).encode()
  return f"runs/seed{config.seed}-{hashlib.sha256(blob).hexdigest()[:8]}"


def check_compatible(output: Path, step: int, found: dict, expected: dict) -> None:
  """Refuses, one line per differing field, a checkpoint of another identity."""
  found = {**IDENTITY_DEFAULTS, **found}
  expected = {**IDENTITY_DEFAULTS, **expected}
  diffs = [f"  {key}: checkpoint {found.get(key)!r}, requested {value!r}"
           for key, value in expected.items() if found.get(key) != value]
  diffs += [f"  {key}: checkpoint {value!r}, requested none" for key, value in found.items()
            if key not in expected]
  _refuse(output, step, "it was trained with other settings that change the bits", diffs)


def structure(tree) -> dict[str, str]:
  """{'model/conv1/kernel': 'float32[3, 3, 1, 32]', ...} of a tree of arrays or metadata."""
  from repro import digest  # jax-heavy; only when restoring
  return {name: f"{leaf.dtype}{list(leaf.shape)}"
          for name, leaf in map(_key_data, digest.named_leaves(tree, to_host=False).items())}


def _key_data(item):
  """A PRNG key leaf as Orbax stores it: its key data (uint32[..., 2] for threefry)."""
  name, leaf = item
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
  return name, leaf


def check_structure(output: Path, step: int, saved: dict, expected: dict) -> None:
  """Refuses a checkpoint whose state has other leaves, shapes or dtypes than the model's."""
  saved_s, expected_s = structure(saved), structure(expected)
  diffs = [f"  {name}: checkpoint {saved_s.get(name, 'none')}, requested "
           f"{expected_s.get(name, 'none')}" for name in sorted(set(saved_s) | set(expected_s))
           if saved_s.get(name) != expected_s.get(name)]
  if len(diffs) > _MAX_LINES:
    diffs = diffs[:_MAX_LINES] + [f"  ... and {len(diffs) - _MAX_LINES} more leaves"]
  _refuse(output, step, "its model or optimizer has another structure", diffs)


def _refuse(output: Path, step: int, why: str, diffs: list[str]) -> None:
  if diffs:
    raise ReproError(f"cannot resume {output} (step {step}): {why}:\n" + "\n".join(diffs) +
                     "\nrerun with the checkpoint's settings, or pass a new --output")


def check_environment(step: int, manifest: dict, now: dict, strict: bool,
                      log: Callable[[str], None], topology_invariant: bool = False) -> None:
  """Warns (or with strict refuses) where versions or platform differ from the checkpoint's.

  The number of devices, and how they are spread over processes (psum over
  gloo rounds otherwise than within one process: measured), decide the bits
  unless the run is topology-invariant (micro_shards); checkpoints from before
  these were recorded used one device in one process.
  """
  saved = manifest.get("environment", {})
  platform_keys = ("system", "machine", "backend", "device_kind", "cpu_features",
                   "cpus_visible", "jax_threefry_partitionable", "jax_default_prng_impl",
                   "xla_flags") + (() if topology_invariant else ("devices_used", "process_count"))
  defaults = {"devices_used": 1, "process_count": 1}
  diffs = []
  for section, keys in (("versions", environment.PACKAGES + ("python", "lock_digest")),
                        ("platform", platform_keys)):
    for key in keys:
      if key == "repro":
        continue
      if key == "lock_digest" and key not in saved.get(section, {}):
        continue  # a checkpoint from before the lock: its versions are compared above
      old = saved.get(section, {}).get(key, defaults.get(key))
      new = now[section].get(key)
      if key == "xla_flags":
        old, new = environment.bit_flags(old or ""), environment.bit_flags(new or "")
      if old != new:
        diffs.append(f"{key} {old!r} -> {new!r}")
  if not diffs:
    return
  message = (f"checkpoint step {step} was written with {', '.join(diffs)}: the resumed run "
             f"may not be bitwise equal to an uninterrupted one")
  if strict:
    raise ReproError(message + " (--strict); rerun in the checkpoint's environment")
  log("warning: " + message + " (--strict makes this an error)")
