"""bin/check and repro.check: pairs of short runs in fresh processes, compared bit for bit.

On the example tasks every pair is equal (exit 0); each deliberately broken task
(tests/check_tasks.py) is caught, exit 1, its cause named.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import repro
import tiny_tasks
from repro import Config
from repro.proof import checker
from repro.proof import processes
from repro.proof import verify

TESTS = Path(__file__).resolve().parent
CHECK = TESTS.parent / "bin" / "check"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(TESTS))
STEPS = 6


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
  return tiny_tasks.write_text(tmp_path_factory.mktemp("text") / "corpus.txt")


def tiny_config(name: str, idx_dir, tfds_dir, text) -> Config:
  spec, options = tiny_tasks.task(name, idx_dir, tfds_dir, text)
  return Config(task=spec, task_options=options, batch_size=16, progress=False)


def assert_all_equal(report: checker.Report, micro: bool = True) -> None:
  text = checker.format_report(report)
  assert report.exit_code == 0, text
  run = [r for r in report.rows if not r.skipped]
  assert all(r.equal for r in run if r.pair.promised), text
  assert all(r.equal for r in run), text  # the CPU rows too: repro fixes XLA:CPU's pool
  labels = " | ".join(r.pair.label for r in run)
  for expected in ("same run twice", "resumed at step 3 vs straight", "--chunk_steps=2 vs 3",
                   "second run in one process vs first", "a 16-CPU machine (NPROC=16) vs this one",
                   *(["--micro_shards=4: 1 device vs 4"] if micro else [])):
    assert expected in labels
  if len(os.sched_getaffinity(0)) > 1:
    assert "1 CPU vs all" in labels


# bin/check itself, once per program: cnn here (convolutions and dropout under the
# per-step program), the regression below (the scan, a task object holding arrays). Each
# row's guarantee on every example task (charlm's attention, the ResNet's BatchNorm
# statistics) is tests/test_tasks.py's, pair by pair; but the CPU rows here are the CNN's
# and the regression's test of another machine's CPU count (test_tasks.MACHINE_TASKS). The
# micro row runs on the regression (the CNN's micro-shards, with dropout and evaluations, on
# 1, 2 and 4 devices and 2 processes: tests/test_parallel.py).
@pytest.mark.parametrize("name", ["cnn"])
def test_every_pair_is_equal_on_the_example_tasks(name, idx_dir, tfds_dir, text, tmp_path):
  pairs = tuple(p for p in checker.PAIRS if p != "micro")
  assert_all_equal(repro.check(tiny_config(name, idx_dir, tfds_dir, text), steps=STEPS,
                               pairs=pairs, workdir=str(tmp_path / "kept"), log=lambda _: None),
                   micro=False)
  assert_same_logs(tmp_path / "kept", cpu_ways())


def cpu_ways() -> tuple[str, ...]:
  """The CPU rows' runs on this machine (the 1-CPU row needs a machine of more)."""
  return ("many_cpus",) + (("one_cpu",) if len(os.sched_getaffinity(0)) > 1 else ())


def assert_same_logs(runs: Path, ways: tuple[str, ...]) -> None:
  """metrics.jsonl and trace.jsonl of each way as the base run's, byte for byte (a row's
  equality is the final state's and its metrics')."""
  for way in ways:
    for name in ("metrics.jsonl", "trace.jsonl"):
      assert (runs / way / name).read_bytes() == (runs / "base" / name).read_bytes(), (way, name)


def test_a_task_object_holding_arrays_is_checked_from_python(tmp_path):
  report = repro.check(Config(batch_size=16, progress=False), tiny_tasks.regression(),
                       steps=STEPS, workdir=str(tmp_path / "kept"), log=lambda _: None)
  assert_all_equal(report)
  runs = tmp_path / "kept"  # kept when asked: the runs can be compared by hand
  assert verify.compare(runs / "base", runs / "again").identical
  assert_same_logs(runs, cpu_ways())


def check_cli(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(CHECK), *flags, f"--check_steps={STEPS}",
                         "--batch_size=16", "--noprogress"], env=ENV, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.parametrize("task, pairs, row, where, cause", [
    ("NumpyInit", "again", "same run twice", "step 0 (init)",
     "Python, NumPy or time-based randomness in the task: two fresh processes"),
    ("ModuleCounter", "again,in_process", "second run in one process vs first", "step 1 (loss)",
     "a counter that depends on the number of calls"),
    ("TimeCallback", "again", "same run twice", "step 1 (loss)",
     "a host callback in the model or loss (pure_callback)"),
])
def test_a_broken_task_is_caught_and_its_cause_named(task, pairs, row, where, cause):
  out = check_cli(f"--task=check_tasks:{task}", "--task.examples=256", f"--check_pairs={pairs}")
  assert out.returncode == 1, out.stdout + out.stderr
  lines = out.stdout.splitlines()
  found = next(i for i, line in enumerate(lines) if line.strip().startswith(row))
  assert "DIFFERENT" in lines[found] and where in lines[found], out.stdout
  assert cause in lines[found + 1], out.stdout
  assert "NOT REPRODUCIBLE here" in lines[-1] and "Traceback" not in out.stderr
  if "," in pairs:  # the same run twice was equal: the counter shows only within a process
    assert next(line for line in lines if "same run twice" in line).split()[-1] == "equal"


