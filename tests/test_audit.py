"""bin/audit and bin/replay (issue 21): a run's kept checkpoints follow from one another, bit for
bit, and any step of it replays to what its trace recorded.

An untouched run (interrupted, resumed and host-fed) audits equal; a middle checkpoint swapped
for another seed's, its checksums made consistent so that only an audit can tell, fails at the
links into and out of it, naming them; a task with unseeded NumPy randomness fails its audit
from the seed with that cause named. A replayed step equals the trace (from the seed and from a
checkpoint) and its dump holds the state before and after it; a replay after the swapped
checkpoint differs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_tasks
from conftest import quiet
from repro import Config, ReproError
from repro.proof import audits
from repro.proof import processes
from test_tasks import ENV, TESTS, run_on_devices



def command(name: str, *args) -> subprocess.CompletedProcess:
  env = {k: v for k, v in ENV.items() if k != processes.PROOF_CACHE}
  if processes.PROOF_CACHE in os.environ:  # as this test sets it (shared_compilations)
    env[processes.PROOF_CACHE] = os.environ[processes.PROOF_CACHE]
  return subprocess.run([sys.executable, str(TESTS.parent / "bin" / name), *map(str, args)],
                        env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def proof_cache(tmp_path_factory) -> Path:
  """The compilation cache this module's proofs share (REPRO_PROOF_CACHE_DIR)."""
  return tmp_path_factory.mktemp("proof-cache")


@pytest.fixture(autouse=True)
def shared_compilations(proof_cache, monkeypatch):
  """The audits and replays here compile once into one cache (REPRO_PROOF_CACHE_DIR), each
  program in its first proof's fresh processes; the untouched run's audit compiles afresh,
  as every proof does by default."""
  monkeypatch.setenv(processes.PROOF_CACHE, str(proof_cache))


bin_audit = functools.partial(command, "audit")
bin_replay = functools.partial(command, "replay")


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


def test_an_untouched_run_audits_equal_from_the_seed_and_writes_its_report_beside_it(
    runs, monkeypatch):
  monkeypatch.delenv(processes.PROOF_CACHE)  # the default: compiled afresh
  run, _ = runs
  before = listing(run)
  done = bin_audit(run, "--from_start", "--jobs=2")
  assert done.returncode == 0, done.stdout + done.stderr
  assert "compiled in" not in done.stdout
  for row in ("0 -> 5   equal", "5 -> 8   equal", "8 -> 10  equal",  # 4 rotated away
              "checksums intact and the identity the same at all 3 kept steps",
              "scope: the run's platform class and package versions"):
    assert row in done.stdout, done.stdout
  report = json.loads((run.parent / "run.audit.json").read_text())
  assert report["exit_code"] == 0 and [link["equal"] for link in report["links"]] == [True] * 3
  assert report["scope"]["run"]["platform"] == report["scope"]["audit"]["platform"]
  assert report["scope"]["compilation_cache"] == "fresh"
  assert listing(run) == before  # nothing written into the run


def test_one_link_of_several_is_chosen_by_a_fixed_rule(runs, tmp_path, proof_cache):
  run, _ = runs
  found = audits.audit(run, links=1, out=tmp_path / "one.json", log=lambda _: None)
  assert found.scope["compilation_cache"] == str(proof_cache) and any(proof_cache.iterdir())
  assert f"compiled in {proof_cache} (REPRO_PROOF_CACHE_DIR)" in audits.report(found)
  assert found.rule == "1 of the 2 links, evenly spaced from the first to the last (fixed by " \
      "the run)" and [(link.start, link.end) for link in found.links] == [(5, 8)]
  assert found.exit_code == 0


