"""--init_from: a fine-tune starts from another model's weights, with every guarantee and its
lineage (issue 20, items 3 and 4).

charlm fine-tuned from charlm (from a run, its export and a plain Orbax tree: the same bits),
twice (the same bits), interrupted and resumed, host-fed (with micro-shards on 1, 2 and 4
devices: tests/test_tasks.py's charlm micro-shard runs are fine-tunes); the
ResNet on a new head (the head fresh, the rest, BatchNorm statistics too, from the source); a
changed source refused on resume and reported by bin/verify --lineage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import repro
import tiny_tasks
from conftest import quiet
from repro import Config, ReproError
from repro.checkpoints import digest
from repro.proof import lineage
from repro.train.warmstart import fill
from test_tasks import ENV, TESTS, assert_same_run

VERIFY = TESTS.parent / "bin" / "verify"


@pytest.fixture(scope="module")
def setup(idx_dir, tfds_dir, tmp_path_factory):
  """(make(name, run, **overrides) -> Config, the charlm source run's directory)."""
  root = tmp_path_factory.mktemp("warm")
  text = tiny_tasks.write_text(root / "corpus.txt")

  def make(name: str, run: str, options: dict | None = None, **overrides) -> Config:
    spec, task_options = tiny_tasks.task(name, idx_dir, tfds_dir, text)
    values = dict(seed=0, epochs=1, batch_size=16, output=str(root / run), checkpoint_every=4,
                  chunk_steps=4, progress=False, task=spec,
                  task_options={**task_options, **(options or {})})
    values.update(overrides)
    return Config(**values)

  source = Path(quiet(make("charlm", "source")).output)
  return make, source


def fine_tune(make, run: str, source, **overrides) -> Config:
  return make("charlm", run, seed=1, init_from=str(source), **overrides)


def manifest(run: Path) -> dict:
  return repro.load(run).manifest


def test_two_fine_tunes_are_equal_and_interrupted_resumed_or_host_fed_equal_straight(setup):
  make, source = setup
  messages = []
  straight = quiet(fine_tune(make, "ft", source), messages)
  assert any(m.startswith(f"warm start from {source}/10 (step 10): 22 of 22 weights loaded")
             for m in messages), messages
  again = quiet(fine_tune(make, "ft-again", source))
  assert again.digest == straight.digest
  assert_same_run(straight.output, again.output)
  cold = quiet(make("charlm", "cold", seed=1))
  assert cold.digest != straight.digest  # the warm start did start from the source
  interrupted = fine_tune(make, "ft-interrupted", source)
  assert quiet(interrupted.replace(max_steps=3)).step == 3
  assert quiet(interrupted).resumed_from == 3
  assert_same_run(straight.output, interrupted.output)
  host = quiet(fine_tune(make, "ft-host", source, data_path="host"))
  assert_same_run(straight.output, host.output)


def test_the_lineage_names_the_source_its_step_and_digest(setup):
  make, source = setup
  run = Path(quiet(fine_tune(make, "ft-lineage", f"{source}:8")).output)
  found = manifest(run)
  source_weights = repro.load(source, step=8)
  entry, = found["lineage"]
  assert entry["path"] == str(source / "8") and entry["step"] == 8 and entry["kind"] == "run"
  assert entry["state_digest"] == source_weights.manifest["state_digest"]
  assert entry["task"] == "repro.tasks.charlm:CharLM" and entry["config_digest"]
  assert found["init_from"]["fresh"] == [] and len(found["init_from"]["loaded"]) == 22
  assert found["identity"]["init_from"]["weights_digest"] == entry["weights_digest"]
  assert json.loads((run / "config.json").read_text())["init_from"] == f"{source}:8"
  # a fine-tune of the fine-tune knows both
  grand = Path(quiet(make("charlm", "ft-of-ft", seed=2, init_from=str(run))).output)
  assert [e["path"] for e in manifest(grand)["lineage"]] == [str(run / "10"), str(source / "8")]
  assert [row.status for row in lineage.check(grand).rows] == ["intact", "intact"]


def test_a_run_its_export_and_a_plain_orbax_tree_give_the_same_fine_tune(setup, tmp_path):
  make, source = setup
  from repro.model.exports import export
  exported = export(source, tmp_path / "exported")
  weights = nnx.to_pure_dict(nnx.state(repro.load(source).model, nnx.Not(nnx.RngState)))
  checkpointer = ocp.StandardCheckpointer()  # as a user without repro writes it
  checkpointer.save(tmp_path / "plain", jax.tree.map(np.asarray, weights))
  checkpointer.wait_until_finished()
  digests = {quiet(fine_tune(make, f"from-{kind}", where)).digest
             for kind, where in (("run", source), ("export", exported),
                                 ("plain", tmp_path / "plain"))}
  assert len(digests) == 1
  kinds = [manifest(Path(make("charlm", f"from-{k}").output))["lineage"][0]["kind"]
           for k in ("export", "plain")]
  assert kinds == ["export", "orbax"]
  assert [e["kind"] for e in manifest(Path(make("charlm", "from-export").output))["lineage"]] \
      == ["export", "run"]


def test_a_resnet_on_a_new_head_takes_all_but_the_head_batchnorm_statistics_too(setup):
  make, _ = setup
  source = Path(quiet(make("resnet", "resnet-source")).output)
  config = make("resnet", "resnet-head", init_from=str(source), seed=3,
                task="tiny_tasks:ResNetHead", )
  config = config.replace(task_options={**config.task_options, "classes": 2})
  tuned = quiet(config)
  record = manifest(Path(tuned.output))["init_from"]
  assert record["fresh"] == ["head/bias", "head/kernel"]
  assert "stem_norm/mean" in record["loaded"] and "block1/norm1/var" in record["loaded"]
  assert record["unused"] == ["head/bias", "head/kernel"]  # the source's 10-class head
  assert quiet(config.replace(output=config.output + "-again")).digest == tuned.digest


def test_a_changed_source_is_refused_on_resume_and_reported_by_the_lineage(setup, tmp_path):
  make, source = setup
  copy = tmp_path / "source"
  shutil.copytree(source, copy)
  config = fine_tune(make, "ft-changed", copy)
  quiet(config.replace(max_steps=3))
  shutil.rmtree(copy)
  other = Path(quiet(make("charlm", "other-seed", seed=5)).output)
  shutil.copytree(other, copy)  # another seed's weights at the same path and step
  with pytest.raises(ReproError,
                     match=r"cannot resume .*\n  init_from.weights_digest: checkpoint '"):
    quiet(config)
  run = Path(config.output)
  checked = subprocess.run([sys.executable, str(VERIFY), "--lineage", str(run)], env=ENV,
                           capture_output=True, text=True, timeout=120)
  assert checked.returncode == 1, checked.stderr
  assert f"1. run {copy}/10 (step 10, task repro.tasks.charlm:CharLM" in checked.stdout
  assert "changed (its weights digest is now" in checked.stdout
  from repro.proof import audits
  from repro.checkpoints import stored
  problems, _ = audits._checks(run, stored.finalized(run))  # what bin/audit reports first
  assert problems == [f"its --init_from source {copy}/10 is changed (its weights digest is now "
                      f"{checked.stdout.split('weights digest is now ')[1][:12]}): the fine-tune "
                      f"cannot be retrained without it (bin/verify --lineage)"]
  shutil.rmtree(copy)
  missing = subprocess.run([sys.executable, str(VERIFY), "--lineage", str(run)], env=ENV,
                           capture_output=True, text=True, timeout=120)
  assert missing.returncode == 0 and ": missing (not on disk)" in missing.stdout


# A fine-tune's micro-shards on 1, 2 and 4 devices: tests/test_tasks.py's charlm micro-shard
# runs are fine-tunes of its reference run.


class Two(nnx.Module):
  def __init__(self, rngs):
    self.body = nnx.Linear(2, 3, rngs=rngs)
    self.norm = nnx.BatchNorm(3, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(3, 1, rngs=rngs)


def test_fill_maps_and_skips_leaves_as_the_task_says_and_leaves_random_streams_alone():
  source, target = Two(nnx.Rngs(0)), Two(nnx.Rngs(1))
  before = nnx.to_pure_dict(nnx.state(target))
  pure = nnx.to_pure_dict(nnx.state(source, nnx.Not(nnx.RngState)))
  pure["renamed"] = pure.pop("body")
  names = {"body/kernel": "renamed/kernel", "body/bias": "renamed/bias"}
  filled = fill(target, pure, lambda leaf: None if leaf.startswith("head/") else
                names.get(leaf, leaf))
  assert filled.fresh == ["head/bias", "head/kernel"]
  assert filled.unused == ["head/bias", "head/kernel"]
  assert "norm/mean" in filled.loaded and "renamed/kernel" not in filled.loaded
  after = nnx.to_pure_dict(nnx.state(target))
  assert np.array_equal(after["body"]["kernel"], source.body.kernel[...])
  assert np.array_equal(after["head"]["kernel"], before["head"]["kernel"])
  assert digest.tree_digest(after["drop"]) == digest.tree_digest(before["drop"])


@pytest.mark.parametrize("spec, message", [
    ("nowhere", r"nowhere is not a directory: pass a run directory"),
    ("SOURCE:99", r"has no finalized checkpoint of step 99: pass one of 4, 8, 10"),
    ("RESNET", r"--init_from=.*: no weight of the model has a leaf of its path and shape"),
    ("SELF:4", r"--init_from=.*/ft-bad/4:4 is inside this run's --output .*/ft-bad: a run cannot "
               r"start from itself"),
])
def test_a_bad_source_is_one_line(setup, spec, message, tmp_path):
  make, source = setup
  resnet = Path(make("resnet", "resnet-source").output)
  if not resnet.exists():
    quiet(make("resnet", "resnet-source"))
  spec = spec.replace("SOURCE", str(source)).replace("RESNET", str(resnet)).replace(
      "SELF", str(Path(make("charlm", "ft-bad").output) / "4"))
  with pytest.raises(ReproError, match=message):
    quiet(fine_tune(make, "ft-bad", spec.replace("nowhere", str(tmp_path / "nowhere"))))
