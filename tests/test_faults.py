"""Never lose a run: signals, SIGKILL (also mid-write), corrupt checkpoints, locks, bad dirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bits import assert_bitwise_equal, read_losses, restore_state
from conftest import TRAIN, flags_of, quiet, small_config
from repro import ReproError
from repro.train.stop import EXIT_STOPPED

FAULTY_TRAIN = Path(__file__).resolve().parent / "faulty_train.py"


def start(config, fault: str = "") -> subprocess.Popen:
  """bin/train on `config`; with a fault, the test-only wrapper that SIGKILLs itself."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", REPRO_TEST_FAULT=fault)
  return subprocess.Popen([sys.executable, str(FAULTY_TRAIN if fault else TRAIN),
                           *flags_of(config)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
  """(exit code, stdout, stderr) of a fault run; a failure path never prints a traceback,
  not even one from a library's background thread."""
  out, err = proc.communicate(timeout=timeout)
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  return proc.returncode, out, err


def wait_for_steps(run_dir: Path, steps: int, proc, timeout: float = 120) -> None:
  """Blocks until the run's metrics.jsonl holds `steps` lines (training is under way)."""
  deadline = time.time() + timeout
  path = run_dir / "metrics.jsonl"
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    if path.exists() and len(path.read_text().splitlines()) >= steps:
      return
    time.sleep(0.05)
  raise AssertionError("the run did not start training in time")


def assert_matches(reference, result):
  assert result.step == reference.step
  assert_bitwise_equal(restore_state(reference.checkpoint), restore_state(result.checkpoint))
  assert read_losses(result.output) == read_losses(reference.output)


@pytest.fixture(scope="module")
def reference(idx_dir, tfds_dir, tmp_path_factory):
  return quiet(small_config(tmp_path_factory.mktemp("r"), "ref", idx_dir, tfds_dir))


# --- signals -----------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_chunk_boundary_with_a_checkpoint_and_resumes_bitwise(small, sig):
  long = small("long", epochs=20, checkpoint_every=1000, chunk_steps=4)  # 320 steps
  reference = quiet(small("long-ref", epochs=20, checkpoint_every=1000, chunk_steps=4))
  proc = start(long)
  wait_for_steps(Path(long.output), 8, proc)
  proc.send_signal(sig)
  code, out, err = finish(proc)
  assert code == EXIT_STOPPED, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  line = out.strip().splitlines()[-1]
  assert line.startswith(f"stopped: {sig.name} at step ") and "rerun the same command" in line
  stopped_at = int(line.split(" at step ")[1].split(";")[0])
  assert 8 <= stopped_at < 320 and (Path(long.output) / str(stopped_at)).is_dir()
  resumed = quiet(long)
  assert resumed.resumed_from == stopped_at
  assert_matches(reference, resumed)


# --- SIGKILL -------------------------------------------------------------------

def test_sigkill_at_seeded_points_and_mid_write_loses_nothing(reference, small):
  config = small("killed", chunk_steps=1)  # every step is a chunk boundary, a kill point
  points = sorted(set(np.random.default_rng(2026).choice(np.arange(1, 30), 5, replace=False)))
  assert len(points) == 5
  out_dir = Path(config.output)
  for point in points:
    code, _, err = finish(start(config, f"kill_after_chunk:{int(point)}"))
    assert code == -signal.SIGKILL, err
  # Then inside a checkpoint write: killed once the save of step 30 has started.
  code, _, err = finish(start(config, "kill_in_save:30"))
  assert "Traceback" not in err
  assert code == -signal.SIGKILL, err
  assert list(out_dir.glob("30.orbax-checkpoint-tmp*")), "the kill did not land mid-write"
  assert not (out_dir / "30").exists()
  messages = []
  resumed = quiet(config, messages)
  assert resumed.resumed_from == 20 and not any("corrupt" in m for m in messages)
  assert not list(out_dir.glob("*.orbax-checkpoint-tmp*"))
  assert_matches(reference, resumed)


def test_a_run_whose_only_checkpoint_was_half_written_says_so_and_starts_fresh(reference, small):
  config = small("half")
  code, _, _ = finish(start(config, "kill_in_save:10"))
  assert code == -signal.SIGKILL
  assert list(Path(config.output).glob("10.orbax-checkpoint-tmp*"))
  messages = []
  result = quiet(config, messages)
  assert ("discarded the half-written checkpoint of step 10 (its write was cut short); the "
          "finalized steps are kept") in messages
  assert result.resumed_from is None
  assert_matches(reference, result)
  assert_history_drops(config.output, 10, "half-written")


def assert_history_drops(output: str, step: int, why: str) -> None:
  """events.jsonl records the dropped checkpoint after its save; bin/plot marks it only once
  saved again (by the rerun) or not at all."""
  from repro import metrics
  from repro.cli import plot
  events = metrics.read(Path(output) / metrics.EVENTS_FILENAME)
  dropped = [i for i, e in enumerate(events) if e["event"] == "discarded" and e["step"] == step]
  saved = [i for i, e in enumerate(events) if e["event"] == "checkpoint" and e["step"] == step]
  assert len(dropped) == 1 and events[dropped[0]]["why"].startswith(why), events
  assert saved and saved[0] < dropped[0], events
  assert (step in plot._checkpoints(events)) == (saved[-1] > dropped[0])


def test_an_io_error_while_restoring_is_one_line_exit_74_and_renames_nothing(small,
                                                                             monkeypatch):
  import errno
  from repro.checkpoints import store as checkpoint
  from repro.errors import CheckpointReadError
  config = small("eio", max_steps=10)
  quiet(config)

  def failing(self, step, template):
    raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.step_path(step) / "state"))

  monkeypatch.setattr(checkpoint.Store, "restore", failing)
  with pytest.raises(CheckpointReadError, match=r"^cannot read checkpoint .*/eio/10/state: "
                                                r"Input/output error; nothing was changed") as err:
    quiet(config.replace(max_steps=20))
  assert err.value.exit_code == 74
  assert sorted(p.name for p in Path(config.output).iterdir() if "10" in p.name) == ["10"]


