"""The trainer, the schedule and each phase on their own, with fakes (no compiling)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from repro.train import checkpointer as checkpointer_lib
from repro.train import components
from repro.train import control
from repro.config import Config
from repro.train import optim
from repro.train.runstate import Chunk, Hook, RunState, StepInfo
from repro.train.schedule import Schedule
from repro.train.trainer import Trainer

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


def fake_chunk(calls: list):
  """A chunk program that adds 1 per step to a scalar train state; loss 1/step."""

  def chunk(train, first, n):
    calls.append((first, n))
    steps = np.arange(first + 1, first + n + 1)
    return train + n, {"loss": 1.0 / steps, "batch": steps, "params": steps,
                       "metrics": {"acc": steps / 100}}

  return chunk


def run_state(step=0, **control_values) -> RunState:
  return RunState(step=step, arrays=step, control=control.ControlState(**control_values))


def info_after(first: int, last: int, **fields) -> StepInfo:
  chunk = Chunk.of(first, last, fake_chunk([])(first, first, last - first)[1])
  return StepInfo(state=run_state(last), chunk=chunk, **fields)


class Recorder:
  """A reporter, checkpointer, signal source or hook that records what it was given."""

  def __init__(self, log: list, name: str, stop_at=None):
    self.log, self.name, self.stop_at = log, name, stop_at
    self.saved_step, self.events = None, None

  def path(self, step):
    return f"/run/{step}"

  def write(self, info):
    self.log.append((self.name, info.step))

  def sync(self):
    self.log.append(("sync", None))

  def close(self):
    pass

  def save(self, info):
    self.log.append(("save", info.step))
    self.saved_step = info.step

  def poll(self):
    step = max([s for n, s in self.log if n == "save" or n == "report"] or [0])
    return "SIGTERM" if self.stop_at is not None and step >= self.stop_at else None

  def at_boundary(self, info):
    self.log.append(("hook", info.step))


class FakeGuard(components.FiniteGuard):
  """The finite guard, with a train state's finiteness given (no device)."""

  def __init__(self, checkpoints, allow, log, finite=True):
    super().__init__(checkpoints, allow, log)
    self.state_finite = finite

  def finite(self, train) -> bool:
    return self.state_finite


def trainer(log: list, calls: list, schedule: Schedule, stop_at=None, validate=None,
            decide=None, hooks=None) -> Trainer:
  recorder = Recorder(log, "report", stop_at)
  no_decisions = lambda state, results: (state, results, False)
  return Trainer(program=fake_chunk(calls), schedule=schedule,
                 guard=FakeGuard(recorder, False, log.append),
                 validate=validate, decide=decide or no_decisions,
                 test=lambda state: {"test_loss": 0.5},
                 reporters=components.Reporters([recorder]), checkpoints=recorder,
                 signals=recorder, hooks=hooks if hooks is not None else [Recorder(log, "hook")])


def test_boundaries_are_the_nearest_of_chunk_end_target_checkpoint_epoch_eval_and_hooks():
  every6 = Hook()
  every6.every = 6
  schedule = Schedule(target=13, total=13, steps_per_epoch=10, chunk_steps=5,
                      checkpoint_every=4, eval_every=0, validates=True, hook_every=(6,))
  assert [schedule.next_boundary(s) for s in (0, 4, 6, 8, 10, 12)] == [4, 6, 8, 10, 12, 13]
  assert Schedule.of(Config(checkpoint_every=4, chunk_steps=5, epochs=2), 10, True,
                     [every6]).hook_every == (6,)
  assert [s for s in range(1, 14) if schedule.due(s).evaluation] == [10]
  assert [s for s in range(1, 14) if schedule.saves(s, False, False)] == [4, 8, 12]
  assert schedule.saves(5, True, False) and schedule.saves(13, False, True)
  assert schedule.periods() == {"checkpoint": 4, "epoch": 10, "evaluation": 0, "hook 0": 6}
  no_validation = Schedule(target=30, total=30, steps_per_epoch=10, chunk_steps=50,
                           checkpoint_every=100, eval_every=4, validates=False)
  assert no_validation.next_boundary(0) == 30 and not no_validation.due(20).evaluation


def test_the_phases_act_in_the_order_of_the_code_at_every_boundary():
  log, calls = [], []
  schedule = Schedule(target=8, total=8, steps_per_epoch=8, chunk_steps=5, checkpoint_every=4)
  ending = trainer(log, calls, schedule).run(run_state())
  assert calls == [(0, 4), (4, 4)]
  assert log == [("report", 4), ("sync", None), ("save", 4), ("hook", 4),
                 ("report", 8), ("sync", None), ("save", 8), ("hook", 8)]
  assert ending.state.step == ending.state.arrays == 8 and ending.stop is None
  assert ending.last.test == {"test_loss": 0.5} and ending.last.metrics["loss"] == 1 / 8


