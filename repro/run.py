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
from repro import control as control_lib
from repro import data as data_lib
from repro import digest
from repro import environment
from repro import lock as lock_lib
from repro import metrics
from repro import model as model_lib
from repro import optim
from repro import parallel
from repro import rng
from repro import shuffle
from repro import train
from repro.config import IDENTITY_DEFAULTS, Config
from repro.errors import PeerLost, ReproError
from repro.stop import StopRequests

MANIFEST_FORMAT = 1
# What a run directory may hold; anything else means --output points at
# somebody else's files, which a run must not mix itself into.
_OURS = re.compile(r"^(\d+|\d+\.orbax-checkpoint-tmp.*|corrupt-\d+(-\d+)?|config\.json|"
                   r"(metrics|trace|events)\.jsonl(\.tmp)?|tensorboard|\.repro\.lock)$")
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
    stopped_early: True if early stopping (config.patience) ended the run.
    best_step: the step of the best validation result (config.monitor), whose
      checkpoint is kept; None without validation.
    best_value: that result.
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
  stopped_early: bool = False
  best_step: int | None = None
  best_value: float | None = None


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
  return {**config.identity_fields(), "architecture": model_lib.ARCHITECTURE,
          "shuffle": shuffle.SCHEME, "rng_streams": rng.STREAMS,
          "data_fingerprint": dataset.fingerprint}


def _check_compatible(output: Path, step: int, manifest: dict, expected: dict) -> None:
  found = {**IDENTITY_DEFAULTS, **manifest.get("identity", {})}
  expected = {**IDENTITY_DEFAULTS, **expected}
  diffs = [f"  {key}: checkpoint {found.get(key)!r}, requested {value!r}"
           for key, value in expected.items() if found.get(key) != value]
  if diffs:
    raise ReproError(
        f"cannot resume {output} (step {step}): it was trained with other settings that "
        f"change the bits:\n" + "\n".join(diffs) +
        "\nrerun with the checkpoint's settings, or pass a new --output")


def _check_environment(step: int, manifest: dict, now: dict, strict: bool, log,
                       topology_invariant: bool = False) -> None:
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
  for section, keys in (("versions", environment.PACKAGES + ("python",)),
                        ("platform", platform_keys)):
    for key in keys:
      if key == "repro":
        continue
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


def _restore_latest(store: checkpoint.Store, output: Path, template: dict, identity: dict,
                    env: dict, config: Config, log):
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
          _check_environment(step, manifest, env, config.strict, log,
                             topology_invariant=bool(config.micro_shards))
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
  return f"{int(parallel.to_host(fingerprint)):08x}"


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
  mesh = parallel.make_mesh(config.devices, config.micro_shards, config.batch_size)
  primary = parallel.is_primary()
  if not primary:  # one process speaks, writes logs and holds the lock
    log = lambda _: None
  output = _check_output(config)
  if not primary:  # the primary prepares the TFDS copy alone, then the others read it
    parallel.barrier("repro-data")
  dataset = data_lib.load(config.dataset, config.data_dir, config.tfds_dir, log=log)
  if primary:
    parallel.barrier("repro-data")
  train_size = len(dataset.train_labels) - config.validation_examples
  if train_size < config.batch_size:
    what = (f"{len(dataset.train_labels)} training examples less --validation_examples="
            f"{config.validation_examples} leave {max(train_size, 0)}"
            if config.validation_examples else f"the {train_size} training examples")
    raise ReproError(f"--batch_size={config.batch_size} is larger than {what} of "
                     f"{dataset.name}: pass a smaller --batch_size"
                     + (" or --validation_examples" if config.validation_examples else ""))
  spe = shuffle.steps_per_epoch(train_size, config.batch_size)
  identity = _identity(config, dataset)

  if primary:
    output.mkdir(parents=True, exist_ok=True)
  environment.enable_compilation_cache()
  run_lock = lock_lib.RunLock(output) if primary else None
  parallel.barrier("repro-output")
  try:
    if run_lock and run_lock.stale_owner:
      log(f"took over the lock of a run that died ({run_lock.stale_owner})")
    if mesh is not None:
      log(f"data-parallel over {mesh.size} devices ({jax.process_count()} process"
          f"{'es' if jax.process_count() > 1 else ''})" + (
              f", topology-invariant with {config.micro_shards} micro-shards"
              if config.micro_shards else ""))
    with StopRequests() as stop:
      try:
        return _train(config, output, dataset, identity, train_size, spe, mesh, stop, log)
      except jax.errors.JaxRuntimeError as err:
        if jax.process_count() == 1:
          raise
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise PeerLost(
            f"a process of this {jax.process_count()}-process run failed ({first}); the steps "
            f"since the last checkpoint in {output} are lost: restart every process to "
            f"resume") from None
  finally:
    if run_lock:
      run_lock.release()