# --- corrupt checkpoints -------------------------------------------------------

def biggest_array_file(step_dir: Path) -> Path:
  """The biggest data file of the state's array store that a restore reads (state/d/; the
  per-process ocdbt.process_*/d/ hold copies of the same size that a restore does not read:
  measured, flipping one of those left the state readable with equal checksums)."""
  files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def flip_bytes(path: Path) -> None:
  blob = bytearray(path.read_bytes())
  middle = len(blob) // 2
  for i in range(middle, middle + 64):
    blob[i] ^= 0xFF
  path.write_bytes(bytes(blob))


def truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove_manifest(step_dir: Path) -> Path:
  import shutil
  shutil.rmtree(step_dir / "manifest")
  return step_dir


@pytest.mark.parametrize("damage", [
    pytest.param(lambda d: flip_bytes(biggest_array_file(d)), id="flipped-bytes"),
    pytest.param(lambda d: truncate(biggest_array_file(d)), id="truncated-array-file"),
    pytest.param(remove_manifest, id="missing-item"),
])
def test_corrupt_latest_checkpoint_is_named_set_aside_and_the_previous_one_used(
    reference, small, damage):
  config = small("corrupt")
  quiet(config.replace(max_steps=31))  # checkpoints 20, 30, 31
  damage(Path(config.output) / "31")
  messages = []
  result = quiet(config, messages)
  warnings = [m for m in messages if m.startswith("WARNING: checkpoint")]
  assert len(warnings) == 1 and f"{config.output}/31 is corrupt" in warnings[0]
  assert result.resumed_from == 30
  assert (Path(config.output) / "corrupt-31").is_dir()
  assert_matches(reference, result)
  assert_history_drops(config.output, 31, "corrupt")


def test_a_checkpoint_of_another_architecture_is_refused(small):
  import dataclasses
  from flax import nnx
  from repro.tasks import cnn

  class Narrow(cnn.DigitClassifier):
    def __init__(self, *, rngs):
      self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
      self.conv2 = nnx.Conv(32, 16, kernel_size=(3, 3), rngs=rngs)
      self.linear1 = nnx.Linear(784, 256, rngs=rngs)
      self.linear2 = nnx.Linear(256, 10, rngs=rngs)
      self.dropout = None

  @dataclasses.dataclass
  class NarrowCNN(cnn.CNN):
    architecture = "Narrow:conv32-conv16-dense256-dense10"

    def model(self, rngs):
      return Narrow(rngs=rngs)

  config = small("arch", max_steps=10)
  quiet(config, task=NarrowCNN(**config.task_options))
  with pytest.raises(ReproError, match=r"architecture: checkpoint 'Narrow:conv32-conv16"):
    quiet(config.replace(max_steps=None))
  assert (Path(config.output) / "10").is_dir()  # nothing was set aside or lost