def test_a_signal_stops_after_the_hooks_with_a_checkpoint_and_nothing_runs_once_stopped():
  log, calls = [], []
  schedule = Schedule(target=20, total=20, steps_per_epoch=20, chunk_steps=3,
                      checkpoint_every=10)
  ending = trainer(log, calls, schedule, stop_at=3).run(run_state())
  assert calls == [(0, 3)] and ending.stop == "SIGTERM" and ending.state.step == 3
  assert log == [("report", 3), ("hook", 3), ("sync", None), ("save", 3)]
  again = trainer([], calls := [], schedule, stop_at=0).run(run_state())
  assert calls == [] and again.stop == "SIGTERM" and again.last is None


def test_nothing_runs_at_the_target_or_after_an_early_stop():
  schedule = Schedule(target=10, total=10, steps_per_epoch=5, chunk_steps=5,
                      checkpoint_every=5)
  calls = []
  trainer([], calls, schedule).run(run_state(10))
  trainer([], calls, schedule).run(run_state(5, stopped_early=True))
  assert calls == []


def validation_run(config: Config, results: list[dict], log: list):
  settings = control.Settings.of(config, ("accuracy",))
  decide = components.Decisions(settings, optim.schedule(config, 100), mesh=None, log=log.append)
  validate = lambda state: {f"val_{k}": v for k, v in results.pop(0).items()}
  schedule = Schedule.of(config.replace(max_steps=100), 10, validates=True)
  return decide, validate, schedule


def test_validation_at_epoch_ends_and_eval_every_steers_saves_and_stops_early():
  config = Config(validation_examples=8, eval_every=4, monitor="val_accuracy", patience=2,
                  checkpoint_every=1000, chunk_steps=1000, epochs=10)
  decide, validate, schedule = validation_run(
      config, [{"accuracy": 0.5}, {"accuracy": 0.6}, {"accuracy": 0.6}, {"accuracy": 0.4}],
      messages := [])
  log, calls = [], []
  ending = trainer(log, calls, schedule, validate=validate, decide=decide).run(run_state())
  # Evaluated at 4, 8, 10, 12; best 0.6 at 8 (a strict improvement saves); two more
  # evaluations without one stop early at 12, which saves and tests.
  assert [first + n for first, n in calls] == [4, 8, 10, 12]
  assert [s for n, s in log if n == "save"] == [4, 8, 12]
  assert ending.state.control.best == 0.6 and ending.state.control.best_step == 8
  assert ending.state.control.stopped_early and ending.last.test == {"test_loss": 0.5}
  assert ending.last.evaluation == {"step": 12, "val_accuracy": 0.4,
                                    "lr": config.learning_rate}
  assert messages and messages[-1].startswith("early stop at step 12")


def test_decisions_without_a_result_change_nothing():
  config = Config()
  decide, _, _ = validation_run(config, [], [])
  state = run_state(3)
  assert decide(state, None) == (state, None, False)


def test_the_finite_guard_names_the_step_and_the_last_finite_checkpoint():
  checkpoints = Recorder([], "checkpoints")
  checkpoints.saved_step = 4
  guard = FakeGuard(checkpoints, False, lambda _: None, finite=False)
  finite = info_after(0, 8)
  with pytest.raises(Exception, match=r"state became non-finite by step 8: stopped, nothing "
                                      r"non-finite was saved and the last finite checkpoint "
                                      r"is /run/4"):
    guard.check(finite.chunk, finite.state)
  trace = dict(finite.chunk.trace, loss=np.array([1, 1, np.nan, 1, 1, 1, 1, 1.0]))
  nan = Chunk(first=0, last=8, trace=trace)
  checkpoints.saved_step = None
  with pytest.raises(Exception, match=r"the loss became nan at step 3: .*no checkpoint"):
    guard.check(nan, finite.state)
  warned = []
  allowing = FakeGuard(checkpoints, True, warned.append, finite=False)
  allowing.check(nan, finite.state)
  allowing.check(nan, finite.state)
  assert warned == ["warning: the loss became nan at step 3; training on (--allow_nonfinite)"]


def test_stop_on_signal_reports_the_signal_once_asked():
  class Requests:
    signal_name = None

  requests = Requests()
  signals = components.StopOnSignal(requests)
  assert signals.poll() is None
  requests.signal_name = "SIGINT"
  assert signals.poll() == "SIGINT"


class FakeStore:
  def __init__(self):
    self.saved = []

  def save(self, step, pure, cursor, manifest, metrics=None):
    self.saved.append((step, cursor, metrics))


class FakePlan:
  config = Config()


