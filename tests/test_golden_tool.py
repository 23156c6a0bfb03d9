"""bin/golden and repro.golden on a user's task kept outside the package: record, check.

One record and one check (module fixtures) are shared: the tampered records are
compared with that check's bits (repro.golden.compare, no training); the runs
bin/golden makes are the issue's, three of them: a changed data file (exit 1,
the data named); a record whose platform fields were edited, with other bits
(exit 3, and --add records them); a one-line change of the model's
initialisation (step 0 named), there with --strict (exit 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import repro.testing
from repro import Config, ReproError
from repro import golden
from repro.proof import golden as golden_impl

GOLDEN = Path(__file__).resolve().parent.parent / "bin" / "golden"
STEPS = 6
FAKE_FEATURE = "a-feature-no-machine-has"
TASK = '''import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

import repro


class Net(nnx.Module):
  def __init__(self, width, rngs):
    self.hidden = nnx.Linear(2, width, rngs=rngs)
    self.out = nnx.Linear(width, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.tanh(self.hidden(x)))


@dataclasses.dataclass
class Fit(repro.Task):
  name = "fit"
  location_options = ("path",)
  path: str = "data.npz"
  width: int = 8

  def model(self, rngs):
    return Net(self.width, rngs)

  def loss(self, model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)

  def data(self):
    with np.load(self.path) as arrays:
      return repro.Splits(train={"x": arrays["x"], "y": arrays["y"]})
'''
INIT = "self.hidden = nnx.Linear(2, width, rngs=rngs)"  # the line the model change edits


def write_data(path: Path, scale: float = 1.0) -> None:
  x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(64, 2)
  np.savez(path, x=x, y=(scale * x.sum(axis=1, keepdims=True)).astype(np.float32))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
  """A user's project: mytask.py, its data (data.npz, and other.npz with other values)."""
  root = tmp_path_factory.mktemp("project")
  (root / "mytask.py").write_text(TASK)
  write_data(root / "data.npz")
  write_data(root / "other.npz", scale=2.0)
  sys.path.insert(0, str(root))
  yield root
  sys.path.remove(str(root))


@pytest.fixture(scope="module")
def recorded(workdir) -> Path:
  with contextlib.chdir(workdir):
    done = golden.record(None, Config(task="mytask:Fit", batch_size=8, progress=False),
                         steps=STEPS, out=workdir / "golden.json", log=lambda _: None)
  assert (done.task, done.steps, done.leaves) == ("fit", STEPS, 14)
  return workdir / "golden.json"


@pytest.fixture(scope="module")
def checked(workdir, recorded) -> golden.Report:
  with contextlib.chdir(workdir):
    return golden.check(recorded, log=lambda _: None)


def saved(recorded: Path) -> dict:
  return json.loads(recorded.read_text())


def on_another_platform(content: dict) -> dict:
  for record in content["records"]:
    for scope in record["scopes"]:
      scope["platform"]["cpu_features"].append(FAKE_FEATURE)
  return content


