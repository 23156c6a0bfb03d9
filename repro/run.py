"""run(config) -> Result: resume or initialise, train chunk by chunk, checkpoint, evaluate.

All file and process I/O of a run lives here: the output directory, its lock,
checkpoints, signals, progress and the metrics log. The numerics are in
repro.train.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import signal
import sys
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from repro import checkpoint
from repro import data as data_lib
from repro import digest
from repro import environment
from repro import lock as lock_lib
from repro import metrics
from repro import model as model_lib
from repro import rng
from repro import shuffle
from repro import train
from repro.config import Config
from repro.errors import ReproError
from repro.stop import StopRequests

MANIFEST_FORMAT = 1
# What a run directory may hold; anything else means --output points at
# somebody else's files, which a run must not mix itself into.
_OURS = re.compile(r"^(\d+|\d+\.orbax-checkpoint-tmp.*|corrupt-\d+(-\d+)?|config\.json|"
                   r"(metrics|trace)\.jsonl(\.tmp)?|\.repro\.lock)$")
# Test-only fault injection (tests/test_faults.py): "kill_after_chunk:<step>"
# SIGKILLs the process once a chunk ends at <step>; "kill_in_save:<step>" does
# so right after the save of <step> has started writing in the background.
_FAULT = os.environ.get("REPRO_FAULT", "")


@dataclasses.dataclass(frozen=True)
class Result:
  """What a run ended with.

  Attributes:
    step: global steps completed (the cursor).
    loss: training loss of the last step.
    test_accuracy: accuracy on the test split of the final state (NaN when
      the run was stopped by a signal before its target).
    test_loss: mean loss on the test split (NaN likewise).
    output: the run directory.
    checkpoint: the directory of the last checkpoint step.
    digest: sha256 over every leaf of that checkpoint's state (repro.digest).
    resumed_from: the step this invocation resumed from, or None.
    already_complete: True if the run had already reached its target and
      nothing was trained or written.
    stopped_by: 'SIGTERM' or 'SIGINT' if a signal stopped the run early (a
      checkpoint was saved; rerun to resume), else None.
  """

  step: int
  loss: float
  test_accuracy: float
  test_loss: float
  output: str
  checkpoint: str
  digest: str
  resumed_from: int | None
  already_complete: bool
  stopped_by: str | None = None


def _check_output(config: Config) -> Path:
  """The absolute output path, refused if unusable; nothing is created here."""
  output = Path(config.output or config.default_output()).expanduser().absolute()
  if output.exists():
    if not output.is_dir():
      raise ReproError(f"--output {output} is a file, not a directory: pass a directory path")
    foreign = sorted(p.name for p in output.iterdir() if not _OURS.match(p.name))
    if foreign:
      raise ReproError(
          f"--output {output} holds files that are not part of a repro run "
          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): pass a new or "
          f"empty directory")
    if not os.access(output, os.W_OK | os.X_OK):
      raise ReproError(f"--output {output} is not writable: pass a writable directory")
    return output
  parent = output.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise ReproError(f"cannot create --output {output}: {parent} is a file; pass a directory path")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ReproError(f"cannot create --output {output}: {parent} is not writable")
  return output


def _cursor(step: int, spe: int, num_train: int, batch_size: int) -> dict:
  epoch, within = divmod(step, spe)
  return {"step": step, "epoch": epoch, "step_in_epoch": within, "steps_per_epoch": spe,
          "num_train_examples": num_train, "batch_size": batch_size, "shuffle": shuffle.SCHEME}


def _identity(config: Config, dataset: data_lib.Dataset) -> dict:
  """Everything a checkpoint must agree on to be resumed bit for bit."""
  return {**config.bit_fields(), "architecture": model_lib.ARCHITECTURE,
          "shuffle": shuffle.SCHEME, "rng_streams": rng.STREAMS,
          "data_fingerprint": dataset.fingerprint}


def _check_compatible(output: Path, step: int, manifest: dict, expected: dict) -> None:
  found = manifest.get("identity", {})
  diffs = [f"  {key}: checkpoint {found.get(key)!r}, requested {value!r}"
           for key, value in expected.items() if found.get(key) != value]
  if diffs:
    raise ReproError(
        f"cannot resume {output} (step {step}): it was trained with other settings that "
        f"change the bits:\n" + "\n".join(diffs) +
        "\nrerun with the checkpoint's settings, or pass a new --output")


def _check_environment(step: int, manifest: dict, now: dict, strict: bool, log) -> None:
  """Warns (or with strict refuses) where versions or platform differ from the checkpoint's."""
  saved = manifest.get("environment", {})
  diffs = []
  for section, keys in (("versions", environment.PACKAGES + ("python",)),
                        ("platform", ("system", "machine", "backend", "device_kind",
                                      "device_count", "cpu_features", "cpus_visible",
                                      "jax_threefry_partitionable", "jax_default_prng_impl",
                                      "xla_flags"))):
    for key in keys:
      if key == "repro":
        continue
      old, new = saved.get(section, {}).get(key), now[section].get(key)
      if old != new:
        diffs.append(f"{key} {old!r} -> {new!r}")
  if not diffs:
    return
  message = (f"checkpoint step {step} was written with {', '.join(diffs)}: the resumed run "
             f"may not be bitwise equal to an uninterrupted one")
  if strict:
    raise ReproError(message + " (--strict); rerun in the checkpoint's environment")
  log("warning: " + message + " (--strict makes this an error)")