def swapped(runs, root: Path) -> Path:
  """A copy of the run whose step 8 is the seed-5 run's, its checksums made consistent."""
  run, other = runs
  copy = root / "run"
  shutil.copytree(run, copy)
  shutil.rmtree(copy / "8" / "state")
  shutil.copytree(other / "8" / "state", copy / "8" / "state")
  manifest_file = copy / "8" / "manifest" / "metadata"
  manifest, theirs = (json.loads(p.read_text()) for p in (manifest_file,
                                                           other / "8" / "manifest" / "metadata"))
  manifest.update(leaf_digests=theirs["leaf_digests"], state_digest=theirs["state_digest"])
  manifest_file.write_text(json.dumps(manifest))
  return copy


def test_a_swapped_checkpoint_with_consistent_checksums_fails_at_its_links(runs, tmp_path):
  found = audits.audit(swapped(runs, tmp_path), log=lambda _: None)
  assert found.problems == []  # the checksums and identities hold: only the audit can tell
  into, out_of = found.links
  assert (into.start, into.end, into.equal) == (5, 8, False)
  assert "leaves differ" in into.detail and "does not follow from step 5" in into.cause
  assert (out_of.start, out_of.end, out_of.equal) == (8, 10, False)
  assert "first at step 9 (loss)" in out_of.detail
  assert "the checkpoint of step 8 is not the state the run trained on" in out_of.cause
  assert found.exit_code == 1
  text = audits.report(found)
  assert "5 -> 8   DIFFERS" in text and "8 -> 10  DIFFERS" in text


def test_a_task_with_unseeded_numpy_randomness_fails_its_audit_from_the_seed(tmp_path):
  config = Config(epochs=1, batch_size=64, output=str(tmp_path / "numpy"), checkpoint_every=2,
                  chunk_steps=2, progress=False, task="check_tasks:NumpyInit",
                  task_options={"examples": 256})
  quiet(config)
  found = audits.audit(tmp_path / "numpy", links=1, from_start=True, log=lambda _: None)
  first = found.links[0]
  assert (first.start, first.equal) == (0, False) and "step 0 (init)" in first.detail
  assert "NumPy or time-based randomness in the task" in first.cause
  assert found.exit_code == 1


@pytest.mark.parametrize("args, message", [
    (["--links=some"], "--links=some: pass --links=all or --links=<a number >= 1>"),
    (["--links=0"], "--links=0: pass --links=all or --links=<a number >= 1>"),
    (["RUN/8"], "is checkpoint step 8 of the run "),
    (["--out=RUN/inside.json"], "is inside the audited run: pass a path outside it"),
    (["EMPTY"], "holds no finalized checkpoint: pass a run directory"),
])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, args, message):
  run, _ = runs
  (tmp_path / "empty").mkdir()
  args = [a.replace("RUN", str(run)).replace("EMPTY", str(tmp_path / "empty")) for a in args]
  positional = args[0] == str(tmp_path / "empty") or args[0].startswith(str(run))
  done = bin_audit(*(args if positional else [run, *args]))
  assert done.returncode == 2 and message in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where, message", [
    ("RUN/cache", "is inside the audited run: name a directory outside it"),
    ("TRAINING", "is the cache training compiles into: a proof must not load the run's "
                 "executables")])
@pytest.mark.parametrize("binary", ["audit", "replay"])
def test_a_shared_proof_cache_that_would_trust_the_run_is_refused(runs, monkeypatch, binary,
                                                                  where, message):
  run, _ = runs
  cache = (os.environ["JAX_COMPILATION_CACHE_DIR"] if where == "TRAINING"
           else where.replace("RUN", str(run)))
  monkeypatch.setenv(processes.PROOF_CACHE, cache)
  done = command(binary, run, *(["--step=8"] if binary == "replay" else []))
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1, done.stderr
  assert lines[0].startswith(f"error: REPRO_PROOF_CACHE_DIR={cache} ") and message in lines[0]
  assert not (run / "cache").exists()


def test_zero_links_from_python_is_refused_not_taken_for_all():
  with pytest.raises(ReproError, match=r"--links=0: pass all or a positive number"):
    audits.choose([5, 8, 10], 0, False)


def test_a_run_with_one_checkpoint_says_what_to_pass(tmp_path):
  with pytest.raises(ReproError, match="only one kept checkpoint .*pass --from_start"):
    audits.choose([10], None, False)


