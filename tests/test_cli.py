"""bin/train as a user runs it: in a subprocess, with good and bad flags."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Optional

import pytest

import repro
from bits import assert_bitwise_equal, restore_state
from conftest import TRAIN, data_flags as small_data_flags
from repro import Config, ReproError
from repro.cli import task_options

CHARLM = "repro.tasks.charlm:CharLM"


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
               "plateau_factor", "devices", "micro_shards", "cpu_threads", "config", "task"):
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


def error_line(result: subprocess.CompletedProcess) -> str:
  """The one line `error: ...` of a refused command line (exit 2, no traceback)."""
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


@pytest.mark.parametrize("args", [
    ["--task.context=abc", f"--task={CHARLM}"],  # options before --task are read against it
    [f"--task={CHARLM}", "--task.context=abc"],
    [f"--task={CHARLM}", "--task.context", "abc"],  # absl's two-word form
])
def test_a_bad_option_value_names_the_type_the_task_declares(args, tmp_path):
  line = error_line(train(*args, f"--output={tmp_path / 'out'}"))
  assert line == f"error: --task.context=abc: task {CHARLM} takes an integer for context"
  assert not (tmp_path / "out").exists()


def test_options_without_task_are_those_of_the_configs_task(tmp_path):
  path = tmp_path / "charlm.json"
  path.write_text(Config(task=CHARLM).to_json())
  unknown = error_line(train(f"--config={path}", "--task.dropout=0.5"))
  assert unknown == (f"error: task {CHARLM} has no option dropout; its options: context, heads, "
                     "layers, noise, text, width (--task.<option>=value)")
  bad = error_line(train(f"--config={path}", "--task.context=abc"))
  assert bad.endswith(f"task {CHARLM} takes an integer for context")


@pytest.mark.parametrize("text, message", [
    (None, "cannot read --config"),
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at "
                  "line 1)"),
    ("[1, 2]", "must hold a JSON object of config fields"),
    ('{"sed": 1}', "unknown config field(s) sed; known: "),
])
def test_a_bad_config_is_one_line_and_exit_code_2(text, message, tmp_path):
  path = tmp_path / "config.json"
  if text is not None:
    path.write_text(text)
  assert message in error_line(train(f"--config={path}", f"--output={tmp_path / 'out'}"))
  assert not (tmp_path / "out").exists()


def test_helpfull_lists_the_options_of_the_task_given():
  result = train("--helpfull", f"--task={CHARLM}")
  assert result.returncode == 0, result.stderr
  assert f"{CHARLM}(text='/usr/share/common-licenses/GPL-3'," in result.stdout
  assert "dataset=" not in result.stdout


@pytest.mark.parametrize("flag", ["--batch_size=0", "--epochs=x", "--nosuchflag"])
def test_a_bad_flag_is_refused_before_jax_is_imported(flag):
  """A mistyped command answers at once (0.16 CPU-s here, not the 1.2 of importing JAX)."""
  done = subprocess.run([sys.executable, "-X", "importtime", str(TRAIN), flag],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
              if line.startswith("import time:")]
  assert "repro.config" in imported and "jax" not in imported, imported


def test_help_for_a_task_that_cannot_be_imported_is_one_line():
  assert "cannot import task no.such.module:Task" in error_line(
      train("--help", "--task=no.such.module:Task"))


@dataclasses.dataclass
class Typed(repro.Task):
  count: int = 1
  rate: float | None = None
  shuffle: bool = True
  name: Optional[str] = "x"
  sizes: tuple[int, ...] = (1,)


@dataclasses.dataclass
class Unresolved(repro.Task):
  count: "NotDefinedAnywhere" = 3  # noqa: F821 (an annotation that does not resolve)


def test_task_options_are_read_as_the_task_declares_them():
  read = lambda *words: task_options.read_task_options(Typed(), "m:Typed", words)
  assert read("--task.count=3", "--task.rate=0.5", "--task.shuffle=false", "--task.name=y",
              "--task.sizes=[2, 3]") == dict(count=3, rate=0.5, shuffle=False, name="y",
                                             sizes=(2, 3))
  assert read("--task.rate=None", "--task.name=none") == dict(rate=None, name=None)
  assert read("--task.rate=2") == dict(rate=2.0) and type(read("--task.rate=2")["rate"]) is float
  assert read("--notask.shuffle") == dict(shuffle=False)
  assert read("--task.shuffle=0", "-task.shuffle") == dict(shuffle=True)  # the last one wins
  assert read("--task.shuffle=TRUE") == dict(shuffle=True)


def test_options_whose_annotations_do_not_resolve_take_their_defaults_types():
  assert task_options.read_task_options(Unresolved(), "m:Unresolved", ["--task.count=4"]) == dict(count=4)
  with pytest.raises(ReproError, match="takes an integer for count"):
    task_options.read_task_options(Unresolved(), "m:Unresolved", ["--task.count=x"])


@pytest.mark.parametrize("word, message", [
    ("--task.count=1.5", "--task.count=1.5: task m:Typed takes an integer for count"),
    ("--task.rate=fast", "--task.rate=fast: task m:Typed takes a number or None for rate"),
    ("--task.shuffle=yes", "takes a bool (true, false, 1 or 0) for shuffle"),
    ("--task.sizes=3", "--task.sizes=3: task m:Typed takes a JSON tuple for sizes"),
    ("--task.count", "--task.count needs a value: pass --task.count=<an integer>"),
    ("--task.colour=red", "task m:Typed has no option colour; its options: count, name, rate, "
                          "shuffle, sizes (--task.<option>=value)"),
])
def test_a_bad_task_option_names_what_the_task_takes(word, message):
  with pytest.raises(ReproError) as refused:
    task_options.read_task_options(Typed(), "m:Typed", [word])
  assert message in str(refused.value)
