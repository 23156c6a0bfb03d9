"""Guarantees 1-3: same seed -> same bits, any interruption -> same bits, other seed -> other bits."""

from __future__ import annotations

from pathlib import Path

import pytest

from bits import assert_bitwise_equal, differing_leaves, read_losses, restore_state
from conftest import STEPS_PER_EPOCH, quiet as run_quiet, small_config

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)

FINAL = 2 * STEPS_PER_EPOCH  # 32 steps: the end of the small 2-epoch run


@pytest.fixture(scope="module")
def reference(idx_dir, tfds_dir, tmp_path_factory):
  """One uninterrupted small run, shared by the comparisons below."""
  return run_quiet(small_config(tmp_path_factory.mktemp("ref"), "A", idx_dir, tfds_dir))


def assert_same_as_reference(reference, result):
  assert result.step == reference.step == FINAL
  assert_bitwise_equal(restore_state(reference.checkpoint), restore_state(result.checkpoint))
  assert result.digest == reference.digest
  assert read_losses(result.output) == read_losses(reference.output)
  assert result.test_accuracy == reference.test_accuracy
  assert result.loss == reference.loss


def test_two_fresh_runs_with_the_same_seed_are_bitwise_equal(reference, small):
  assert_same_as_reference(reference, run_quiet(small("again")))


def test_different_seeds_give_different_parameters(reference, small):
  other = run_quiet(small("seed1", seed=1))
  differing = differing_leaves(restore_state(reference.checkpoint), restore_state(other.checkpoint))
  assert any(name.startswith("model/") for name in differing)
  assert other.digest != reference.digest


@pytest.mark.parametrize("stops", [
    pytest.param([13], id="mid-epoch"),
    pytest.param([STEPS_PER_EPOCH], id="epoch-boundary"),
    pytest.param([3, 11], id="twice-inside-one-epoch"),
    pytest.param([1, 8, 17, 31], id="four-times-at-odd-places"),
])
def test_interrupted_and_resumed_run_is_bitwise_equal_to_uninterrupted(reference, small, stops):
  for stop in stops:
    partial = run_quiet(small("B", max_steps=stop))
    assert partial.step == stop and not partial.already_complete
  resumed = run_quiet(small("B"))
  assert resumed.resumed_from == stops[-1]
  assert_same_as_reference(reference, resumed)


def test_chunk_length_and_checkpoint_interval_do_not_change_the_bits(reference, small):
  result = run_quiet(small("C", chunk_steps=5, checkpoint_every=7))
  assert_same_as_reference(reference, result)


def test_epochs_can_be_raised_on_resume(reference, small):
  one_epoch = run_quiet(small("D", epochs=1))
  assert one_epoch.step == STEPS_PER_EPOCH
  resumed = run_quiet(small("D", epochs=2))
  assert resumed.resumed_from == STEPS_PER_EPOCH
  assert_same_as_reference(reference, resumed)


def test_rerunning_a_finished_run_changes_nothing(reference, small):
  config = small("E")
  first = run_quiet(config)
  def snapshot():  # every file but the lock, which each invocation takes
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(first.output).rglob("*")
            if p.name != ".repro.lock"}

  before = snapshot()
  again = run_quiet(config)
  assert again.already_complete and again.step == first.step
  assert again.digest == first.digest and again.test_accuracy == first.test_accuracy
  assert snapshot() == before


def test_metrics_hold_one_loss_per_step_without_gaps_or_duplicates(reference):
  import json
  lines = [json.loads(l) for l in read_losses(reference.output).decode().splitlines()]
  assert [r["step"] for r in lines] == list(range(1, FINAL + 1))
  assert all(isinstance(r["loss"], float) for r in lines)


def test_manifest_records_config_versions_fingerprint_and_metrics(reference):
  from repro.checkpoints import store as checkpoint
  store = checkpoint.Store(Path(reference.output), max_to_keep=3)
  manifest = store.read_json(FINAL, "manifest")
  cursor = store.read_json(FINAL, "cursor")
  store.close()
  assert cursor["step"] == FINAL and cursor["epoch"] == 2 and cursor["step_in_epoch"] == 0
  assert manifest["config"]["seed"] == 0 and manifest["config"]["batch_size"] == 16
  assert manifest["environment"]["versions"]["jax"]
  assert manifest["environment"]["versions"]["orbax-checkpoint"]
  assert len(manifest["data"]["splits"]["train"]["fingerprint"]) == 64
  assert manifest["identity"]["task"] == "cnn" and manifest["config"]["task"] == "repro.tasks.cnn:CNN"
  assert manifest["metrics"]["test_accuracy"] == reference.test_accuracy
  assert manifest["state_digest"] == reference.digest


def test_resume_with_another_seed_is_refused_naming_the_field(reference, small):
  from repro import ReproError
  run_quiet(small("F", max_steps=5))
  with pytest.raises(ReproError, match=r"seed: checkpoint 0, requested 1"):
    run_quiet(small("F", seed=1))
