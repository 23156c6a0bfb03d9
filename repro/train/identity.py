"""What decides the bits of a run, in one place, and the checks that a resume agrees with it.

The identity of a run is its config's bit-deciding fields, its task's name,
options and architecture, the shuffle scheme, the key streams and the data
fingerprints. A checkpoint is refused (one line per differing field) unless
its identity equals the requested one, and unless its state has the
structure (names, shapes, dtypes) of the model and optimizer built now; both
are read before any array is. The platform facts that decide the bits
(PLATFORM_KEYS) are compared on resume like the package versions.

A new knob that decides the bits is a Config field named in BIT_FIELDS (or,
if checkpoints exist without it, in ADDED_LATER with the value they were
trained with): nothing else needs editing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax

from repro.machine import environment
from repro.train import rewrites
from repro.train import rng
from repro.data import shuffle
from repro.config import Config
from repro.errors import ReproError
from repro.task import DEFAULT_TASK_NAME

if TYPE_CHECKING:
  from repro.task import Task

# The config fields whose values always decide the trained bits.
BIT_FIELDS = ("seed", "batch_size", "learning_rate", "validation_examples", "schedule",
              "warmup_steps")
# Bit-deciding fields added by later versions, with the value every checkpoint
# written without them was trained with. They enter the identity and the
# default output name only when they differ from it, so older runs keep both.
# (cpu_threads: before repro fixed XLA:CPU's pool it was the machine's CPU count, 2 on
# this project's machines; the example convolutional tasks' architectures were bumped, as
# Eigen's convolutions changed their bits.)
ADDED_LATER = {"micro_shards": 0, "program": "scan", "cpu_threads": 2}
# What an identity without a key means (checkpoints from before the key existed).
DEFAULTS = {**ADDED_LATER, "task": DEFAULT_TASK_NAME}
# Fields that decide the bits only in some configurations (see config_fields).
_COSINE_FIELDS = ("epochs",)
_PLATEAU_FIELDS = ("plateau_patience", "plateau_factor")
_STEERING_FIELDS = ("eval_every", "monitor", "patience")
# Keys the identity adds beside the config's fields and the task's options.
ARCHITECTURE, SHUFFLE, RNG_STREAMS, DATA, MODULE_RNGS, CONV_LAYOUT, DILATED_CONV = (
    "architecture", "shuffle", "rng_streams", "data_fingerprint", "module_rngs", "conv_layout",
    "dilated_conv")
INIT_FROM = "init_from"  # the Config field's name: the source, not its path, decides the bits
ADDED_KEYS = (ARCHITECTURE, SHUFFLE, RNG_STREAMS, DATA, MODULE_RNGS, INIT_FROM, CONV_LAYOUT,
              DILATED_CONV)
# Platform facts (repro.machine.environment.platform_info) that decide the bits; the
# topology keys do so only outside the topology-invariant mode (micro_shards).
PLATFORM_KEYS = ("system", "machine", "backend", "device_kind", "cpu_features", "xla_cpu_pool",
                 "jax_threefry_partitionable", "jax_default_prng_impl", "xla_flags")
TOPOLOGY_DEFAULTS = {"devices_used": 1, "process_count": 1}  # before they were recorded
VERSION_KEYS = tuple(p for p in environment.PACKAGES if p != "repro") + ("python", "lock_digest")

_MAX_LINES = 12  # differing structure lines shown; the rest are counted


def bit_fields(config: Config) -> dict[str, Any]:
  """The config's fields that always decide the trained bits (BIT_FIELDS, ADDED_LATER)."""
  fields = {name: getattr(config, name) for name in BIT_FIELDS}
  fields.update({name: getattr(config, name) for name, default in ADDED_LATER.items()
                 if getattr(config, name) != default})
  return fields


def config_fields(config: Config) -> dict[str, Any]:
  """Every config field a checkpoint must agree on to be resumed bit for bit.

  The cosine schedules decay over the whole run, so for them the number of
  epochs decides every step's learning rate and cannot be raised on resume.
  Early stopping and the plateau schedule act on evaluations, so for them
  when and what is evaluated decides where the run stops or decays.
  """
  fields = bit_fields(config)
  names = ()
  if config.schedule in ("cosine", "warmup_cosine"):
    names += _COSINE_FIELDS
  if config.schedule == "plateau":
    names += _PLATEAU_FIELDS
  if config.schedule == "plateau" or config.patience:
    names += _STEERING_FIELDS
  fields.update({name: getattr(config, name) for name in names})
  return fields


def reserved_names() -> set[str]:
  """Names a task's option may not take: they would mix with repro's own identity keys."""
  return {f.name for f in dataclasses.fields(Config)} | set(ADDED_KEYS)


def of(config: Config, task: Task, data_fingerprints: dict[str, str],
       module_streams: bool, init: dict | None = None, rewritten: set = frozenset()) -> dict:
  """Everything a checkpoint must agree on to be resumed bit for bit.

  init: what of a warm start's source decides the bits (repro.train.warmstart);
  rewritten: the rewrites the step applies (repro.train.rewrites).
  """
  found = {**config_fields(config), **task.identity(), SHUFFLE: shuffle.SCHEME,
           RNG_STREAMS: rng.STREAMS, DATA: data_fingerprints}
  if module_streams:  # how a module's own nnx.Rngs are reseeded every step
    found[MODULE_RNGS] = rng.RESEED_SCHEME
  if init is not None:
    found[INIT_FROM] = init
  if rewrites.CONV in rewritten and config.program == "scan":  # bits of a loop's convolutions
    found[CONV_LAYOUT] = rewrites.CONV_SCHEME
  if rewrites.DILATED in rewritten:  # bits of a dilated input's convolutions, in any program
    found[DILATED_CONV] = rewrites.DILATED_SCHEME
  return found


