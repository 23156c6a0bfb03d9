"""Helpers for a user's test suite (pytest): assert_golden(path) checks a golden file.

    from repro.testing import assert_golden

    def test_my_task_keeps_its_bits():
      assert_golden("golden.json")

A regression fails the test with one line per thing that differs (the first
differing step and what differed first, the leaves, the metrics), not a
traceback of digests; differing bits on a platform class or environment the
file holds no record for skip the test, naming the scope fields that differ
(strict=True fails it instead). Equal bits pass anywhere.
"""

from __future__ import annotations

from pathlib import Path

from repro import task as task_lib
from repro.errors import ReproError
from repro.proof import golden


def assert_golden(path: str | Path, task: task_lib.Task | None = None, *, strict: bool = False,
                  task_options: dict | None = None) -> golden.Report:
  """Reruns golden file `path` (repro.golden.check) and fails the test where its bits differ.

  task, task_options: as repro.golden.check's. Returns the report when the
  bits agree.
  """
  import pytest
  try:
    report = golden.check(path, task, strict=strict, task_options=task_options,
                          log=lambda _: None)
  except ReproError as err:
    pytest.fail(f"{path}: {err}", pytrace=False)
  if report.verdict == golden.OTHER_SCOPE and not strict:
    pytest.skip(f"{path}: the bits differ on a platform class or environment the file holds no "
                f"record for ({'; '.join(report.scope_diffs)}); first: {report.first.line()}")
  if report.failed:
    pytest.fail("\n".join(report.problems()), pytrace=False)
  return report