def model_params(step_dir: Path) -> dict:
  import repro
  from repro.checkpoints import digest
  from flax import nnx
  return digest.named_leaves(nnx.to_pure_dict(nnx.state(repro.load(step_dir).model, nnx.Param)))


def test_a_replayed_step_equals_the_trace_and_its_dump_holds_the_state_around_it(runs, tmp_path):
  run, _ = runs
  before = listing(run)
  done = bin_replay(run, "--step=8", f"--dump={tmp_path / 'eight.npz'}")
  assert done.returncode == 0, done.stdout + done.stderr
  assert "replayed step 8: equal to the run" in done.stdout
  assert "batch: 16 examples, positions in the train split: " in done.stdout
  assert "replaying step 8 of " in done.stderr and "from checkpoint 5" in done.stderr
  dump, after = np.load(tmp_path / "eight.npz"), model_params(run / "8")
  assert sorted(after) == sorted(k[len("after/"):] for k in dump if k.startswith("after/"))
  for name, value in after.items():  # the dump's parameters after step 8 are the checkpoint's
    assert np.array_equal(dump[f"after/{name}"], value), name
    assert dump[f"grad/{name}"].shape == value.shape
  assert any(not np.array_equal(dump[f"before/{n}"], v) for n, v in after.items())
  assert len(dump["indices"]) == 16 and len(set(dump["indices"].tolist())) == 16
  assert listing(run) == before  # nothing written into the run


def test_the_first_step_replays_from_the_seed(runs):
  run, _ = runs
  import repro
  found = repro.replay(run, 1, log=lambda _: None)
  assert found.equal and found.start == 0 and len(found.indices) == 16
  assert found.grad_norm > 0 and found.update_norm > 0
  assert sorted(found.leaf_norms) == sorted(model_params(run / "5"))


def test_a_step_after_a_swapped_checkpoint_replays_different(runs, tmp_path):
  done = bin_replay(swapped(runs, tmp_path), "--step=9")
  assert done.returncode == 1, done.stdout + done.stderr
  assert "replayed step 9: DIFFERENT from the run: its loss, params differ from trace.jsonl" \
      in done.stdout, done.stdout


@pytest.mark.parametrize("args, message", [
    ([], "bin/replay needs --step=N: the step to replay"),
    (["--step=99"], "has no step 99 in its trace.jsonl: pass --step=N with 1 <= N <= 10"),
    (["--step=0"], "has no step 0 in its trace.jsonl"),
    (["--step=3", "--dump=RUN/x.npz"], "is inside the replayed run: pass a path outside it"),
    (["--step=3", "--dump=/nonexistent/x.npz"], "/nonexistent is not a directory this process "
                                                 "can write"),
    (["--step=best"], "flag --step=best: invalid literal for int()"),
])
def test_a_bad_replay_is_one_line_and_exit_2(runs, args, message):
  done = bin_replay(runs[0], *[a.replace("RUN", str(runs[0])) for a in args])
  assert done.returncode == 2 and message in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_on_two_devices_replays_and_audits_on_two(tmp_path):
  # The attention task: dropout on each device's shard, like charlm's, at half its compile time.
  spec, options = tiny_tasks.task("attention", None, None, None)
  config = Config(seed=0, epochs=1, batch_size=16, output=str(tmp_path / "two"), devices=2,
                  max_steps=6, checkpoint_every=3, chunk_steps=4, progress=False, task=spec,
                  task_options=options)
  run_on_devices([config], 2, tmp_path)
  replayed = bin_replay(tmp_path / "two", "--step=4")  # right after a checkpoint: one run
  assert replayed.returncode == 0, replayed.stdout + replayed.stderr
  assert "replayed step 4: equal to the run" in replayed.stdout
  assert "on 2 devices, in a fresh process" in replayed.stderr
  audited = bin_audit(tmp_path / "two")
  assert audited.returncode == 0 and "3 -> 6  equal" in audited.stdout, audited.stdout