def test_checkpointer_saves_the_run_state_with_its_validation_metrics(monkeypatch):
  monkeypatch.setattr(checkpointer_lib.nnx, "to_pure_dict", lambda state: {"state": state})
  monkeypatch.setattr(checkpointer_lib.manifest_lib, "describe", lambda plan, state, metrics,
                      pure: ({"step": state.step}, {"metrics": metrics, "state_digest": "d"}))
  store = FakeStore()
  checkpoints = checkpointer_lib.Checkpointer(FakePlan(), primary=False, store=store)
  assert checkpoints.saved_step is None and checkpoints.digest == "" and (
      checkpoints.saved_path == "")
  checkpoints.save(info_after(2, 5))
  checkpoints.save(info_after(5, 7, evaluation={"step": 7, "val_loss": 0.5, "lr": 0.1}))
  assert [s for s, _, _ in store.saved] == [5, 7]
  assert store.saved[0][2] is None and store.saved[1][2] == {"step": 7, "val_loss": 0.5}
  assert checkpoints.saved_step == 7 and checkpoints.manifest == {
      "metrics": {"loss": 1 / 7, "val_loss": 0.5}, "state_digest": "d"}
  assert checkpoints.digest == "d"


def test_logs_write_every_step_and_the_evaluations_and_cut_back_on_resume(tmp_path):
  logs = components.Logs(tmp_path, 0, np.uint32(7))
  logs.write(info_after(0, 4, evaluation={"step": 4, "val_loss": 0.25, "lr": 0.001}))
  logs.sync()
  logs.close()
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [1, 2, 3, 4, 4] and lines[0]["train_acc"] == 0.01
  assert lines[-1] == {"step": 4, "val_loss": 0.25, "lr": 0.001}
  trace_lines = (tmp_path / "trace.jsonl").read_text().splitlines()
  assert json.loads(trace_lines[0]) == {"step": 0, "params": "00000007"}
  components.Logs(tmp_path, 2).close()  # a resume from step 2
  kept = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert kept == [1, 2]


def test_progress_counts_the_steps_of_each_chunk_and_shows_ms_a_step():
  progress = components.Progress(target=10, step=2, steps_per_epoch=5, label="seed 0", enabled=True)
  progress.write(info_after(2, 6))
  assert progress.bar.n == 6 and math.isclose(info_after(2, 6).loss, 1 / 6)
  assert "ms_step" in progress.bar.postfix
  progress.close()


def test_timings_log_each_chunks_wall_time_and_the_mean_after_the_first(tmp_path):
  timings = components.Timings(tmp_path)
  for first, last, seconds in ((0, 4, 2.0), (4, 8, 0.4), (8, 10, 0.1)):
    chunk = dataclasses.replace(info_after(first, last).chunk, seconds=seconds)
    timings.write(StepInfo(state=run_state(last), chunk=chunk))
  timings.close()
  lines = [json.loads(x) for x in (tmp_path / "timings.jsonl").read_text().splitlines()]
  assert [(r["step"], r["steps"], r["ms_step"], r["first"]) for r in lines] == [
      (4, 4, 500.0, True), (8, 4, 100.0, False), (10, 2, 50.0, False)]
  assert math.isclose(timings.ms_step(), 1000 * 0.5 / 6)
  only_first = components.Timings(tmp_path / "..")
  only_first.write(StepInfo(state=run_state(4), chunk=info_after(0, 4).chunk))
  only_first.close()
  assert only_first.ms_step() is None  # a compiling chunk is not a speed


def test_a_plateau_decay_returns_a_new_state_and_leaves_the_old_one_as_it_was():
  from flax import nnx
  config = Config(schedule="plateau", plateau_patience=1, monitor="val_loss",
                  validation_examples=8, learning_rate=0.1)
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optim.make_tx(config, 10), wrt=nnx.Param)
  _, arrays = nnx.split({"model": model, "optimizer": optimizer})
  settings = control.Settings.of(config, ())
  decide = components.Decisions(settings, optim.schedule(config, 10), mesh=None,
                                log=(said := []).append)
  state = RunState(step=2, arrays=arrays, control=control.ControlState.from_json(None, settings))
  state, _, improved = decide(state, {"val_loss": 1.0})
  assert improved and state.arrays is arrays
  worse, record, improved = decide(state, {"val_loss": 2.0})
  rate = lambda s: float(nnx.to_pure_dict(s.arrays)["optimizer"]["opt_state"]["hyperparams"][
      "learning_rate"])
  assert not improved and rate(state) == np.float32(0.1) and rate(worse) == np.float32(0.05)
  assert record["lr"] == worse.control.lr == 0.05 and "learning rate -> 0.05" in said[-1]