def default_output(config: Config, task: Task) -> str:
  """runs/seed<seed>-<8 hex digits of the settings that decide the bits>.

  The settings: the config's bit fields and the task's options (and its name
  unless it is the default task, so that runs from before tasks keep their
  names), and the warm start's source if there is one.
  """
  task_bits = {k: v for k, v in task.identity().items() if k != ARCHITECTURE}
  if task_bits.get("task") == DEFAULT_TASK_NAME:
    del task_bits["task"]
  if config.init_from:
    task_bits[INIT_FROM] = config.init_from
  blob = json.dumps({**bit_fields(config), **task_bits}, sort_keys=True).encode()
  return f"runs/seed{config.seed}-{hashlib.sha256(blob).hexdigest()[:8]}"


def _differing(key: str, found, value) -> list[str]:
  """The refusal's lines of one field; of each differing entry where both are dicts."""
  if isinstance(found, dict) and isinstance(value, dict):
    return [f"  {key}.{k}: checkpoint {found.get(k, 'none')!r}, "
            f"requested {value.get(k, 'none')!r}"
            for k in sorted(set(found) | set(value)) if found.get(k) != value.get(k)]
  return [f"  {key}: checkpoint {found!r}, requested {value!r}"]


def check_compatible(output: Path, step: int, found: dict, expected: dict) -> None:
  """Refuses, one line per differing field, a checkpoint of another identity."""
  found = {**DEFAULTS, **found}
  expected = {**DEFAULTS, **expected}
  diffs = [line for key, value in expected.items() if found.get(key) != value
           for line in _differing(key, found.get(key), value)]
  diffs += [f"  {key}: checkpoint {value!r}, requested none" for key, value in found.items()
            if key not in expected]
  _refuse(output, step, "it was trained with other settings that change the bits", diffs)


def structure(tree) -> dict[str, str]:
  """{'model/conv1/kernel': 'float32[3, 3, 1, 32]', ...} of a tree of arrays or metadata."""
  from repro.checkpoints import digest  # jax-heavy; only when restoring
  return {name: f"{leaf.dtype}{list(leaf.shape)}"
          for name, leaf in map(_key_data, digest.named_leaves(tree, to_host=False).items())}


def _key_data(item):
  """A PRNG key leaf as Orbax stores it: its key data (uint32[..., 2] for threefry)."""
  name, leaf = item
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
  return name, leaf


_RESUME_FIX = "rerun with the checkpoint's settings, or pass a new --output"


def check_structure(output: Path, step: int, saved: dict, expected: dict,
                    action: str = "resume", fix: str = _RESUME_FIX) -> None:
  """Refuses a checkpoint whose state has other leaves, shapes or dtypes than the model's."""
  saved_s, expected_s = structure(saved), structure(expected)
  diffs = [f"  {name}: checkpoint {saved_s.get(name, 'none')}, requested "
           f"{expected_s.get(name, 'none')}" for name in sorted(set(saved_s) | set(expected_s))
           if saved_s.get(name) != expected_s.get(name)]
  if len(diffs) > _MAX_LINES:
    diffs = diffs[:_MAX_LINES] + [f"  ... and {len(diffs) - _MAX_LINES} more leaves"]
  _refuse(output, step, "its model or optimizer has another structure", diffs, action, fix)


def _refuse(output: Path, step: int, why: str, diffs: list[str], action: str = "resume",
            fix: str = _RESUME_FIX) -> None:
  if diffs:
    raise ReproError(f"cannot {action} {output} (step {step}): {why}:\n" + "\n".join(diffs) +
                     f"\n{fix}")


def environment_diffs(saved: dict, now: dict, topology_invariant: bool) -> list[str]:
  """'key old -> new' for each version or platform fact that differs from the checkpoint's.

  The number of devices, and how they are spread over processes (psum over
  gloo rounds otherwise than within one process: measured), decide the bits
  unless the run is topology-invariant (micro_shards); checkpoints from before
  these were recorded used one device in one process.
  """
  platform_keys = PLATFORM_KEYS + (() if topology_invariant else tuple(TOPOLOGY_DEFAULTS))
  diffs = []
  for section, keys in (("versions", VERSION_KEYS), ("platform", platform_keys)):
    for key in keys:
      if key == "lock_digest" and key not in saved.get(section, {}):
        continue  # a checkpoint from before the lock: its versions are compared above
      old = saved.get(section, {}).get(key, TOPOLOGY_DEFAULTS.get(key))
      new = now[section].get(key)
      if key == "xla_flags":
        old, new = environment.bit_flags(old or ""), environment.bit_flags(new or "")
      if old != new:
        diffs.append(f"{key} {old!r} -> {new!r}")
  return diffs


def check_environment(step: int, manifest: dict, now: dict, strict: bool,
                      log: Callable[[str], None], topology_invariant: bool = False) -> None:
  """Warns (or with strict refuses) where versions or platform differ from the checkpoint's."""
  diffs = environment_diffs(manifest.get("environment", {}), now, topology_invariant)
  if not diffs:
    return
  message = (f"checkpoint step {step} was written with {', '.join(diffs)}: the resumed run "
             f"may not be bitwise equal to an uninterrupted one")
  if strict:
    raise ReproError(message + " (--strict); rerun in the checkpoint's environment")
  log("warning: " + message + " (--strict makes this an error)")
