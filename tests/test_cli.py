"""bin/train as a user runs it: in a subprocess, with good and bad flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bits import assert_bitwise_equal, restore_state
from conftest import TRAIN, data_flags as small_data_flags


def train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True,
                        timeout=timeout, env=env)


@pytest.fixture
def data_flags(idx_dir, tfds_dir):
  return small_data_flags(idx_dir, tfds_dir)


def test_binary_trains_resumes_and_matches_the_python_api(data_flags, small, tmp_path):
  out = tmp_path / "cli"
  first = train(*data_flags, f"--output={out}", "--max_steps=13")
  assert first.returncode == 0, first.stderr
  assert f"checkpoint {out / '13'}" in first.stdout
  second = train(*data_flags, f"--output={out}")
  assert second.returncode == 0, second.stderr
  assert "resuming" in second.stdout and "from step 13" in second.stdout
  assert "resumed at 13" in second.stderr  # the progress bar shows the resumed position
  last = second.stdout.strip().splitlines()[-1]
  assert last.startswith("done: step 32, loss ") and ", test accuracy " in last
  assert ", test loss " in last
  assert last.endswith(f"checkpoint {out / '32'}")

  from repro import run
  api = run(small("api"), log=lambda _: None)
  assert_bitwise_equal(restore_state(out / "32"), restore_state(api.checkpoint))

  third = train(*data_flags, f"--output={out}")
  assert third.returncode == 0 and "already complete" in third.stdout


@pytest.mark.parametrize("option", ["--help", "--helpfull"])
def test_help_documents_every_flag_and_the_task(option):
  result = train(option)
  assert result.returncode == 0
  for flag in ("seed", "epochs", "output", "checkpoint_every", "max_to_keep", "batch_size",
               "learning_rate", "max_steps", "chunk_steps", "strict", "validation_examples",
               "eval_every", "monitor", "patience", "schedule", "warmup_steps", "plateau_patience",
               "plateau_factor", "devices", "micro_shards", "config", "task"):
    assert f"--{flag}:" in result.stdout or f"--[no]{flag}:" in result.stdout, flag
  # the default task and its options are shown with --task
  assert "repro.tasks.cnn:CNN(dataset='fashion_mnist'" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--epochs=0"], "epochs must be >= 1"),
    (["--batch_size=-3"], "batch_size must be >= 1"),
    (["--checkpoint_every=0"], "checkpoint_every must be >= 1"),
    (["--max_to_keep=0"], "max_to_keep must be >= 1"),
    (["--learning_rate=-1"], "learning_rate must be a positive finite number"),
    (["--task.dataset=cifar10"], "unknown dataset 'cifar10'"),
    (["--schedule=linear"], "schedule"),
    (["--task.dropout=1.5"], "dropout must be in [0, 1)"),
    (["--task.dropout=high"], "task.dropout"),
    (["--task.no_such_option=1"], "task repro.tasks.cnn:CNN has no option no_such_option; "
                                  "its options: data_dir, dataset, dropout, tfds_dir"),
    (["--task=repro.tasks.charlm:CharLM", "--task.dropout=0.5"], "has no option dropout"),
    (["--task=no.such.module:Task"], "cannot import task no.such.module:Task"),
    (["--task=repro.tasks.cnn:Nope"], "module repro.tasks.cnn has no attribute 'Nope'"),
    (["--task=repro.tasks.cnn"], "is not of the form package.module:attr"),
    (["--patience=3", "--task.data_dir=IDX"], "--patience needs a validation set"),
    (["--epochs=three"], "epochs"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["positional"], "unexpected argument"),
    (["--task.data_dir=/nonexistent/idx"], "data directory /nonexistent/idx does not exist"),
    (["--task.dataset=mnist"], "no Debian package ships MNIST"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, idx_dir, tfds_dir):
  args = [a.replace("IDX", str(idx_dir)) for a in args]
  extra = [] if any(a.startswith(("--task.data_dir", "--task=")) or a == "--task.dataset=mnist"
                    for a in args) else ["--task.data_dir=/nonexistent"]
  result = train(*args, *extra, f"--output={tmp_path / 'out'}", f"--task.tfds_dir={tfds_dir}")
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert message in lines[0]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_output_that_is_a_file_is_refused(data_flags, tmp_path):
  target = tmp_path / "afile"
  target.write_text("precious")
  result = train(*data_flags, f"--output={target}")
  assert result.returncode == 2
  assert "is a file, not a directory" in result.stderr and "Traceback" not in result.stderr
  assert target.read_text() == "precious"


def test_batch_larger_than_the_data_set_is_refused(data_flags, tmp_path):
  result = train(*data_flags, "--batch_size=100000", f"--output={tmp_path / 'big'}")
  assert result.returncode == 2
  assert "larger than the 256 training examples" in result.stderr


def test_the_persistent_compilation_cache_changes_no_bits(data_flags, tmp_path):
  cache = tmp_path / "jax-cache"
  env_flags = [*data_flags, "--max_steps=12"]
  runs = []
  for name in ("cold", "warm"):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(TRAIN), *env_flags,
                             f"--output={tmp_path / name}"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    runs.append(tmp_path / name / "12")
    if name == "cold":
      assert any(cache.iterdir()), "the first run wrote no compiled executables"
  assert_bitwise_equal(restore_state(runs[0]), restore_state(runs[1]))
