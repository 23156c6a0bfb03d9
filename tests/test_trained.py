"""repro.load: a trained model from a run or a step, verified, in eval mode (issue 20, item 1)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import tiny_tasks
from conftest import quiet
from repro import ReproError, load


@pytest.fixture(scope="module")
def trained_run(idx_dir, tfds_dir, tmp_path_factory):
  """A 28-step run of the reference CNN with dropout and validation (kept: 14, 20, 28)."""
  from conftest import small_config
  config = small_config(tmp_path_factory.mktemp("load"), "cnn", idx_dir, tfds_dir,
                        {"dropout": 0.3}, validation_examples=32)
  return config, quiet(config)


def listing(run: Path) -> dict:
  return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")}


def test_the_loaded_model_reproduces_the_runs_test_accuracy_exactly(trained_run, idx_dir,
                                                                    tfds_dir):
  config, result = trained_run
  before = listing(Path(result.output))
  trained = load(result.output)
  assert trained.step == result.step == 28 and trained.metrics["test_accuracy"] == (
      result.test_accuracy)
  assert Path(result.checkpoint) == trained.path and trained.config.seed == 0
  test = trained.task.data().test
  correct = 0
  for start in range(0, len(test["label"]), 100):  # the evaluation's own batches
    logits = trained.model(jnp.asarray(test["image"][start:start + 100]))  # eval mode: no dropout
    correct += int(np.sum(np.argmax(np.asarray(logits), -1) == test["label"][start:start + 100]))
  assert np.float32(correct / len(test["label"])) == np.float32(result.test_accuracy)
  assert listing(Path(result.output)) == before  # nothing written


def test_a_step_or_the_best_step_or_a_step_directory_loads(trained_run):
  _, result = trained_run
  assert load(result.output, step=20).step == 20
  best = load(result.output, step="best")
  assert best.step == result.best_step and best.metrics["val_loss"] == result.best_value
  assert load(Path(result.output) / "20").step == 20


@pytest.mark.parametrize("path, step, message", [
    ("nowhere", None, "is not a directory: pass a run directory or a checkpoint step"),
    ("run", 7, "has no finalized checkpoint of step 7: pass one of"),
    ("empty", None, "holds no finalized checkpoint"),
])
def test_a_bad_path_or_step_is_one_line(trained_run, tmp_path, path, step, message):
  _, result = trained_run
  (tmp_path / "empty").mkdir()
  where = {"nowhere": tmp_path / "nowhere", "run": result.output, "empty": tmp_path / "empty"}
  with pytest.raises(ReproError, match=message):
    load(where[path], step=step)


def test_a_task_that_does_not_fit_names_the_leaves_and_the_fix(tmp_path):
  config = __import__("repro").Config(output=str(tmp_path / "r"), batch_size=16, epochs=1,
                                      progress=False, chunk_steps=8)
  quiet(config, task=tiny_tasks.regression())  # 2 inputs; the task's default has 1
  with pytest.raises(ReproError, match=r"cannot load .* another structure:\n  model/hidden"):
    load(tmp_path / "r")
  assert load(tmp_path / "r", task=tiny_tasks.regression()).step == 16


def test_a_leaf_that_fails_its_checksum_is_refused(trained_run, tmp_path):
  import shutil
  _, result = trained_run
  copy = tmp_path / "copy"
  shutil.copytree(result.output, copy)
  step = copy / str(result.step)
  files = [p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  biggest = max(files, key=lambda p: p.stat().st_size)
  blob = bytearray(biggest.read_bytes())
  for i in range(len(blob) // 2, len(blob) // 2 + 64):
    blob[i] ^= 0xFF
  biggest.write_bytes(bytes(blob))
  with pytest.raises(ReproError, match=rf"checkpoint .*/{result.step} fails its checksums|"
                                       r"cannot restore .*damaged"):
    load(copy)