def bin_golden(workdir: Path, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(workdir))
  return subprocess.run([sys.executable, str(GOLDEN), *args], cwd=workdir, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_recorded_task_checks_equal_with_one_line_per_step_in_its_file(checked, recorded):
  assert (checked.verdict, checked.exit_code, checked.recorded_here) == (golden.EQUAL, 0, True)
  assert checked.differences == [] and checked.problems() == []
  assert "equal: every bit agrees with the record for this platform class" in (
      golden.format_report(checked))
  content = saved(recorded)
  assert content["format"] == golden.FORMAT and content["steps"] == STEPS
  assert content["config"]["task"] == "mytask:Fit" and "output" not in content["config"]
  (record,) = content["records"]
  scope = record["scopes"][0]
  assert scope["versions"]["jax"] and scope["platform"]["xla_cpu_pool"] == 2
  assert len(record["trace"]) == STEPS + 1  # the step-0 line: the initial parameters
  text = recorded.read_text()
  assert all(json.dumps(line, sort_keys=True) in text for line in record["trace"])


def _leaf(record):
  record["leaf_digests"]["model/out/bias"] = "0" * 64


def _loss(record):
  record["trace"][3]["loss"] += 1e-6


def _batch(record):
  record["trace"][2]["batch"] = "00000000"


def _params(record):
  record["trace"][4]["params"] = "00000000"


def _init(record):
  record["trace"][0]["params"] = "00000000"


def _data(record):
  record["identity"]["data_fingerprint"]["train"] = "f" * 64


def _metrics(record):
  record["metrics"]["loss"] = 1.5


def _steps(record):
  record["trace"].append(dict(record["trace"][-1], step=STEPS + 1))


@pytest.mark.parametrize("tamper, kind, step, says", [
    (_leaf, "state", STEPS, "1 of 14 leaves of the final state differ: model/out/bias"),
    (_loss, "loss", 3, "the batch's example indices agree: their content, the model or the "
                       "loss differs)"),
    (_batch, "data", 2, "step 2: the batch differs first"),
    (_params, "parameters", 4, "step 4: the parameters after it differ first"),
    (_init, "parameters", 0, "step 0 (init): the initial parameters differ"),
    (_data, "data", None, "the task's data differ before step 1: the fingerprint of the train"),
    (_metrics, "metrics", STEPS, "the final metrics differ: loss 1.5 -> "),
    (_steps, "steps", None, f"the trace covers steps 0-{STEPS}, the record 0-{STEPS + 1}"),
])
def test_a_tampered_record_names_the_first_step_and_what_differed(checked, recorded, tamper,
                                                                   kind, step, says):
  content = saved(recorded)
  tamper(content["records"][0])
  report = golden.compare(content, checked.bits, checked.scope, path="golden.json")
  assert (report.verdict, report.exit_code) == (golden.REGRESSION, 1)
  assert (report.first.kind, report.first.step) == (kind, step)
  assert says in report.first.detail
  assert report.problems()[0] == f"golden.json: {kind}: {report.first.detail}"
  assert report.leaves == (["model/out/bias"] if tamper is _leaf else [])
  text = golden.format_report(report)
  assert "REGRESSION" in text
  # Where to look: the first differing step (the init's: step 1, which starts from it).
  assert (f"bin/replay DIR --step={max(step, 1)}" if step is not None else "bin/verify") in text


def test_another_platform_passes_with_equal_bits_and_is_not_a_regression_with_others(
    checked, recorded):
  elsewhere = on_another_platform(saved(recorded))
  report = golden.compare(elsewhere, checked.bits, checked.scope)
  assert (report.verdict, report.exit_code, report.recorded_here) == (golden.EQUAL, 0, False)
  assert report.scope_diffs == [f"cpu_features -{FAKE_FEATURE}"]
  assert "the record holds here too" in golden.format_report(report)
  added, what = golden_impl.with_scope_added(elsewhere, report)
  assert what == "scope" and added["records"][0]["scopes"][-1] == checked.scope

  _loss(elsewhere["records"][0])
  report = golden.compare(elsewhere, checked.bits, checked.scope)
  assert (report.verdict, report.exit_code, report.first.kind) == (golden.OTHER_SCOPE, 3, "loss")
  assert report.problems()[0].startswith("golden.json: on another platform class or environment "
                                         f"than the record's (cpu_features -{FAKE_FEATURE}): loss")
  strict = golden.compare(elsewhere, checked.bits, checked.scope, strict=True)
  assert (strict.exit_code, strict.failed) == (1, True)
  added, what = golden_impl.with_scope_added(elsewhere, report)
  assert what == "record" and len(added["records"]) == 2
  # The file with both records: this platform class has its own, equal bits.
  assert golden.compare(added, checked.bits, checked.scope).verdict == golden.EQUAL


def test_only_the_location_options_may_be_given_to_a_check(workdir, recorded):
  with contextlib.chdir(workdir), pytest.raises(
      ReproError, match=r"--task.width: a check reruns the record's task options; only those "
                        r"that say where files are \(path\) may be given"):
    golden.check(recorded, task_options={"width": 16}, log=lambda _: None)


def test_a_changed_data_file_fails_naming_the_data(workdir, recorded):
  done = bin_golden(workdir, "check", "golden.json", "--task.path=other.npz")
  assert done.returncode == 1, done.stdout + done.stderr
  assert "REGRESSION: the bits differ from the record for this platform class" in done.stdout
  assert "data: the task's data differ before step 1: the fingerprint of the train split" in (
      done.stdout)


def test_differing_bits_on_an_edited_platform_exit_3_and_add_records_them(workdir, recorded):
  content = on_another_platform(saved(recorded))
  _loss(content["records"][0])
  elsewhere = workdir / "elsewhere.json"
  elsewhere.write_text(json.dumps(content))
  done = bin_golden(workdir, "check", "elsewhere.json", "--add")
  assert done.returncode == 3, done.stdout + done.stderr
  assert "OTHER PLATFORM" in done.stdout and f"scope: cpu_features -{FAKE_FEATURE}" in done.stdout
  assert "loss: step 3: the loss differs first" in done.stdout
  assert "added this platform class's own bits" in done.stdout
  records = json.loads(elsewhere.read_text())["records"]
  assert len(records) == 2 and records[1]["trace"] == saved(recorded)["records"][0]["trace"]


def test_a_one_line_change_of_the_models_initialisation_is_named_and_strict_fails(
    workdir, recorded, tmp_path):
  """On the record's platform it is a regression (exit 1); on an edited one, --strict fails."""
  for name in ("data.npz", "mytask.py"):
    shutil.copy(workdir / name, tmp_path / name)
  (tmp_path / "golden.json").write_text(json.dumps(on_another_platform(saved(recorded))))
  task = (tmp_path / "mytask.py").read_text()
  (tmp_path / "mytask.py").write_text(task.replace(INIT, INIT.replace(
      "rngs=rngs", "kernel_init=nnx.initializers.normal(0.5), rngs=rngs")))
  done = bin_golden(tmp_path, "check", "golden.json", "--strict")
  assert done.returncode == 1, done.stdout + done.stderr
  assert "OTHER PLATFORM" in done.stdout and "(exit 1)" in done.stdout
  assert "parameters: step 0 (init): the initial parameters differ" in done.stdout
  assert "leaves of the final state differ" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["check", "missing.json"], "cannot read missing.json (No such file or directory)"),
    (["check", "golden.json", "--seed=1"], "bin/golden check reruns the record's own config: "
                                           "--seed is not taken"),
    (["record", "--task=mytask:Fit", "--max_steps=3"], "takes --steps=N"),
    (["frobnicate"], "expected bin/golden record"),
])
def test_bad_input_is_one_line_and_exit_2(workdir, recorded, args, message):
  done = bin_golden(workdir, *args)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
  assert message in lines[0]