def _restore_latest(store: checkpoint.Store, output: Path, template: dict, identity: dict,
                    env: dict, strict: bool, log):
  """The newest intact checkpoint as (restored, step), or None; bad steps are set aside.

  The manifest is read and checked before any array is touched, so an
  incompatible run is refused with its differing fields. A step whose items
  cannot be read, or whose arrays do not match the checksums in its manifest,
  is renamed to corrupt-<step>, reported, and the next older one is tried.
  """
  for step in sorted(store.all_steps(), reverse=True):
    try:
      manifest = store.read_json(step, "manifest")
      cursor = store.read_json(step, "cursor")
    except Exception as err:  # Orbax raises many types for a broken item
      problem = f"its manifest or cursor is unreadable ({type(err).__name__})"
    else:
      _check_compatible(output, step, manifest, identity)
      try:
        restored = store.restore(step, template)
      except Exception as err:
        problem = f"its state is unreadable ({type(err).__name__}: {str(err)[:120]})"
      else:
        expected = manifest.get("leaf_digests", {})
        found = digest.leaf_digests(restored.state)
        bad = sorted(set(expected) ^ set(found) | {k for k in found if expected.get(k) != found[k]})
        if not bad and expected and cursor.get("step") == step:
          _check_environment(step, manifest, env, strict, log)
          return restored, step
        if not expected:
          problem = "its manifest carries no checksums"
        elif bad:
          problem = f"checksum mismatch in {', '.join(bad[:3])}"
        else:
          problem = f"its cursor says step {cursor.get('step')}"
    aside = store.set_aside(step)
    log(f"WARNING: checkpoint {output / str(step)} is corrupt ({problem}); moved it to "
        f"{aside.name} and falling back to the previous checkpoint")
  return None


def _hex(fingerprint) -> str:
  return f"{int(fingerprint):08x}"


def _fault(kind: str, step: int) -> None:
  if _FAULT == f"{kind}:{step}":
    os.kill(os.getpid(), signal.SIGKILL)


def run(config: Config, *, log: Callable[[str], None] = print) -> Result:
  """Trains `config` to its target step, resuming from `config.output` if it holds a run.

  Args:
    config: the run; validated first (ReproError on bad values).
    log: receives one line per event (data preparation, resume, checkpoint,
      warnings).

  Returns:
    The Result of the final state, bitwise identical whatever interruptions
    the run went through. SIGTERM or SIGINT during the run stop it at the next
    chunk boundary with a checkpoint (Result.stopped_by says which).
  """
  config.validate()
  output = _check_output(config)
  dataset = data_lib.load(config.dataset, config.data_dir, config.tfds_dir, log=log)
  num_train = len(dataset.train_labels)
  spe = shuffle.steps_per_epoch(num_train, config.batch_size)
  if spe == 0:
    raise ReproError(f"--batch_size={config.batch_size} is larger than the {num_train} "
                     f"training examples of {dataset.name}: pass a smaller --batch_size")
  total = config.epochs * spe
  target = min(total, config.max_steps) if config.max_steps else total
  identity = _identity(config, dataset)

  output.mkdir(parents=True, exist_ok=True)
  run_lock = lock_lib.RunLock(output)
  try:
    if run_lock.stale_owner:
      log(f"took over the lock of a run that died ({run_lock.stale_owner})")
    with StopRequests() as stop:
      return _train(config, output, dataset, identity, spe, target, stop, log)
  finally:
    run_lock.release()