def test_a_checkpoint_of_the_im2col_reference_cnn_is_refused_naming_the_architecture(small):
  """Checkpoints written before the reference CNN became the article's nnx.Conv model (and
  the per-step program) carry the v1 architecture: the resume is refused, nothing lost."""
  config = small("v1", max_steps=10)
  quiet(config)
  manifest = Path(config.output) / "10" / "manifest" / "metadata"
  values = json.loads(manifest.read_text())
  v1 = "DigitClassifier-v1:conv32-avgpool-conv64-avgpool-dense256-dense10:im2col"
  values["identity"].update(architecture=v1, program="scan")
  manifest.write_text(json.dumps(values))
  code = subprocess.run([sys.executable, str(TRAIN), *flags_of(config.replace(max_steps=20))],
                        capture_output=True, text=True, timeout=300)
  assert code.returncode == 2 and "Traceback" not in code.stderr, code.stderr
  assert f"architecture: checkpoint '{v1}', requested 'DigitClassifier-v3" in code.stderr
  assert "program: checkpoint 'scan', requested 'step'" in code.stderr
  assert (Path(config.output) / "10").is_dir()


# --- compatibility -------------------------------------------------------------

def test_incompatible_resume_lists_every_differing_field_and_exits_2(small):
  config = small("incompatible", max_steps=5)
  quiet(config)
  proc = start(config.replace(seed=1, learning_rate=0.01, max_steps=None))
  code, out, err = finish(proc)
  assert code == 2 and "Traceback" not in err
  assert "seed: checkpoint 0, requested 1" in err
  assert "learning_rate: checkpoint 0.001, requested 0.01" in err
  assert sorted(p.name for p in Path(config.output).iterdir() if p.name.isdigit()) == ["5"]


def test_fewer_epochs_than_done_says_complete_and_exits_0(small):
  config = small("fewer")
  quiet(config)
  code, out, err = finish(start(config.replace(epochs=1)))
  assert code == 0, err
  assert "already complete at step 32" in out


def tamper_manifest(step_dir: Path, edit) -> None:
  path = step_dir / "manifest" / "metadata"
  manifest = json.loads(path.read_text())
  edit(manifest)
  path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("field, value", [("jax", "0.0.1"), ("lock_digest", "0" * 64)])
def test_other_package_versions_or_another_lock_warn_and_strict_refuses(reference, small, field,
                                                                          value):
  config = small("versions", max_steps=20)
  quiet(config)
  tamper_manifest(Path(config.output) / "20",
                  lambda m: m["environment"]["versions"].update({field: value}))
  with pytest.raises(ReproError, match=rf"{field} '{value}' -> .*--strict"):
    quiet(config.replace(max_steps=None, strict=True))
  messages = []
  result = quiet(config.replace(max_steps=None), messages)
  assert any(m.startswith(f"warning: checkpoint step 20 was written with {field} '{value}'")
             for m in messages)
  assert_matches(reference, result)


# --- one writer, bad directories ------------------------------------------------

def test_a_second_run_on_the_same_directory_is_refused_while_the_first_runs(small):
  config = small("busy", epochs=40, checkpoint_every=1000, chunk_steps=4)
  first = start(config)
  try:
    wait_for_steps(Path(config.output), 4, first)
    code, _, err = finish(start(config))
    assert code == 2 and "Traceback" not in err
    assert f"another run (pid {first.pid} on " in err and "is writing" in err
  finally:
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == EXIT_STOPPED


def test_a_stale_lock_of_a_dead_process_is_taken_over(reference, small):
  config = small("stale")
  Path(config.output).mkdir(parents=True)
  (Path(config.output) / ".repro.lock").write_text("pid 999999 on elsewhere\n")
  messages = []
  result = quiet(config, messages)
  assert "took over the lock of a run that died (pid 999999 on elsewhere)" in messages
  assert_matches(reference, result)


def test_an_output_directory_holding_other_files_is_refused_untouched(small):
  config = small("garbage")
  out = Path(config.output)
  out.mkdir(parents=True)
  (out / "thesis.tex").write_text("precious")
  with pytest.raises(ReproError, match=r"holds files that are not part of a repro run \(thesis.tex\)"):
    quiet(config)
  assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_an_output_below_a_file_is_refused(small, tmp_path):
  (tmp_path / "plain").write_text("x")
  with pytest.raises(ReproError, match="is a file; pass a directory path"):
    quiet(small(output=str(tmp_path / "plain" / "run")))