@pytest.mark.parametrize("content, message", [
    ("{", "is not JSON"),
    ('{"configs": {}}', "is not a golden file of format repro-golden/1 (its format: None)"),
    ('{"format": "repro-golden/1", "steps": 3}', "is a damaged golden file"),
    ('{"format": "repro-golden/1", "steps": 3, "config": {}, "records": [{"scopes": [], '
     '"steps": 3, "identity": {}, "trace": [], "leaf_digests": {}, "metrics": {}}]}',
     "is a damaged golden file"),
])
def test_a_file_that_is_not_a_golden_file_is_one_line(tmp_path, content, message):
  (tmp_path / "bad.json").write_text(content)
  with pytest.raises(ReproError, match=message.replace("(", r"\(").replace(")", r"\)")):
    golden.load(tmp_path / "bad.json")


@pytest.mark.parametrize("out, message", [("", "is a directory"),
                                          ("missing/golden.json", "is not a directory")])
def test_a_record_to_an_unusable_path_is_refused_before_training(tmp_path, out, message):
  with pytest.raises(ReproError, match=message):
    golden.record(None, Config(task="no_such_module:Task"), out=tmp_path / out,
                  log=lambda _: None)


def test_a_record_of_a_task_that_cannot_be_imported_is_one_line(recorded, tmp_path):
  content = saved(recorded)
  content["config"]["task"] = "no_such_module:Task"
  (tmp_path / "g.json").write_text(json.dumps(content))
  with pytest.raises(ReproError, match="cannot import task no_such_module:Task"):
    golden.check(tmp_path / "g.json", log=lambda _: None)


def test_assert_golden_fails_with_one_line_per_difference_and_skips_another_platform(
    checked, recorded, monkeypatch):
  content = saved(recorded)
  _loss(content["records"][0])
  _leaf(content["records"][0])
  regression = golden.compare(content, checked.bits, checked.scope)
  monkeypatch.setattr(golden_impl, "check", lambda *args, **kwargs: regression)
  with pytest.raises(pytest.fail.Exception) as failed:
    repro.testing.assert_golden(recorded)
  assert str(failed.value).splitlines() == regression.problems()
  assert [line.split(": ")[1] for line in regression.problems()] == ["loss", "state"]

  other = golden.compare(on_another_platform(content), checked.bits, checked.scope)
  monkeypatch.setattr(golden_impl, "check", lambda *args, strict=False, **kwargs:
                      golden.compare(on_another_platform(content), checked.bits, checked.scope,
                                     strict=strict))
  with pytest.raises(pytest.skip.Exception, match=f"cpu_features -{FAKE_FEATURE}"):
    repro.testing.assert_golden(recorded)
  with pytest.raises(pytest.fail.Exception, match="on another platform class"):
    repro.testing.assert_golden(recorded, strict=True)
  assert other.verdict == golden.OTHER_SCOPE

  monkeypatch.setattr(golden_impl, "check", lambda *args, **kwargs: checked)
  assert repro.testing.assert_golden(recorded) is checked
