"""The training loop and each of its components on their own, with fakes (no compiling)."""

from __future__ import annotations

import json
import math

import numpy as np

from repro import components as parts
from repro import control, loop
from repro.config import Config


def fake_chunk(calls: list):
  """A chunk that adds 1 per step to a scalar 'state' and reports loss 1/step."""

  def chunk(state, first, n):
    calls.append((first, n))
    steps = np.arange(first + 1, first + n + 1)
    return state + n, {"loss": 1.0 / steps, "batch": steps, "params": steps,
                       "metrics": {"acc": steps / 100}}

  return chunk


class Every(loop.Component):
  """Needs a boundary at every multiple of `every`; records where it acted."""

  def __init__(self, every: int):
    self.every, self.seen = every, []

  def next_boundary(self, step):
    return (step // self.every + 1) * self.every

  def at_boundary(self, ctx):
    self.seen.append(ctx.step)


def context(step=0, target=10) -> loop.Context:
  return loop.Context(step=step, target=target, state=step, control=control.ControlState())


def test_the_loop_stops_at_the_nearest_boundary_any_component_needs():
  calls, a, b = [], Every(4), Every(6)
  ctx = context(target=13)
  loop.train(ctx, fake_chunk(calls), [a, b], chunk_steps=5)
  # From each step: min(step + chunk_steps, target, the multiples of 4 and 6 after it).
  assert calls == [(0, 4), (4, 2), (6, 2), (8, 4), (12, 1)]
  assert a.seen == b.seen == [4, 6, 8, 12, 13]
  assert ctx.step == ctx.state == 13 and ctx.metrics == {"loss": 1 / 13}
  assert list(ctx.trace["loss"]) == [1 / 13] and ctx.first == 12


def test_the_loop_runs_nothing_when_stopped_or_at_its_target():
  calls = []
  loop.train(context(step=10, target=10), fake_chunk(calls), [], chunk_steps=5)
  stopped = context()
  stopped.stop = "SIGTERM"
  loop.train(stopped, fake_chunk(calls), [], chunk_steps=5)
  assert calls == []


def test_a_component_that_lowers_the_target_ends_the_loop_there():
  class StopAt(loop.Component):
    def at_boundary(self, ctx):
      if ctx.step >= 6:
        ctx.target = ctx.step

  calls = []
  ctx = context(target=100)
  loop.train(ctx, fake_chunk(calls), [StopAt()], chunk_steps=3)
  assert ctx.step == 6 and calls == [(0, 3), (3, 3)]


def test_stop_on_signal_stops_at_the_boundary_after_a_signal():
  class Requests:
    signal_name = None

  requests = Requests()
  component = parts.StopOnSignal(requests)
  ctx = context()
  component.at_boundary(ctx)
  assert ctx.stop is None
  requests.signal_name = "SIGINT"
  component.at_boundary(ctx)
  assert ctx.stop == "SIGINT"


def validation(config: Config, results: list[dict], log: list):
  settings = control.Settings.of(config, ("accuracy",))
  evaluate = lambda state, split, prefix: {f"{prefix}{k}": v for k, v in results.pop(0).items()}
  return parts.Validation(evaluate, None, config, settings, steps_per_epoch=10,
                          total_steps=100, put=lambda x: x, log=log.append)


def test_validation_evaluates_at_epoch_ends_and_every_eval_every_steps_only():
  config = Config(validation_examples=8, eval_every=4, monitor="val_accuracy", patience=2)
  component = validation(config, [{"accuracy": 0.5}, {"accuracy": 0.6}, {"accuracy": 0.6},
                                  {"accuracy": 0.4}], log := [])
  assert [component.next_boundary(s) for s in (0, 3, 4, 9, 10)] == [4, 4, 8, 10, 12]
  ctx = context(target=100)
  for step, expected_records in ((4, 1), (6, 0), (8, 1), (10, 1), (12, 1)):
    ctx.step, ctx.records, ctx.save = step, [], False
    component.at_boundary(ctx)
    assert len(ctx.records) == expected_records, step
  # best 0.6 at step 8 (a strict improvement saves); two evaluations without one stop early
  assert ctx.control.best == 0.6 and ctx.control.best_step == 8
  assert ctx.control.stopped_early and ctx.target == 12
  assert log and log[-1].startswith("early stop at step 12")
  assert ctx.records[0]["lr"] == config.learning_rate


def test_final_test_evaluates_only_at_the_target_and_only_with_a_test_split():
  calls = []
  evaluate = lambda state, split, prefix: calls.append(prefix) or {f"{prefix}loss": 0.5}
  ctx = context(step=5, target=10)
  parts.FinalTest(evaluate, {"x": np.zeros(3)}).at_boundary(ctx)
  assert calls == [] and "test_loss" not in ctx.metrics
  ctx.step = 10
  parts.FinalTest(evaluate, None).at_boundary(ctx)
  parts.FinalTest(evaluate, {"x": np.zeros(3)}).at_boundary(ctx)
  assert calls == ["test_"] and ctx.metrics["test_loss"] == 0.5


class FakeStore:
  def __init__(self):
    self.saved = []

  def save(self, step, pure, cursor, manifest, metrics=None):
    self.saved.append((step, cursor, metrics))


def test_checkpointer_saves_on_its_interval_at_the_target_on_a_stop_and_when_asked(monkeypatch):
  monkeypatch.setattr(parts.nnx, "to_pure_dict", lambda state: {"state": state})
  store, synced = FakeStore(), []
  component = parts.Checkpointer(store, 5, lambda ctx, pure: ({"step": ctx.step}, {}),
                                 [lambda: synced.append(1)], events=None)
  assert [component.next_boundary(s) for s in (0, 4, 5)] == [5, 5, 10]
  ctx = context(target=12)
  for step, stop, save in ((3, None, False), (5, None, False), (7, None, True),
                           (8, "SIGTERM", False), (12, None, False)):
    ctx.step, ctx.stop, ctx.save = step, stop, save
    ctx.metrics = {"loss": 1.0, "val_loss": 0.5} if save else {"loss": 1.0}
    component.at_boundary(ctx)
  assert [s for s, _, _ in store.saved] == [5, 7, 8, 12]
  assert store.saved[1][2] == {"step": 7, "val_loss": 0.5} and store.saved[0][2] is None
  assert len(synced) == 4 and ctx.saved_step == 12


def test_logs_write_every_step_and_the_evaluations_and_cut_back_on_resume(tmp_path):
  initial = lambda: np.uint32(7)
  logs = parts.Logs(tmp_path, 0, initial)
  calls = []
  ctx = context(target=4)
  state, trace = fake_chunk(calls)(0, 0, 4)
  ctx.advance(state, trace, 4)
  ctx.records = [{"step": 4, "val_loss": 0.25, "lr": 0.001}]
  logs.at_boundary(ctx)
  logs.sync()
  logs.close()
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [1, 2, 3, 4, 4] and lines[0]["train_acc"] == 0.01
  assert lines[-1] == {"step": 4, "val_loss": 0.25, "lr": 0.001}
  trace_lines = (tmp_path / "trace.jsonl").read_text().splitlines()
  assert json.loads(trace_lines[0]) == {"step": 0, "params": "00000007"}
  parts.Logs(tmp_path, 2, initial).close()  # a resume from step 2
  kept = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert kept == [1, 2]


def test_progress_counts_the_steps_of_each_chunk():
  progress = parts.Progress(target=10, step=2, steps_per_epoch=5, label="seed 0", enabled=True)
  ctx = context(step=2, target=10)
  state, trace = fake_chunk([])(2, 2, 4)
  ctx.advance(state, trace, 6)
  progress.at_boundary(ctx)
  assert progress.bar.n == 6 and math.isclose(ctx.metrics["loss"], 1 / 6)
  progress.close()