@pytest.mark.parametrize("flags, message", [
    (["--task=no_such_module:Task"], "cannot import task no_such_module:Task"),
    (["--check_steps=1"], "check_steps"),
    (["--batch_size=0"], "batch_size"),
    (["--check_pairs=again,nope"], "--check_pairs: unknown nope"),
])
def test_bad_input_is_one_line_and_exit_2(flags, message):
  out = subprocess.run([sys.executable, str(CHECK), *flags, "--noprogress"], env=ENV,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stdout + out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def comparison(step: int | None, what: str = "loss") -> verify.Comparison:
  divergence = verify.Divergence(step, what, (what,)) if step is not None else None
  return verify.Comparison("a", "b", 8, 0, [verify.LeafDiff("model/x", 1, 2, 1.0, 1.0)], [],
                           [], [], [], [], divergence, 6)


@pytest.mark.parametrize("key, step, first_equal, callbacks, data, expected", [
    ("again", 0, False, [], False, "randomness in the task: two fresh processes"),
    ("again", 1, False, [], False, "differ at step 1"),
    ("again", 1, False, ["pure_callback"], False, "a host callback"),
    ("again", 1, False, [], True, "randomness in the task's data()"),
    ("again", 5, False, [], False, "a nondeterministic op: the same program"),
    ("resumed", 4, True, [], False, "a counter that depends on the number of calls"),
    ("chunk", 3, True, [], False, "a counter that depends on the number of calls"),
    ("in_process", 1, True, [], False, "a counter that depends on the number of calls"),
    ("chunk", 3, False, [], False, "a nondeterministic op"),
    ("one_cpu", 1, True, [], False, "XLA:CPU's thread pool followed the machine"),
    ("many_cpus", 1, True, [], False, "XLA:CPU's thread pool followed the machine"),
    ("micro", 2, True, [], False, "a nondeterministic op across devices"),
    ("gpu_off", 2, True, [], False, "--xla_gpu_deterministic_ops=true"),
])
def test_each_cause_is_named_from_where_the_runs_differ(key, step, first_equal, callbacks, data,
                                                        expected):
  row = checker.ROWS_BY_NAME[key]
  assert expected in checker.diagnose(row, comparison(step), first_equal, callbacks, data)


def test_a_cpu_count_difference_fails_the_check_and_a_limit_does_not():
  """The CPU rows are promises now (repro fixes XLA:CPU's pool); the GPU flag row is a limit."""
  again, one_cpu, gpu_off = (checker.ROWS_BY_NAME[name] for name in ("again", "one_cpu", "gpu_off"))
  assert one_cpu.promised and checker.ROWS_BY_NAME["many_cpus"].promised and not gpu_off.promised
  rows = [checker.Outcome(checker.Pair(again, "same run twice", "base", "again"), True),
          checker.Outcome(checker.Pair(gpu_off, "GPU deterministic ops on vs off", "base",
                                       "gpu_off"), False, "step 1 (loss)",
                          checker.diagnose(gpu_off, comparison(1), True, [], False))]
  report = checker.Report("cnn", 6, rows, 1.0, 3)
  assert report.exit_code == 0 and "different (a limit)" in checker.format_report(report)
  rows.append(checker.Outcome(checker.Pair(one_cpu, "1 CPU vs all 2", "base", "one_cpu"), False,
                              "step 1 (loss)", checker.diagnose(one_cpu, comparison(1), True,
                                                                [], False)))
  assert report.exit_code == 1 and "NOT REPRODUCIBLE here" in checker.format_report(report)
  rows[0].equal = False
  assert report.exit_code == 1


def test_the_progress_bar_and_the_report_count_the_same_runs(tmp_path, monkeypatch, capsys):
  """A way that resumes takes two processes: 9 ways here, 10 runs, in the bar as in the report."""
  ways, _, _ = checker.plan(Config(batch_size=16), STEPS, cpus=2, platform="cpu")
  assert (len(ways), processes.count(ways)) == (9, 10)
  monkeypatch.setattr(processes, "run_way", lambda way, *_: tmp_path / way.name)
  runs = checker._run_all(ways, Config(), STEPS, tmp_path, None, jobs=1, progress=True)
  assert sorted(runs) == sorted(way.name for way in ways)
  assert "10/10" in capsys.readouterr().err


def test_the_host_callbacks_of_a_task_are_found_by_tracing_it():
  import check_tasks
  import numpy as np
  features = {"x": (np.dtype(np.float32), (1,)), "y": (np.dtype(np.float32), (1,))}
  config = Config()
  assert checker.host_callbacks(check_tasks.TimeCallback(), config, features) == ["pure_callback"]
  assert checker.host_callbacks(check_tasks.NumpyInit(), config, features) == []


def test_a_task_defined_in_the_calling_script_is_checked(tmp_path):
  """The docs' Sine task, defined in __main__ of the script that calls repro.check: each
  run loads the script as a module (its main block does not run again)."""
  import test_docs
  import re
  code = re.search(r"```python\n(.*?)\n```", test_docs.own_model_section(), re.S).group(1)
  code = code[:code.index('if __name__ == "__main__":')] + (
      'if __name__ == "__main__":\n'
      '  import sys\n'
      '  report = repro.check(repro.Config(epochs=2, batch_size=32, progress=False), Sine(),\n'
      '                       steps=4, pairs=("again", "resumed"), log=lambda _: None)\n'
      '  print(repro.proof.checker.format_report(report))\n'
      '  sys.exit(report.exit_code)\n')
  (tmp_path / "sine_check.py").write_text(code)
  out = subprocess.run([sys.executable, "sine_check.py"], cwd=tmp_path, capture_output=True,
                       env={**ENV, "PYTHONPATH": str(TESTS.parent)}, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "same run twice" in out.stdout and "resumed at step 2 vs straight" in out.stdout
  assert "reproducible here" in out.stdout


def test_the_cpu_rows_compile_their_programs_themselves():
  """As another machine would: a CPU row never loads an executable the base run compiled."""
  ways, _, _ = checker.plan(Config(batch_size=16), STEPS, cpus=2, platform="cpu")
  assert {"again", "one_cpu", "many_cpus"} <= {way.name for way in ways if way.own_cache}
