"""Data-parallel training on 4 forced CPU devices and over two processes (issue 7).

Each run is a bin/train subprocess with XLA_FLAGS=--xla_force_host_platform_
device_count=N, since a process's device count is fixed when its backend starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bits import assert_bitwise_equal, read_losses, restore_state
from conftest import STEPS_PER_EPOCH, TRAIN, data_flags
from repro.train.stop import EXIT_STOPPED
FINAL = 2 * STEPS_PER_EPOCH


def start(*args: str, host_devices: int = 4, env: dict | None = None,
          program: Path = TRAIN) -> subprocess.Popen:
  env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={host_devices}")
  return subprocess.Popen([sys.executable, str(program), "--noprogress", *args], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def train(*args: str, host_devices: int = 4, expect: int = 0) -> subprocess.CompletedProcess:
  proc = start(*args, host_devices=host_devices)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == expect, f"exit {proc.returncode}\n{out}\n{err}"
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def manifest(step_dir: Path) -> dict:
  return json.loads((step_dir / "manifest" / "metadata").read_text())


def last_step(run_dir: Path) -> int:
  return max(int(p.name) for p in run_dir.iterdir() if p.name.isdigit())


def assert_same_run(a: Path, b: Path) -> None:
  """Final states bitwise equal, and every logged loss and evaluation byte for byte."""
  final = last_step(a)
  assert last_step(b) == final
  assert_bitwise_equal(restore_state(a / str(final)), restore_state(b / str(final)))
  assert manifest(a / str(final))["state_digest"] == manifest(b / str(final))["state_digest"]
  assert read_losses(a) == read_losses(b)


@pytest.fixture(scope="module")
def flags(idx_dir, tfds_dir):
  return data_flags(idx_dir, tfds_dir)


@pytest.fixture(scope="module")
def four_devices(flags, tmp_path_factory) -> Path:
  """An uninterrupted run data-parallel over 4 devices (the default: all of them)."""
  out = tmp_path_factory.mktemp("parallel") / "four"
  result = train(*flags, f"--output={out}")
  assert "data-parallel over 4 devices (1 process)" in result.stdout
  assert manifest(out / str(FINAL))["environment"]["platform"]["devices_used"] == 4
  return out


def test_four_devices_are_bitwise_repeatable_and_survive_interruption(four_devices, flags,
                                                                      tmp_path):
  again = tmp_path / "again"
  train(*flags, f"--output={again}", "--chunk_steps=5")
  assert_same_run(four_devices, again)
  interrupted = tmp_path / "interrupted"
  train(*flags, f"--output={interrupted}", "--max_steps=13")
  resumed = train(*flags, f"--output={interrupted}")
  assert "resuming" in resumed.stdout and "warning" not in resumed.stdout
  assert_same_run(four_devices, interrupted)


def test_a_four_device_checkpoint_resumes_on_two_and_on_one_device(flags, tmp_path):
  out = tmp_path / "moved"
  train(*flags, f"--output={out}", "--max_steps=13")
  # (--strict refusing it instead is the check of test_faults.py::test_other_package_versions_...)
  on_two = train(*flags, f"--output={out}", "--devices=2", "--max_steps=21")
  assert "devices_used 4 -> 2" in on_two.stdout  # the bits may change: said, not hidden
  assert "resuming" in on_two.stdout and "from step 13" in on_two.stdout
  on_one = train(*flags, f"--output={out}", "--devices=1", host_devices=1)
  assert "from step 21" in on_one.stdout and on_one.stdout.strip().splitlines()[-1].startswith(
      f"done: step {FINAL}")
  state = restore_state(out / str(FINAL))
  assert int(state["optimizer"]["step"]) == FINAL
  back = tmp_path / "back"  # and back: a one-device checkpoint resumes on four
  train(*flags, f"--output={back}", "--max_steps=13", host_devices=1)
  train(*flags, f"--output={back}", "--devices=4")
  assert manifest(back / str(FINAL))["environment"]["platform"]["devices_used"] == 4


@pytest.fixture(scope="module")
def invariant(flags):
  """Topology-invariant flags: 4 micro-shards, with dropout and evaluations in the run."""
  return [*flags, "--micro_shards=4", "--task.dropout=0.3", "--validation_examples=32",
          "--eval_every=8", "--schedule=plateau", "--plateau_patience=1"]


@pytest.fixture(scope="module")
def invariant_one_device(invariant, tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("invariant") / "one"
  train(*invariant, f"--output={out}", host_devices=1)
  return out


@pytest.mark.parametrize("devices", [2, 4])
def test_topology_invariant_mode_gives_the_same_bits_on_1_2_and_4_devices(
    invariant, invariant_one_device, tmp_path, devices):
  out = tmp_path / f"on{devices}"
  result = train(*invariant, f"--output={out}", f"--devices={devices}")
  assert f"over {devices} devices (1 process), topology-invariant with 4" in result.stdout
  assert_same_run(invariant_one_device, out)


def test_topology_invariant_resume_on_another_device_count_is_exact_and_quiet(
    invariant, invariant_one_device, tmp_path):
  out = tmp_path / "moved"
  train(*invariant, f"--output={out}", "--max_steps=13")  # 4 devices
  resumed = train(*invariant, f"--output={out}", "--strict", host_devices=1)
  assert "from step 13" in resumed.stdout and "warning" not in resumed.stdout
  assert_same_run(invariant_one_device, out)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


GLOO = "[Gloo] Rank # is connected to # peer ranks. Expected number of connected peer ranks is : #"


def only_gloo(line: str) -> bool:
  """Whether a line holds nothing but pieces of gloo's connection message."""
  pieces = re.split(r"(?=\[Gloo\])", re.sub(r"\d+", "#", line.strip()))
  return all(piece in GLOO for piece in pieces)


