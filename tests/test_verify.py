"""bin/verify: identical runs exit 0; otherwise the first divergence and what diverged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import quiet, small_config
from repro.machine import backend
from repro.machine import environment
from repro.proof import verify

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)

VERIFY = Path(__file__).resolve().parent.parent / "bin" / "verify"


def verify_cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(VERIFY), *map(str, args)], capture_output=True,
                        text=True, timeout=120)


@pytest.fixture(scope="module")
def runs(idx_dir, tfds_dir, tmp_path_factory):
  """Four small runs: seed 0 twice, seed 1, and seed 0 with another learning rate."""
  root = tmp_path_factory.mktemp("verify")

  def make(name, **kw):
    return Path(quiet(small_config(root, name, idx_dir, tfds_dir, **kw)).output)

  return {"a": make("a"), "a2": make("a2"), "seed1": make("seed1", seed=1),
          "lr": make("lr", learning_rate=0.002)}


def test_two_runs_of_the_same_seed_are_reported_identical(runs):
  result = verify_cli(runs["a"], runs["a2"])
  assert result.returncode == 0, result.stdout + result.stderr
  first = result.stdout.splitlines()[0]
  assert first.startswith("bitwise identical (26 leaves, ") and first.endswith(" bytes)")
  assert "traces agree on all 33 common steps" in result.stdout


def test_seeds_0_and_1_diverge_at_init(runs):
  result = verify_cli(runs["a"], runs["seed1"])
  assert result.returncode == 1
  assert "first divergence: step 0 (init)" in result.stdout
  assert "config: seed: 0 vs 1" in result.stdout
  assert "model/linear2/kernel" in result.stdout  # the table of differing leaves


def test_another_learning_rate_diverges_in_the_params_of_step_1(runs):
  comparison = verify.compare(runs["a"], runs["lr"])
  assert not comparison.identical
  assert comparison.divergence == verify.Divergence(step=1, what="params", fields=("params",))
  result = verify_cli(runs["a"], runs["lr"])
  assert result.returncode == 1
  assert "first divergence: step 1: params diverged first (data and loss agree)" in result.stdout
  assert "config: learning_rate: 0.001 vs 0.002" in result.stdout


def test_leaf_table_counts_elements_and_differences(runs):
  comparison = verify.compare(runs["a"], runs["seed1"])
  by_name = {d.name: d for d in comparison.differing}
  kernel = by_name["model/conv1/kernel"]
  assert kernel.size == 3 * 3 * 1 * 32 and 0 < kernel.differing <= kernel.size
  assert kernel.max_abs > 0 and kernel.max_rel > 0


def test_checkpoint_steps_can_be_compared_directly(runs):
  result = verify_cli(runs["a"] / "20", runs["a2"] / "20")
  assert result.returncode == 0 and "traces agree on all 21 common steps" in result.stdout
  different = verify.compare(runs["a"] / "20", runs["a"] / "30")
  assert not different.identical and any("step: 20 vs 30" in c for c in different.cursor)


def test_bad_paths_are_one_line_and_exit_2(runs, tmp_path):
  for args in ([runs["a"], tmp_path / "missing"], [runs["a"], tmp_path], [runs["a"]]):
    result = verify_cli(*args)
    assert result.returncode == 2, args
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_manifest_records_what_the_bits_depend_on(runs):
  manifest = verify._read_item(runs["a"] / "32", "manifest")
  platform = manifest["environment"]["platform"]
  for key in ("backend", "device_kind", "cpu_features", "cpus_visible", "cpu_count",
              "jax_threefry_partitionable", "jax_default_prng_impl", "xla_flags", "xla_cpu_pool"):
    assert key in platform, key
  assert "--xla_gpu_deterministic_ops=true" in platform["xla_flags"]
  assert "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce" in platform["xla_flags"]
  assert platform["cpus_visible"] == len(os.sched_getaffinity(0))
  assert platform["xla_cpu_pool"] == manifest["config"]["cpu_threads"] == backend.DEFAULT_THREADS


def test_determinism_flags_respect_a_users_own_setting(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false --foo")
  environment.set_determinism_flags()
  assert os.environ["XLA_FLAGS"] == ("--xla_gpu_deterministic_ops=false --foo "
                                     "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce")
  monkeypatch.setenv("XLA_FLAGS", "--foo --xla_cpu_experimental_ynn_fusion_type=")
  environment.set_determinism_flags()
  assert os.environ["XLA_FLAGS"] == ("--foo --xla_cpu_experimental_ynn_fusion_type= "
                                     "--xla_gpu_deterministic_ops=true")
  monkeypatch.setenv("XLA_FLAGS", "--foo")
  environment.set_determinism_flags()
  assert os.environ["XLA_FLAGS"] == ("--foo --xla_gpu_deterministic_ops=true "
                                     "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce")


def test_fields_a_later_format_added_are_not_differences():
  old = {"step": 32, "epoch": 2}
  new = {"step": 32, "epoch": 2, "control": {"best": None, "stopped_early": False}}
  assert verify._dict_diff(old, new, common_only=True) == []
  assert verify._dict_diff(old, {**new, "step": 33}, common_only=True) == ["step: 32 vs 33"]
  assert verify._dict_diff(old, new) != []  # config and environment report them all


def test_a_closed_pipe_is_not_a_traceback(runs):
  """bin/verify A B | head -1: the reader stops early; no error, and the verdict stays."""
  proc = subprocess.Popen([sys.executable, str(VERIFY), str(runs["a"]), str(runs["seed1"])],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.close()  # the reader is gone before anything is written
  stderr = proc.stderr.read().decode()
  proc.wait(timeout=120)
  assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
  assert proc.returncode == 1  # different runs