# --- a damaged data cache ----------------------------------------------------------

def decoded_cache(tfds_dir: Path) -> Path:
  return next(Path(tfds_dir).glob("repro_fashion_mnist/idx_*/1.0.0/decoded"))


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: flip_bytes(p), id="flipped-bytes"),
    pytest.param(lambda p: truncate(p), id="truncated"),
])
def test_a_damaged_data_cache_is_named_rebuilt_from_the_source_and_never_trained_on(
    reference, idx_dir, tmp_path, damage):
  from conftest import small_config
  tfds = tmp_path / "tfds"  # a cache of this test's own
  config = small_config(tmp_path, "run", idx_dir, tfds)
  quiet(config.replace(max_steps=1, output=str(tmp_path / "first")))  # prepares the cache
  damaged = decoded_cache(tfds) / "train-images.npy"
  damage(damaged)
  messages = []
  result = quiet(config, messages)
  warnings = [m for m in messages if m.startswith("WARNING: ")]
  assert warnings == [f"WARNING: {damaged} does not match the fingerprint recorded when it "
                      f"was prepared; rebuilding it from {idx_dir.resolve()}"]
  assert_matches(reference, result)  # trained on the source's bytes, not the damaged ones
  messages.clear()
  quiet(config.replace(output=str(tmp_path / "again")), messages)
  assert not any(m.startswith(("WARNING", "preparing")) for m in messages)  # verified, reused


def test_a_cache_from_before_fingerprints_is_rebuilt_once(idx_dir, tmp_path):
  from repro.data import datasets as data
  data.load("fashion_mnist", str(idx_dir), str(tmp_path / "tfds"), log=lambda _: None)
  (decoded_cache(tmp_path / "tfds") / "fingerprints.json").unlink()
  messages = []
  data.load("fashion_mnist", str(idx_dir), str(tmp_path / "tfds"), log=messages.append)
  assert len(messages) == 1 and "fingerprints.json is missing or unreadable; rebuilding" in (
      messages[0])
  data.load("fashion_mnist", str(idx_dir), str(tmp_path / "tfds"), log=messages.append)
  assert len(messages) == 1


# --- a full disk while a checkpoint is written ---------------------------------------

@pytest.mark.parametrize("part", ["sync", "async"])
def test_a_full_disk_during_a_save_is_one_line_keeps_the_finalized_steps_and_resumes_bitwise(
    reference, small, part):
  config = small(f"full-{part}")
  code, out, err = finish(start(config, f"enospc_{part}:20"))
  assert code == 74, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith(f"error: cannot write checkpoint step 20 to {config.output}: "
                             f"No space left on device; the half-written step is discarded")
  assert "rerun the same command to resume from step 10" in lines[0]
  out_dir = Path(config.output)
  assert sorted(p.name for p in out_dir.iterdir() if p.name.isdigit()) == ["10"]
  messages = []
  resumed = quiet(config, messages)  # space is free again
  assert resumed.resumed_from == 10 and not any("corrupt" in m for m in messages)
  assert not list(out_dir.glob("*.orbax-checkpoint-tmp*"))  # the leftover is gone
  assert_matches(reference, resumed)


# --- a diverging loss -----------------------------------------------------------------

def diverging(tmp_path, **overrides):
  from repro import Config
  values = dict(seed=0, epochs=10, batch_size=16, output=str(tmp_path / "nan"),
                checkpoint_every=10, max_to_keep=1, chunk_steps=8, progress=False,
                task="broken_tasks:DivergesAtStep")
  values.update(overrides)
  return Config(**values)