def test_two_processes_stop_together_resume_together_and_restore_in_one(
    invariant, invariant_one_device, tmp_path):
  out = tmp_path / "two"
  stop_both_by_a_sigterm_to_one(invariant, out)
  address = f"--coordinator_address=localhost:{free_port()}"
  procs = [start(*invariant, f"--output={out}", "--max_steps=21", address,
                 "--num_processes=2", f"--process_id={i}", host_devices=2) for i in range(2)]
  results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
  for stdout, stderr, code in results:
    assert code == 0, f"{stdout}\n{stderr}"
  assert "over 4 devices (2 processes)" in results[0][0] and "from step 8" in results[0][0]
  # One process speaks. Gloo's own "[Gloo] Rank i is connected to n peer ranks. ..." lines
  # aside: its threads write them concurrently, so they can arrive cut and interleaved.
  assert [x for x in results[1][0].splitlines() if not only_gloo(x)] == [], results[1][0]
  saved = manifest(out / "21")["environment"]["platform"]
  assert (saved["process_count"], saved["devices_used"]) == (2, 4)
  one = train(*invariant, f"--output={out}", host_devices=1)
  assert "from step 21" in one.stdout and "warning" not in one.stdout
  assert_same_run(invariant_one_device, out)


@pytest.mark.parametrize("args, host_devices, message", [
    (["--devices=8"], 4, "--devices=8 but 4 device(s) are visible"),
    (["--devices=3"], 4, "--batch_size=16 cannot be split over 3 devices"),
    (["--micro_shards=4", "--devices=3"], 4, "--micro_shards=4 cannot be split over 3"),
    (["--micro_shards=3"], 1, "cannot be cut into --micro_shards=3"),
    (["--num_processes=2", "--process_id=2", "--coordinator_address=localhost:1"], 1,
     "--process_id must be in [0, 2)"),
    (["--num_processes=2", "--process_id=0"], 1, "coordinator_address should be defined"),
])
def test_bad_device_settings_are_one_line_and_exit_2(flags, tmp_path, args, host_devices,
                                                     message):
  out = tmp_path / "bad"
  result = train(*flags, f"--output={out}", *args, host_devices=host_devices, expect=2)
  assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
  assert message in result.stderr
  assert not out.exists()