def _train(config: Config, output: Path, dataset: data_lib.Dataset, identity: dict, spe: int,
           target: int, stop: StopRequests, log) -> Result:
  num_train = len(dataset.train_labels)
  keys = rng.streams(config.seed)
  create = lambda: model_lib.create(keys["params"], config.learning_rate)
  objects = create()
  graphdef, state = nnx.split(objects)

  _, abstract_state = nnx.split(nnx.eval_shape(create))  # the restore template
  env = environment.describe()

  store = checkpoint.Store(output, config.max_to_keep)
  try:
    step, resumed_from, manifest, saved_step = 0, None, None, None
    found = _restore_latest(store, output, nnx.to_pure_dict(abstract_state), identity, env,
                            config.strict, log)
    if found is not None:
      restored, saved_step = found
      nnx.replace_by_pure_dict(abstract_state, restored.state)
      nnx.update(objects, abstract_state)
      state = nnx.state(objects)
      step = resumed_from = int(restored.cursor["step"])
      manifest = restored.manifest
      if step >= target:
        log(f"run in {output} is already complete at step {step} (target {target}); "
            f"nothing to do: raise --epochs to train further")
        m = manifest.get("metrics", {})
        return Result(step=step, loss=m.get("loss", float("nan")),
                      test_accuracy=m.get("test_accuracy", float("nan")),
                      test_loss=m.get("test_loss", float("nan")), output=str(output),
                      checkpoint=str(store.step_path(saved_step)),
                      digest=manifest.get("state_digest", ""),
                      resumed_from=resumed_from, already_complete=True)
      epoch, within = divmod(step, spe)
      log(f"resuming {output} from step {step} (epoch {epoch}, step {within} of {spe})")
    (output / "config.json").write_text(config.to_json() + "\n")

    images = jax.device_put(dataset.train_images)
    labels = jax.device_put(dataset.train_labels)
    train_chunk = train.make_train_chunk(graphdef, chunk_steps=config.chunk_steps,
                                         num_examples=num_train, batch_size=config.batch_size)
    evaluate = train.make_evaluate(graphdef)
    log_file = metrics.MetricsLog(output / metrics.FILENAME, step)
    trace_file = metrics.MetricsLog(output / metrics.TRACE_FILENAME, step)
    if step == 0:  # the initial parameters: where seeds 0 and 1 already differ
      trace_file.append([{"step": 0, "params": _hex(train.fingerprint(state["model"]))}])
    loss = float("nan")

    def save(step: int, metrics_now: dict) -> dict:
      pure = nnx.to_pure_dict(state)
      leaf_digests = digest.leaf_digests(pure)
      manifest = {
          "format": MANIFEST_FORMAT,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
          "config": config.to_dict(),
          "identity": identity,
          "data": {"dataset": dataset.name, "source": dataset.source,
                   "num_train": num_train, "num_test": len(dataset.test_labels),
                   "fingerprint": dataset.fingerprint},
          "environment": env,
          "metrics": metrics_now,
          "leaf_digests": leaf_digests,
          "state_digest": digest.tree_digest(pure),
      }
      log_file.sync()
      trace_file.sync()
      store.save(step, pure, _cursor(step, spe, num_train, config.batch_size), manifest)
      _fault("kill_in_save", step)
      return manifest

    bar = tqdm(total=target, initial=step, unit="step", disable=not config.progress,
               desc=f"seed {config.seed}" + (f" (resumed at {step})" if resumed_from else ""),
               file=sys.stderr, dynamic_ncols=True)
    try:
      while step < target and not stop.signal_name:
        next_checkpoint = (step // config.checkpoint_every + 1) * config.checkpoint_every
        stop_at = min(step + config.chunk_steps, target, next_checkpoint)
        state, trace = train_chunk(state, images, labels, keys["shuffle"],
                                   np.int32(step), np.int32(stop_at - step))
        trace = {k: np.asarray(v)[:stop_at - step] for k, v in trace.items()}  # one host sync
        losses = [float(x) for x in trace["loss"]]
        log_file.append({"step": step + 1 + i, "loss": x} for i, x in enumerate(losses))
        trace_file.append({"step": step + 1 + i, "loss": losses[i], "batch": _hex(trace["batch"][i]),
                           "params": _hex(trace["params"][i])} for i in range(len(losses)))
        loss = losses[-1]
        bar.update(stop_at - step)
        bar.set_postfix(loss=f"{loss:.4f}", epoch=stop_at // spe)
        step = stop_at
        _fault("kill_after_chunk", step)
        if step == target:
          accuracy, test_loss = evaluate(state, dataset.test_images, dataset.test_labels)
          manifest = save(step, {"loss": loss, "test_accuracy": float(accuracy),
                                 "test_loss": float(test_loss)})
          saved_step = step
        elif step % config.checkpoint_every == 0 or stop.signal_name:
          manifest = save(step, {"loss": loss})
          saved_step = step
    finally:
      bar.close()
      log_file.close()
      trace_file.close()
    store.wait()
  finally:
    store.close()
  if manifest is None:  # stopped before the first step of a fresh run
    log(f"stopped by {stop.signal_name} before the first step; nothing was saved")
    return Result(step=0, loss=float("nan"), test_accuracy=float("nan"),
                  test_loss=float("nan"), output=str(output), checkpoint="", digest="",
                  resumed_from=None, already_complete=False, stopped_by=stop.signal_name)
  m = manifest["metrics"]
  checkpoint_dir = str(store.step_path(saved_step))
  if step < target:
    log(f"stopped by {stop.signal_name} at step {step}; checkpoint saved to {checkpoint_dir}; "
        f"rerun the same command to resume")
  return Result(step=step, loss=m["loss"], test_accuracy=m.get("test_accuracy", float("nan")),
                test_loss=m.get("test_loss", float("nan")), output=str(output),
                checkpoint=checkpoint_dir, digest=manifest["state_digest"],
                resumed_from=resumed_from, already_complete=False,
                stopped_by=stop.signal_name if step < target else None)