def test_a_nan_loss_stops_at_once_saves_nothing_non_finite_and_keeps_the_last_finite_checkpoint(
    tmp_path):
  config = diverging(tmp_path)
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(Path(__file__).parent))
  result = subprocess.run([sys.executable, str(TRAIN), *flags_of(config)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 3, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: the loss became nan at step 26: "
                                                 "stopped, nothing non-finite was saved"), lines
  assert f"the last finite checkpoint is {config.output}/20" in lines[0]
  assert "--allow_nonfinite" in lines[0]
  steps = sorted(int(p.name) for p in Path(config.output).iterdir() if p.name.isdigit())
  assert steps == [20]  # max_to_keep=1: the finite 20 was not pushed out by a later save
  state = restore_state(Path(config.output) / "20")
  assert all(np.all(np.isfinite(x)) for x in jax_leaves(state) if x.dtype.kind == "f")


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_allow_nonfinite_trains_on_with_one_warning_and_no_third_party_noise(tmp_path):
  config = diverging(tmp_path, allow_nonfinite=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(Path(__file__).parent))
  result = subprocess.run([sys.executable, str(TRAIN), *flags_of(config)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  warnings = [l for l in result.stdout.splitlines() if l.startswith("warning:")]
  assert warnings == ["warning: the loss became nan at step 26; training on (--allow_nonfinite)"]
  assert result.stdout.strip().splitlines()[-1].startswith("done: step 40, loss nan")
  assert result.stderr == ""  # nothing from tensorboardX ("NaN or Inf found"), absl or Orbax


def when_caught(proc: subprocess.Popen, sig: signal.Signals, timeout: float = 30) -> None:
  """Blocks until `proc` catches `sig` (its handler is installed: the binary's first line;
  before that, Python itself starts, which on a loaded machine takes a moment)."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    status = Path(f"/proc/{proc.pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))
                 .split()[1], 16)
    if caught >> (sig - 1) & 1:
      return
    time.sleep(0.005)
  raise AssertionError(f"{sig.name} was never caught: {proc.communicate()}")


@pytest.mark.parametrize("sig, delay", [(signal.SIGTERM, 0.2), (signal.SIGTERM, 1.0),
                                        (signal.SIGINT, 1.0), (signal.SIGTERM, 2.5)])
def test_a_signal_from_the_first_moment_is_one_line_and_exit_75(sig, delay, tmp_path):
  """While Python imports, the data are prepared or the step compiles (before the run's own
  handler), a signal is one line and exit 75, never a bare 143 or a KeyboardInterrupt."""
  proc = subprocess.Popen([sys.executable, str(TRAIN), "--task=repro.tasks.regression:Regression",
                           "--epochs=100000", "--noprogress", f"--output={tmp_path / 'run'}"],
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  when_caught(proc, sig)
  time.sleep(delay)
  proc.send_signal(sig)
  code, out, err = finish(proc)
  assert code == EXIT_STOPPED, (code, out, err)
  lines = [line for line in (out + err).splitlines() if line.startswith("stopped: ")]
  assert len(lines) == 1 and sig.name in lines[0], out + err
  assert len(err.strip().splitlines()) <= 1, err


def training_children(pid: int) -> list[int]:
  """The runs `pid` started (repro.proof.check_run processes, from Linux's /proc)."""
  found = []
  for task in Path(f"/proc/{pid}/task").iterdir():
    for child in (task / "children").read_text().split():
      try:
        if b"check_run" in Path(f"/proc/{child}/cmdline").read_bytes():
          found.append(int(child))
      except OSError:
        pass  # ended meanwhile
  return found


@pytest.mark.parametrize("binary, sig, moment", [
    ("eval", signal.SIGINT, 0.2), ("export", signal.SIGTERM, 1.0), ("verify", signal.SIGINT, 0.5),
    ("check", signal.SIGTERM, "training")])
def test_every_binary_stopped_by_a_signal_says_so_in_one_line_and_leaves_no_process(
    reference, small, binary, sig, moment, tmp_path):
  """A signal to bin/eval, bin/export, ... while it imports, reads or trains: one line and exit
  75, never a traceback or a bare 143; a proof's scratch runs are killed and removed with it."""
  run = reference.output
  args = {"eval": [run, "--json"], "export": [run, f"--out={tmp_path / 'export'}"],
          "verify": [run, run],
          "check": [*flags_of(small("c")), "--check_steps=4", "--check_pairs=again"]}[binary]
  scratch = tmp_path / "tmp"  # where a proof's scratch runs go
  scratch.mkdir()
  proc = subprocess.Popen([sys.executable, str(TRAIN.parent / binary), *map(str, args)],
                          env=dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(scratch)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  started = []
  if moment == "training":  # once its fresh processes train
    deadline = time.time() + 120
    while not started and time.time() < deadline and proc.poll() is None:
      time.sleep(0.1)
      started = training_children(proc.pid)
    assert started, proc.communicate()
  else:
    when_caught(proc, sig)
    time.sleep(moment)
  proc.send_signal(sig)
  code, out, err = finish(proc)
  assert code == EXIT_STOPPED and err == f"stopped: {sig.name} before bin/{binary} finished: " \
      f"rerun the same command\n", (code, out, err)
  for pid in started:
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
  assert not [p for p in scratch.iterdir() if p.name.startswith("repro-")]  # removed with them
