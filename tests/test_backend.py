"""XLA:CPU's configuration is repro's: the pool from --cpu_threads, recorded, refused if it differs.

That the number of CPUs then changes no bit is tested on every example task in
tests/test_tasks.py (test_the_number_of_cpus_changes_no_bit) and by bin/check's
one_cpu and many_cpus rows (tests/test_check.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TRAIN
from repro.machine import backend

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)

TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(TESTS))
# A user's environment: none of what `import repro` set in this process.
USER_ENV = {k: v for k, v in ENV.items() if k not in ("PJRT_NPROC", "XLA_FLAGS")}
REGRESSION = ["--task=tiny_tasks:regression", "--task.hidden=8", "--batch_size=16", "--epochs=1",
              "--noprogress"]


def test_the_pool_is_the_config_s_raised_to_the_micro_shards():
  assert backend.pool_size(4) == 4 and backend.pool_size(2, 4) == 4
  assert backend.pool_size(8, 4) == 8 and backend.pool_size(1, 0) == 1


def train(*flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(TRAIN), *REGRESSION, *flags],
                        env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_cpu_threads_sets_the_pool_is_recorded_and_a_resume_with_another_is_refused(tmp_path):
  out = tmp_path / "run"
  done = train(f"--output={out}", "--cpu_threads=3", "--max_steps=4",
               env={"PJRT_NPROC": "7"})  # the environment never decides: the config does
  assert done.returncode == 0, done.stderr
  assert json.loads((out / "config.json").read_text())["cpu_threads"] == 3
  manifest = json.loads((out / "4" / "manifest" / "metadata").read_text())
  assert manifest["identity"]["cpu_threads"] == 3
  assert manifest["environment"]["platform"]["xla_cpu_pool"] == 3
  assert ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce"
          in manifest["environment"]["platform"]["xla_flags"])
  refused = train(f"--output={out}", "--cpu_threads=4")  # not the default, 2
  assert refused.returncode == 2
  lines = refused.stderr.strip().splitlines()
  assert "cpu_threads: checkpoint 3, requested 4" in refused.stderr and "Traceback" not in (
      refused.stderr), refused.stderr
  assert lines[0].startswith("error: ")


PYTHON_USER = """
import sys
sys.path.insert(0, {tests!r})
{before}
import repro, tiny_tasks
{after}
try:
  repro.run(repro.Config(batch_size=16, epochs=1, output={out!r}, progress=False, {config}),
            tiny_tasks.regression(), log=lambda _: None)
except repro.ReproError as err:
  print(err)
  sys.exit(2)
"""


@pytest.mark.parametrize("before, after, config, expected", [
    # JAX computed before `import repro`: its pool and flags were not repro's.
    ("import jax; jax.numpy.zeros(1).block_until_ready()", "", "",
     "import repro before any JAX computation"),
    # ... even with the right pool in the environment: the convolution flag was missing.
    ("import os; os.environ['PJRT_NPROC'] = '2'; import jax; "
     "jax.numpy.zeros(1).block_until_ready()", "", "",
     "PJRT_NPROC=2 and without repro XLA flags, but the run's bits need 2"),
    # The backend started (repro's default pool, 2) before a run asking for another.
    ("", "import jax; jax.numpy.zeros(1).block_until_ready()", "cpu_threads=3",
     "started with an XLA:CPU pool of PJRT_NPROC=2, but the run's bits need 3"),
    ("", "import jax; jax.numpy.zeros(1).block_until_ready()", "micro_shards=8",
     "PJRT_NPROC=2, but the run's bits need 8 (--cpu_threads=2, --micro_shards=8)"),
])
def test_a_backend_started_with_another_pool_is_one_line_not_other_bits(before, after, config,
                                                                       expected, tmp_path):
  code = PYTHON_USER.format(tests=str(TESTS), before=before, after=after,
                            out=str(tmp_path / "run"), config=config)
  done = subprocess.run([sys.executable, "-c", code], env=USER_ENV, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 2, done.stdout + done.stderr
  assert expected in done.stdout and len(done.stdout.strip().splitlines()) == 1, done.stdout
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_applies_its_pool_when_no_backend_started_yet(tmp_path):
  """repro.run in a fresh process sets the pool its config asks for (here 8 micro-shards)."""
  code = PYTHON_USER.format(tests=str(TESTS), before="", after="", out=str(tmp_path / "run"),
                            config="micro_shards=8") + (
      "import os, jax\nassert os.environ['PJRT_NPROC'] == '8', os.environ['PJRT_NPROC']\n"
      "from repro.machine import backend\nassert backend.pool() == 8\n")
  done = subprocess.run([sys.executable, "-c", code], env=USER_ENV, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr


def test_micro_shards_in_a_process_of_more_devices_than_m_are_refused(tmp_path):
  """8 forced devices make XLA:CPU's pool 8 threads, not the 4 of --micro_shards=4 elsewhere."""
  done = train(f"--output={tmp_path / 'run'}", "--micro_shards=4", "--devices=4",
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
  assert done.stderr.strip().splitlines() == [
      "error: this process has 8 CPU devices, so XLA:CPU's pool has 8 threads, not the 4 of "
      "--micro_shards=4 on every device count: run in a process of at most 4 devices, or pass "
      "--cpu_threads=8 on every device count"]
