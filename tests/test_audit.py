"""bin/audit: a run's kept checkpoints follow from one another, bit for bit (issue 21, item 1).

An untouched run (interrupted, resumed and host-fed) audits equal; a middle checkpoint swapped
for another seed's, its checksums made consistent so that only an audit can tell, fails at the
links into and out of it, naming them; a task with unseeded NumPy randomness fails its audit
from the seed with that cause named.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_tasks
from conftest import quiet
from repro import Config, ReproError, audit
from test_tasks import ENV, TESTS

AUDIT = TESTS.parent / "bin" / "audit"


def bin_audit(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(AUDIT), *map(str, args)], env=ENV,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """charlm, 10 steps, kept checkpoints 5, 8 and 10: stopped at 5 and resumed, host-fed; and the
  same run with seed 5 (whose step 8 replaces the first run's in the swap test)."""
  root = tmp_path_factory.mktemp("audit")
  spec, options = tiny_tasks.task("charlm", None, None, tiny_tasks.write_text(root / "text"))
  config = Config(seed=0, epochs=1, batch_size=16, output=str(root / "run"), checkpoint_every=4,
                  chunk_steps=4, progress=False, task=spec, task_options=options,
                  data_path="host")
  quiet(config.replace(max_steps=5))
  quiet(config)
  quiet(config.replace(seed=5, output=str(root / "seed5")))
  return root / "run", root / "seed5"


def listing(run: Path) -> dict:
  return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")}


def test_an_untouched_run_audits_equal_from_the_seed_and_writes_its_report_beside_it(runs):
  run, _ = runs
  before = listing(run)
  done = bin_audit(run, "--from_start", "--jobs=2")
  assert done.returncode == 0, done.stdout + done.stderr
  for row in ("0 -> 5   equal", "5 -> 8   equal", "8 -> 10  equal",  # 4 rotated away
              "checksums intact and the identity the same at all 3 kept steps",
              "scope: the run's platform class and package versions"):
    assert row in done.stdout, done.stdout
  report = json.loads((run.parent / "run.audit.json").read_text())
  assert report["exit_code"] == 0 and [link["equal"] for link in report["links"]] == [True] * 3
  assert report["scope"]["run"]["platform"] == report["scope"]["audit"]["platform"]
  assert listing(run) == before  # nothing written into the run


def test_one_link_of_several_is_chosen_by_a_fixed_rule(runs, tmp_path):
  run, _ = runs
  found = audit.audit(run, links=1, out=tmp_path / "one.json", log=lambda _: None)
  assert found.rule == "1 of the 2 links, evenly spaced from the first to the last (fixed by " \
      "the run)" and [(link.start, link.end) for link in found.links] == [(5, 8)]
  assert found.exit_code == 0


def test_a_swapped_checkpoint_with_consistent_checksums_fails_at_its_links(runs, tmp_path):
  run, other = runs
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  shutil.rmtree(copy / "8" / "state")
  shutil.copytree(other / "8" / "state", copy / "8" / "state")
  manifest_file = copy / "8" / "manifest" / "metadata"
  manifest, theirs = (json.loads(p.read_text()) for p in (manifest_file,
                                                           other / "8" / "manifest" / "metadata"))
  manifest.update(leaf_digests=theirs["leaf_digests"], state_digest=theirs["state_digest"])
  manifest_file.write_text(json.dumps(manifest))
  found = audit.audit(copy, log=lambda _: None)
  assert found.problems == []  # the checksums and identities hold: only the audit can tell
  into, out_of = found.links
  assert (into.start, into.end, into.equal) == (5, 8, False)
  assert "leaves differ" in into.detail and "does not follow from step 5" in into.cause
  assert (out_of.start, out_of.end, out_of.equal) == (8, 10, False)
  assert "first at step 9 (loss)" in out_of.detail
  assert "the checkpoint of step 8 is not the state the run trained on" in out_of.cause
  assert found.exit_code == 1
  text = audit.report(found)
  assert "5 -> 8   DIFFERS" in text and "8 -> 10  DIFFERS" in text


def test_a_task_with_unseeded_numpy_randomness_fails_its_audit_from_the_seed(idx_dir, tfds_dir,
                                                                             tmp_path):
  config = Config(epochs=1, batch_size=64, output=str(tmp_path / "numpy"), checkpoint_every=2,
                  chunk_steps=2, progress=False, task="check_tasks:NumpyInit",
                  task_options={"data_dir": str(idx_dir), "tfds_dir": str(tfds_dir)})
  quiet(config)
  found = audit.audit(tmp_path / "numpy", links=1, from_start=True, log=lambda _: None)
  first = found.links[0]
  assert (first.start, first.equal) == (0, False) and "step 0 (init)" in first.detail
  assert "NumPy or time-based randomness in the task" in first.cause
  assert found.exit_code == 1


@pytest.mark.parametrize("args, message", [
    (["--links=some"], "--links=some: pass --links=all or --links=<a number>"),
    (["--out=RUN/inside.json"], "is inside the audited run: pass a path outside it"),
    (["EMPTY"], "holds no finalized checkpoint: pass a run directory"),
])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, args, message):
  run, _ = runs
  (tmp_path / "empty").mkdir()
  args = [a.replace("RUN", str(run)).replace("EMPTY", str(tmp_path / "empty")) for a in args]
  done = bin_audit(*(args if args[0] == str(tmp_path / "empty") else [run, *args]))
  assert done.returncode == 2 and message in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_with_one_checkpoint_says_what_to_pass(tmp_path):
  with pytest.raises(ReproError, match="only one kept checkpoint .*pass --from_start"):
    audit.choose([10], None, False)