def test_micro_shards_cannot_change_on_resume(flags, tmp_path):
  out = tmp_path / "run"
  train(*flags, f"--output={out}", "--max_steps=5", "--micro_shards=4")
  result = train(*flags, f"--output={out}", expect=2)
  assert "micro_shards: checkpoint 4, requested 0" in result.stderr
  shutil.rmtree(out)


def wait_for_steps(run_dir: Path, steps: int, procs, timeout: float = 120) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    for proc in procs:
      assert proc.poll() is None, proc.communicate()
    path = run_dir / "metrics.jsonl"
    if path.exists() and len(path.read_text().splitlines()) >= steps:
      return
    time.sleep(0.05)
  raise AssertionError("the run did not start training in time")


def stop_both_by_a_sigterm_to_one(invariant: list[str], out: Path) -> None:
  """Two processes train `out`; the non-primary gets a SIGTERM at its boundary of step 8
  (tests/faulty_train.py): the primary must learn of it, and both stop at that boundary's
  last phase with one checkpoint, exit 75, no traceback."""
  address = f"--coordinator_address=localhost:{free_port()}"
  term = {"REPRO_TEST_FAULT": "term_after_chunk:8"}
  procs = [start(*invariant, f"--output={out}", address, "--num_processes=2",
                 f"--process_id={i}", host_devices=2, env=term if i else None,
                 program=Path(__file__).parent / "faulty_train.py" if i else TRAIN)
           for i in range(2)]
  results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
  for stdout, stderr, code in results:
    assert code == EXIT_STOPPED and "Traceback" not in stderr, f"{stdout}\n{stderr}"
  line = results[0][0].strip().splitlines()[-1]
  assert line.startswith("stopped: a stop in another process at step 8;"), line
  assert last_step(out) == 8


def test_sigkill_of_one_process_ends_the_other_at_once_and_the_run_resumes(invariant, tmp_path):
  long = [*invariant, "--epochs=20", "--chunk_steps=4", "--checkpoint_every=16"]
  out = tmp_path / "two"
  address = f"--coordinator_address=localhost:{free_port()}"
  procs = [start(*long, f"--output={out}", address, "--num_processes=2", f"--process_id={i}",
                 host_devices=2) for i in range(2)]
  wait_for_steps(out, 40, procs)
  procs[1].kill()
  stdout, stderr = procs[0].communicate(timeout=60)  # not jax's 100 s heartbeat timeout
  procs[1].communicate()
  assert procs[0].returncode == EXIT_STOPPED, f"{stdout}\n{stderr}"
  errors = [x for x in stderr.splitlines() if x.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in stderr, stderr
  assert errors[0].startswith("error: a process of this 2-process run failed"), stderr
  assert "restart every process to resume" in errors[0]
  saved = last_step(out)
  assert saved >= 16  # the periodic one at 16, or a later one
  resumed = train(*long, f"--output={out}", f"--max_steps={saved + 8}", host_devices=1)
  assert f"from step {saved}" in resumed.stdout and "corrupt" not in resumed.stdout


@pytest.mark.parametrize("micro_shards, warned", [(0, True), (4, False)])
def test_another_device_or_process_layout_warns_unless_topology_invariant(micro_shards, warned):
  from repro.machine import environment
  from repro.config import Config
  from repro.train.identity import check_environment as _check_environment
  now = environment.describe(devices_used=4)
  saved = json.loads(json.dumps(now))
  saved["platform"]["process_count"] = 2
  saved["platform"]["xla_flags"] += " --xla_force_host_platform_device_count=2"  # makes devices
  messages = []
  _check_environment(7, {"environment": saved}, now, strict=False, log=messages.append,
                     topology_invariant=bool(Config(micro_shards=micro_shards).micro_shards))
  assert len(messages) == warned
  if warned:
    assert "process_count 2 -> 1" in messages[0] and "xla_flags" not in messages[0]
