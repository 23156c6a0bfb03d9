"""CI fails when a change alters the bits of the project's golden runs (tests/golden.py).

The files are golden files of repro.golden, checked with repro.testing.assert_golden
as a user's CI checks theirs: on every platform. Equal bits pass anywhere
(where this platform class is not the files', the record holds here too);
differing bits fail on a platform class the files hold a record for, and skip,
naming the scope fields that differ, on one they do not.
"""

from __future__ import annotations

import json

import pytest

import golden as project
from repro import golden
from repro.testing import assert_golden

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


@pytest.fixture(scope="module")
def checked(idx_dir, tfds_dir):
  """checked(name) -> the report of the golden file `name`, checked once (assert_golden)."""
  options = {"data_dir": str(idx_dir), "tfds_dir": str(tfds_dir)}
  done = {}

  def get(name: str) -> golden.Report:
    if name not in done:
      done[name] = assert_golden(project.path(name), task_options=options)
    return done[name]

  return get


def test_every_config_has_a_golden_file_of_the_one_format():
  assert sorted(p.stem for p in project.FILES.iterdir()) == sorted(project.CONFIGS)
  for name, (values, steps) in project.CONFIGS.items():
    saved = golden.load(project.path(name))
    assert saved["steps"] == steps
    assert {k: saved["config"][k] for k in values} == values
    assert saved["config"]["task_options"]["data_dir"] == project.DATA["data_dir"]
    for record in saved["records"]:
      assert record["steps"] == steps and len(record["leaf_digests"]) == 26
      assert all(s["versions"]["jax"] and s["platform"]["xla_cpu_pool"] for s in record["scopes"])


@pytest.mark.parametrize("name", sorted(project.CONFIGS))
def test_bits_match_the_golden_record(name, checked):
  report = checked(name)
  assert report.verdict == golden.EQUAL and report.steps == project.CONFIGS[name][1]


def test_a_changed_digest_is_named_as_a_regression_of_that_leaf(checked):
  name = sorted(project.CONFIGS)[0]
  report = checked(name)
  tampered = json.loads(project.path(name).read_text())
  for record in tampered["records"]:
    record["leaf_digests"]["model/conv1/bias"] = "0" * 64
  found = golden.compare(tampered, report.bits, report.scope)
  # Here a regression; on a platform class the file holds no record for, another scope.
  assert found.verdict == (golden.REGRESSION if report.recorded_here else golden.OTHER_SCOPE)
  assert found.leaves == ["model/conv1/bias"]
  assert [d.kind for d in found.differences] == ["state"]
  assert "1 of 26 leaves of the final state differ: model/conv1/bias" in found.problems()[0]
