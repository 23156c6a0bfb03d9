"""repro.load: a trained model from a run or a step, verified, in eval mode (issue 20, item 1)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import tiny_tasks
from conftest import quiet
from repro import ReproError, load

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


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
  assert load(result.output, step="latest").step == load(result.output).step


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


# --- repro.evaluate and bin/eval (issue 20, item 2) ---

BIN = Path(__file__).resolve().parent.parent / "bin"


def binary(name: str, *args: str) -> "subprocess.CompletedProcess":
  import subprocess
  import sys
  return subprocess.run([sys.executable, str(BIN / name), *map(str, args)], capture_output=True,
                        text=True, timeout=300)


def test_evaluate_gives_the_runs_own_metrics_bit_for_bit_on_each_split(trained_run):
  from repro.model.evaluation import evaluate
  _, result = trained_run
  before = listing(Path(result.output))
  assert evaluate(result.output).metrics == result.test
  best = evaluate(result.output, step="best", split="validation")
  assert best.step == result.best_step and best.examples == 32
  assert best.metrics["val_loss"] == result.best_value
  train = evaluate(result.output, step=20, split="train")
  assert train.examples == 256 - 32 and set(train.metrics) == {"train_loss", "train_accuracy"}
  assert listing(Path(result.output)) == before  # nothing written


def test_bin_eval_on_another_test_set_matches_the_loaded_models_predictions(trained_run,
                                                                            tmp_path):
  import idx_data
  _, result = trained_run
  other = idx_data.write_dataset(tmp_path / "other", n_train=256, n_test=150)
  done = binary("eval", result.output, "--json", f"--task.data_dir={other}",
                f"--task.tfds_dir={tmp_path / 'tfds'}")
  assert done.returncode == 0, done.stderr
  found = __import__("json").loads(done.stdout)
  assert found["examples"] == 150 and found["step"] == result.step and found["split"] == "test"
  trained = load(result.output)
  import dataclasses
  test = dataclasses.replace(trained.task, data_dir=str(other),
                             tfds_dir=str(tmp_path / "tfds")).data().test
  logits = np.concatenate([np.asarray(trained.model(jnp.asarray(test["image"][i:i + 100])))
                           for i in range(0, 150, 100)])
  accuracy = np.float32(np.sum(np.argmax(logits, -1) == test["label"]) / 150)
  assert np.float32(found["metrics"]["test_accuracy"]) == accuracy
  table = binary("eval", result.output, "--step=best", "--split=validation")
  assert table.returncode == 0 and f"(step {result.best_step}), validation split, 32 " \
      "examples" in table.stdout and "val_accuracy" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--split=nope"], "flag --split=nope: value should be one of"),
    (["--step=soon"], "--step=soon: pass --step=latest, --step=best or --step=<a step number>"),
    (["--step=3"], "has no finalized checkpoint of step 3"),
    (["--task.nope=1"], "has no option nope; its options:"),
    (["--task.dropout=x"], "takes a number for dropout"),
])
def test_bin_eval_bad_input_is_one_line_and_exit_2(trained_run, args, message):
  _, result = trained_run
  done = binary("eval", result.output, *args)
  assert done.returncode == 2 and message in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout


def test_an_option_that_changes_the_model_is_refused_naming_it(tmp_path):
  from repro.model.evaluation import evaluate
  config = __import__("repro").Config(output=str(tmp_path / "r"), batch_size=16, epochs=1,
                                      progress=False, chunk_steps=8)
  quiet(config, task=tiny_tasks.regression())
  with pytest.raises(ReproError, match=r"another structure:\n  model/hidden[\s\S]*\nthe "
                                       r"option\(s\) hidden change the model: keep the runs?"):
    evaluate(tmp_path / "r", task=tiny_tasks.regression(), options={"hidden": 4})


# --- repro.export and bin/export (issue 20, item 5) ---

def test_an_export_loads_in_plain_orbax_and_in_repro_with_the_runs_metrics(trained_run,
                                                                           tmp_path):
  import json
  import orbax.checkpoint as ocp
  from flax import nnx
  from repro.model.evaluation import evaluate
  _, result = trained_run
  done = binary("export", result.output, f"--out={tmp_path / 'exp'}", "--step=20")
  assert done.returncode == 0 and f"to {tmp_path / 'exp'}" in done.stdout, done.stderr
  plain = ocp.StandardCheckpointer().restore(tmp_path / "exp" / "model")  # no repro
  source = load(result.output, step=20)
  weights = nnx.to_pure_dict(nnx.state(source.model, nnx.Not(nnx.RngState)))
  import jax
  assert jax.tree.structure(plain) == jax.tree.structure(weights)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(weights), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  meta = json.loads((tmp_path / "exp" / "export.json").read_text())
  assert meta["step"] == 20 and meta["dtype"] == "float32" and "optimizer" not in str(
      list(plain)) and meta["lineage"][0]["path"] == str(Path(result.output) / "20")
  assert evaluate(tmp_path / "exp").metrics == evaluate(result.output, step=20).metrics
  assert load(tmp_path / "exp").step == 20


def test_a_bfloat16_export_and_the_exports_refusals(trained_run, tmp_path):
  import orbax.checkpoint as ocp
  from repro.model.exports import export
  _, result = trained_run
  export(result.output, tmp_path / "bf16", dtype="bfloat16")
  plain = ocp.StandardCheckpointer().restore(tmp_path / "bf16" / "model")
  assert {str(np.asarray(leaf).dtype) for leaf in __import__("jax").tree.leaves(plain)} == {
      "bfloat16"}
  trained = load(tmp_path / "bf16")  # cast back to the model's float32
  assert str(trained.model.conv1.kernel.dtype) == "float32"
  with pytest.raises(ReproError, match="already exists: pass a new directory"):
    export(result.output, tmp_path / "bf16")
  with pytest.raises(ReproError, match="is an export, which holds one model: drop the step"):
    load(tmp_path / "bf16", step=3)
  with pytest.raises(ReproError, match="is inside the exported run .*: pass a path outside it"):
    export(Path(result.output) / "20", Path(result.output) / "exported")
  assert binary("export", result.output).returncode == 2
  assert [p.name for p in tmp_path.iterdir()] == ["bf16"]  # no partial export left