def _result(output: Path, step_dir: Path | None, manifest: dict, control, **kw) -> Result:
  m = manifest.get("metrics", {}) if manifest else {}
  nan = float("nan")
  return Result(step=kw.pop("step"), loss=m.get("loss", nan),
                test_accuracy=m.get("test_accuracy", nan), test_loss=m.get("test_loss", nan),
                output=str(output), checkpoint=str(step_dir) if step_dir else "",
                digest=manifest.get("state_digest", "") if manifest else "",
                stopped_early=control.stopped_early, best_step=control.best_step,
                best_value=control.best, **kw)


def _train(config: Config, output: Path, dataset: data_lib.Dataset, identity: dict,
           train_size: int, spe: int, mesh, stop: StopRequests, log) -> Result:
  total = config.epochs * spe
  target = min(total, config.max_steps) if config.max_steps else total
  validating = config.validation_examples > 0
  keys = rng.streams(config.seed)
  primary = parallel.is_primary()
  tx = optim.make_tx(config, total)
  create = lambda: model_lib.create(keys["params"], tx, config.dropout)
  objects = create()
  graphdef, state = nnx.split(objects)
  if mesh is not None:
    keys, state = parallel.replicate((keys, state), mesh)
  _, abstract_state = nnx.split(nnx.eval_shape(create))  # the restore template
  env = environment.describe(devices_used=mesh.size if mesh is not None else 1)
  control = control_lib.ControlState.from_json(None, config)

  store = checkpoint.Store(output, config.max_to_keep,
                           best_monitor=config.monitor if validating else None)
  events = _log_file(output / metrics.EVENTS_FILENAME, None, primary)
  abandoned = False  # the store is left to die with the process, unfinished saves and all
  try:
    step, resumed_from, manifest, saved_step = 0, None, None, None
    template = parallel.abstract(nnx.to_pure_dict(abstract_state), mesh)
    found = _restore_latest(store, output, template, identity, env, config, log)
    if found is not None:
      restored, saved_step = found
      nnx.replace_by_pure_dict(abstract_state, restored.state)
      nnx.update(objects, abstract_state)
      state = nnx.state(objects)
      step = resumed_from = int(restored.cursor["step"])
      control = control_lib.ControlState.from_json(restored.cursor.get("control"), config)
      manifest = restored.manifest
      if step >= target or control.stopped_early:
        why = "stopped early" if control.stopped_early else f"target {target}"
        log(f"run in {output} is already complete at step {step} ({why}); nothing to do"
            + ("" if control.stopped_early else ": raise --epochs to train further"))
        return _result(output, store.step_path(saved_step), manifest, control, step=step,
                       resumed_from=resumed_from, already_complete=True)
      epoch, within = divmod(step, spe)
      log(f"resuming {output} from step {step} (epoch {epoch}, step {within} of {spe})")
    if primary:
      (output / "config.json").write_text(config.to_json() + "\n")
    events.append([{"event": "resume" if resumed_from is not None else "start", "step": step,
                    "time": _now()}])

    put = lambda x: parallel.replicate(x, mesh)
    images = put(dataset.train_images[:train_size])
    labels = put(dataset.train_labels[:train_size])
    val_images = dataset.train_images[train_size:]
    val_labels = dataset.train_labels[train_size:]
    chunk_args = dict(chunk_steps=config.chunk_steps, num_examples=train_size,
                      batch_size=config.batch_size, dropout=config.dropout > 0)
    if mesh is None:
      train_chunk = train.make_train_chunk(graphdef, **chunk_args)
    else:
      train_chunk = train.make_sharded_train_chunk(graphdef, mesh, **chunk_args,
                                                   micro_shards=config.micro_shards)
    evaluate = train.make_evaluate(graphdef)
    log_file = _log_file(output / metrics.FILENAME, step, primary)
    trace_file = _log_file(output / metrics.TRACE_FILENAME, step, primary)
    board = _board(output, step) if primary else _Null()
    if step == 0:  # the initial parameters: where seeds 0 and 1 already differ
      trace_file.append([{"step": 0, "params": _hex(train.fingerprint(state["model"]))}])
    loss = float("nan")
    data_info = {"dataset": dataset.name, "source": dataset.source, "num_train": train_size,
                 "num_test": len(dataset.test_labels), "fingerprint": dataset.fingerprint,
                 "validation": {"rule": "the last validation_examples examples of the train "
                                        "split, in its stored order",
                                "examples": config.validation_examples,
                                "fingerprint": data_lib.fingerprint(val_images, val_labels)}}
    val_images, val_labels = put(val_images), put(val_labels)
    test_images, test_labels = put(dataset.test_images), put(dataset.test_labels)

    def save(step: int, metrics_now: dict) -> dict:
      pure = nnx.to_pure_dict(state)
      manifest = {
          "format": MANIFEST_FORMAT,
          "created": _now(),
          "config": config.to_dict(),
          "identity": identity,
          "data": data_info,
          "environment": env,
          "metrics": metrics_now,
          "best": {"monitor": config.monitor, "step": control.best_step, "value": control.best},
          "leaf_digests": digest.leaf_digests(pure),
          "state_digest": digest.tree_digest(pure),
      }
      cursor = {**_cursor(step, spe, train_size, config.batch_size),
                "control": control.to_json()}
      for log_ in (log_file, trace_file):
        log_.sync()
      board.flush()
      validation = {k: v for k, v in metrics_now.items() if k.startswith("val_")}
      store.save(step, pure, cursor, manifest,
                 metrics={"step": step, **validation} if validation else None)
      events.append([{"event": "checkpoint", "step": step, "time": _now()}])
      _fault("kill_in_save", step)
      return manifest

    bar = tqdm(total=target, initial=step, unit="step", disable=not (config.progress and primary),
               desc=f"seed {config.seed}" + (f" (resumed at {step})" if resumed_from else ""),
               file=sys.stderr, dynamic_ncols=True)
    try:
      # Every process must take the same branches: a stop asked of any one is
      # agreed on by all at each chunk boundary (one tiny collective).
      stopping = parallel.any_process(bool(stop.signal_name))
      while step < target and not stopping:
        boundaries = [step + config.chunk_steps, target,
                      (step // config.checkpoint_every + 1) * config.checkpoint_every]
        if validating:
          boundaries.append((step // spe + 1) * spe)
        if config.eval_every:
          boundaries.append((step // config.eval_every + 1) * config.eval_every)
        stop_at = min(boundaries)
        state, trace = train_chunk(state, images, labels, keys, np.int32(step),
                                   np.int32(stop_at - step))
        trace = {k: parallel.to_host(v)[:stop_at - step] for k, v in trace.items()}  # one sync
        losses = [float(x) for x in trace["loss"]]
        log_file.append({"step": step + 1 + i, "loss": x} for i, x in enumerate(losses))
        trace_file.append({"step": step + 1 + i, "loss": losses[i], "batch": _hex(trace["batch"][i]),
                           "params": _hex(trace["params"][i])} for i in range(len(losses)))
        for i, x in enumerate(losses):
          board.add_scalar("train/loss", x, step + 1 + i)
        loss = losses[-1]
        bar.set_postfix(loss=f"{loss:.4f}", epoch=stop_at // spe, refresh=False)
        bar.update(stop_at - step)
        step = stop_at
        _fault("kill_after_chunk", step)
        stopping = parallel.any_process(bool(stop.signal_name))
        checkpoint_now = step == target or step % config.checkpoint_every == 0 or stopping
        metrics_now = {"loss": loss}
        # Evaluations happen at points fixed by the step alone (epoch ends and
        # eval_every), never at interruptions or checkpoints, so that an
        # interrupted run observes exactly what an uninterrupted one does.
        if validating and (step % spe == 0 or
                           (config.eval_every and step % config.eval_every == 0)):
          results = _evaluate(evaluate, state, val_images, val_labels, "val_")
          before, control = control, control_lib.observe(control, config, step, results)
          if control.lr != before.lr:  # the plateau schedule decays from the next step on
            pure = nnx.to_pure_dict(state)
            _set_path(pure, optim.PLATEAU_PATH,
                      np.float32(control.lr) if mesh is None else put(np.float32(control.lr)))
            nnx.replace_by_pure_dict(state, pure)
            log(f"step {step}: no improvement of {config.monitor} in "
                f"{config.plateau_patience} evaluations; learning rate -> {control.lr:.3g}")
          lr = optim.learning_rate(config, total, step, control.lr)
          log_file.append([{"step": step, **results, "lr": lr}])
          for name, value in {**results, "lr": lr}.items():
            board.add_scalar(f"val/{name}" if name != "lr" else "train/lr", value, step)
          metrics_now.update(results)
          checkpoint_now = checkpoint_now or control_lib.improved(before, control)
          if control.stopped_early:
            log(f"early stop at step {step}: no improvement of {config.monitor} in "
                f"{config.patience} evaluations; best {control.best:.4f} at step "
                f"{control.best_step}")
            target = step
        if step == target:
          metrics_now.update(_evaluate(evaluate, state, test_images, test_labels, "test_"))
          checkpoint_now = True
        if checkpoint_now:
          manifest = save(step, metrics_now)
          saved_step = step
      if stopping:
        events.append([{"event": "stop", "signal": stop.signal_name or "another process",
                        "step": step, "time": _now()}])
    finally:
      bar.close()
      for log_ in (log_file, trace_file):
        log_.close()
      board.close()
    store.wait()
  except jax.errors.JaxRuntimeError:
    if jax.process_count() > 1:  # a peer died: the store's barriers would wait for it
      abandoned = True
    raise
  finally:
    events.close()
    if not abandoned:
      store.close()
  stopped_by = stop.signal_name or ("a stop in another process" if stopping else None)
  if manifest is None:  # stopped before the first step of a fresh run
    log(f"stopped by {stopped_by} before the first step; nothing was saved")
    return _result(output, None, {}, control, step=0, resumed_from=None,
                   already_complete=False, stopped_by=stopped_by)
  checkpoint_dir = store.step_path(saved_step)
  if step < target:
    log(f"stopped by {stopped_by} at step {step}; checkpoint saved to {checkpoint_dir}; "
        f"rerun the same command to resume")
  return _result(output, checkpoint_dir, manifest, control, step=step,
                 resumed_from=resumed_from, already_complete=False,
                 stopped_by=stopped_by if step < target else None)


class _Null:
  """Stands in for the logs and TensorBoard writer in processes other than the primary."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: None


def _log_file(path: Path, step: int | None, primary: bool):
  return metrics.MetricsLog(path, step) if primary else _Null()


def _evaluate(evaluate, state, images, labels, prefix: str) -> dict[str, float]:
  """{prefix + 'loss', prefix + 'accuracy'}, as process 0 computed them."""
  accuracy, loss = evaluate(state, images, labels)
  values = parallel.from_primary(np.array([parallel.to_host(loss), parallel.to_host(accuracy)]))
  return {f"{prefix}loss": float(values[0]), f"{prefix}accuracy": float(values[1])}


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _set_path(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


def _board(output: Path, step: int):
  """A TensorBoard writer; on resume, events past `step` from before are purged."""
  from tensorboardX import SummaryWriter
  return SummaryWriter(logdir=str(output / "tensorboard"), purge_step=step + 1 if step else None,
                       flush_secs=30)
