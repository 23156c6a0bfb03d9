"""run(config) -> Result: resume or initialise, train chunk by chunk, checkpoint, evaluate."""

from __future__ import annotations

import dataclasses
import datetime
import os
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
from repro import metrics
from repro import model as model_lib
from repro import rng
from repro import shuffle
from repro import train
from repro.config import Config
from repro.errors import ReproError

MANIFEST_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Result:
  """What a run ended with.

  Attributes:
    step: global steps completed (the cursor).
    loss: training loss of the last step.
    test_accuracy: accuracy on the test split of the final state.
    test_loss: mean loss on the test split.
    output: the run directory.
    checkpoint: the directory of the final checkpoint step.
    digest: sha256 over every leaf of the final state (see repro.digest).
    resumed_from: the step this invocation resumed from, or None.
    already_complete: True if the run had already reached its target and
      nothing was trained or written.
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


def _prepare_output(config: Config) -> Path:
  output = Path(config.output or config.default_output()).expanduser().absolute()
  if output.exists() and not output.is_dir():
    raise ReproError(f"--output {output} is a file, not a directory: pass a directory path")
  try:
    output.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ReproError(f"cannot create --output {output} ({err.strerror}): "
                     f"pass a writable directory") from None
  if not os.access(output, os.W_OK | os.X_OK):
    raise ReproError(f"--output {output} is not writable: pass a writable directory")
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


def run(config: Config, *, log: Callable[[str], None] = print) -> Result:
  """Trains `config` to its target step, resuming from `config.output` if it holds a run.

  Args:
    config: the run; validated first (ReproError on bad values).
    log: receives one line per event (data preparation, resume, checkpoint).

  Returns:
    The Result of the final state, bitwise identical whatever interruptions
    the run went through.
  """
  config.validate()
  output = _prepare_output(config)
  dataset = data_lib.load(config.dataset, config.data_dir, config.tfds_dir, log=log)
  num_train = len(dataset.train_labels)
  spe = shuffle.steps_per_epoch(num_train, config.batch_size)
  if spe == 0:
    raise ReproError(f"--batch_size={config.batch_size} is larger than the {num_train} "
                     f"training examples of {dataset.name}: pass a smaller --batch_size")
  total = config.epochs * spe
  target = min(total, config.max_steps) if config.max_steps else total
  identity = _identity(config, dataset)

  keys = rng.streams(config.seed)
  objects = model_lib.create(keys["params"], config.learning_rate)
  graphdef, state = nnx.split(objects)

  store = checkpoint.Store(output, config.max_to_keep)
  try:
    step, resumed_from, manifest = 0, None, None
    latest = store.latest_step()
    if latest is not None:
      abstract = nnx.eval_shape(lambda: model_lib.create(keys["params"], config.learning_rate))
      _, abstract_state = nnx.split(abstract)
      restored = store.restore(latest, nnx.to_pure_dict(abstract_state))
      _check_compatible(output, latest, restored.manifest, identity)
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
                      checkpoint=str(store.step_path(latest)),
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
    loss = float("nan")
    bar = tqdm(total=target, initial=step, unit="step", disable=not config.progress,
               desc=f"seed {config.seed}" + (f" (resumed at {step})" if resumed_from else ""),
               file=sys.stderr, dynamic_ncols=True)
    try:
      while step < target:
        next_checkpoint = (step // config.checkpoint_every + 1) * config.checkpoint_every
        stop = min(step + config.chunk_steps, target, next_checkpoint)
        state, losses = train_chunk(state, images, labels, keys["shuffle"],
                                    np.int32(step), np.int32(stop - step))
        losses = np.asarray(losses)[:stop - step]  # the one host sync per chunk
        log_file.append({"step": step + 1 + i, "loss": float(x)} for i, x in enumerate(losses))
        loss = float(losses[-1])
        bar.update(stop - step)
        bar.set_postfix(loss=f"{loss:.4f}", epoch=stop // spe)
        step = stop
        if step == target or step % config.checkpoint_every == 0:
          metrics_now = {"loss": loss}
          if step == target:
            accuracy, test_loss = evaluate(state, dataset.test_images,
                                           dataset.test_labels)
            metrics_now.update(test_accuracy=float(accuracy), test_loss=float(test_loss))
          pure = nnx.to_pure_dict(state)
          manifest = {
              "format": MANIFEST_FORMAT,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "config": config.to_dict(),
              "identity": identity,
              "data": {"dataset": dataset.name, "source": dataset.source,
                       "num_train": num_train, "num_test": len(dataset.test_labels),
                       "fingerprint": dataset.fingerprint},
              "environment": environment.describe(),
              "metrics": metrics_now,
              "state_digest": digest.tree_digest(pure),
          }
          log_file.sync()
          store.save(step, pure, _cursor(step, spe, num_train, config.batch_size), manifest)
    finally:
      bar.close()
      log_file.close()
    store.wait()
  finally:
    store.close()
  m = manifest["metrics"]
  return Result(step=step, loss=m["loss"], test_accuracy=m["test_accuracy"],
                test_loss=m["test_loss"], output=str(output),
                checkpoint=str(store.step_path(step)), digest=manifest["state_digest"],
                resumed_from=resumed_from, already_complete=False)
