"""Validation, early stopping, schedules, dropout, metrics, TensorBoard, plots, JSON configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bits import assert_bitwise_equal, differing_leaves, read_losses, restore_state
from conftest import quiet
from repro import ReproError, metrics

BIN = Path(__file__).resolve().parent.parent / "bin"
VAL = dict(validation_examples=32)  # 224 training examples: 14 steps an epoch at batch 16


def assert_same_run(a, b):
  assert a.step == b.step
  assert_bitwise_equal(restore_state(a.checkpoint), restore_state(b.checkpoint))
  assert read_losses(a.output) == read_losses(b.output)  # metrics.jsonl line for line
  assert (Path(a.output) / "trace.jsonl").read_bytes() == (Path(b.output) / "trace.jsonl").read_bytes()


def interrupted(small, name, stops, **kw):
  for stop in stops:
    quiet(small(name, max_steps=stop, **kw))
  result = quiet(small(name, **kw))
  assert result.resumed_from == stops[-1]
  return result


def test_evaluation_does_not_change_the_training_bits(small):
  rarely = quiet(small("rare", **VAL))
  often = quiet(small("often", eval_every=3, **VAL))
  assert_bitwise_equal(restore_state(rarely.checkpoint), restore_state(often.checkpoint))
  evals = lambda r: [x["step"] for x in metrics.read(Path(r.output) / metrics.FILENAME)
                     if "val_loss" in x]
  assert evals(rarely) == [14, 28] and len(evals(often)) > 9


@pytest.mark.parametrize("schedule, extra", [
    ("constant", {}),
    ("cosine", {}),
    ("warmup_cosine", {"warmup_steps": 6}),
    ("plateau", {"monitor": "val_accuracy", "plateau_patience": 1, "eval_every": 2}),
])
def test_each_schedule_resumes_bitwise(small, schedule, extra):
  kw = dict(schedule=schedule, **VAL, **extra)
  whole = quiet(small("whole", **kw))
  resumed = interrupted(small, "parts", [9, 17], **kw)
  assert_same_run(whole, resumed)
  lrs = [r["lr"] for r in metrics.read(Path(whole.output) / metrics.FILENAME) if "lr" in r]
  if schedule == "constant":
    assert set(lrs) == {1e-3}
  else:
    assert min(lrs) < 1e-3  # the schedule really changed the rate


def test_plateau_decays_and_its_state_is_checkpointed(small):
  config = small("plateau", schedule="plateau", monitor="val_accuracy", plateau_patience=1,
                 eval_every=2, max_steps=20, **VAL)
  quiet(config)
  from repro.checkpoints import store as checkpoint
  store = checkpoint.Store(Path(config.output), max_to_keep=3)
  control = store.read_json(20, "cursor")["control"]
  store.close()
  assert control["lr"] < 1e-3
  lr_leaf = restore_state(Path(config.output) / "20")["optimizer"]["opt_state"]["hyperparams"]
  assert float(lr_leaf["learning_rate"]) == pytest.approx(control["lr"])


def test_dropout_runs_resume_bitwise_and_differ_from_no_dropout(small):
  whole = quiet(small("drop", options={"dropout": 0.5}))
  resumed = interrupted(small, "drop-parts", [5, 21], options={"dropout": 0.5})
  assert_same_run(whole, resumed)
  plain = quiet(small("nodrop"))
  differing = differing_leaves(restore_state(whole.checkpoint), restore_state(plain.checkpoint))
  assert "model/linear2/kernel" in differing


def test_early_stopping_stops_at_the_same_step_when_resumed(small):
  kw = dict(monitor="val_accuracy", patience=3, eval_every=2, epochs=10, **VAL)
  whole = quiet(small("early", **kw))
  assert whole.stopped_early and whole.step < 10 * 14
  resumed = interrupted(small, "early-parts", [whole.step // 2], **kw)
  assert resumed.stopped_early
  assert_same_run(whole, resumed)
  again = quiet(small("early", **kw))
  assert again.already_complete and again.step == whole.step


def test_the_best_checkpoint_is_kept_beside_the_latest(small):
  result = quiet(small("best", monitor="val_accuracy", eval_every=2, max_to_keep=1, **VAL))
  steps = sorted(int(p.name) for p in Path(result.output).iterdir() if p.name.isdigit())
  assert result.best_step is not None and result.best_step in steps
  assert steps == sorted({result.best_step, result.step})
  from repro.checkpoints import store as checkpoint
  store = checkpoint.Store(Path(result.output), max_to_keep=1)
  manifest = store.read_json(result.step, "manifest")
  store.close()
  assert manifest["best"] == {"monitor": "val_accuracy", "step": result.best_step,
                              "value": result.best_value}


def test_tensorboard_event_files_are_written(small):
  result = quiet(small("tb", **VAL))
  files = list((Path(result.output) / "tensorboard").glob("events.out.tfevents.*"))
  assert files and all(f.stat().st_size > 0 for f in files)


def test_validation_and_control_flags_are_checked(small):
  with pytest.raises(ReproError, match="--patience needs a validation set"):
    quiet(small("bad", patience=2))
  with pytest.raises(ReproError, match="warmup_cosine needs --warmup_steps"):
    quiet(small("bad", schedule="warmup_cosine"))
  with pytest.raises(ReproError, match="dropout must be in"):
    quiet(small("bad", options={"dropout": 1.0}))
  with pytest.raises(ReproError, match=r"validation_examples=250 leave \(6\)"):
    quiet(small("bad", validation_examples=250))


def test_raising_epochs_of_a_cosine_run_is_refused(small):
  quiet(small("cos", schedule="cosine", epochs=1))
  with pytest.raises(ReproError, match="epochs: checkpoint 1, requested 2"):
    quiet(small("cos", schedule="cosine", epochs=2))


def test_json_config_with_flag_overrides_and_config_json_written(small, tmp_path):
  base = small("from-json", max_steps=4)
  path = tmp_path / "my.json"
  path.write_text(base.replace(seed=5).to_json())
  result = subprocess.run([sys.executable, str(BIN / "train"), f"--config={path}", "--seed=7",
                           "--noprogress"], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  written = json.loads((Path(base.output) / "config.json").read_text())
  assert written["seed"] == 7 and written["max_steps"] == 4 and written["batch_size"] == 16
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  result = subprocess.run([sys.executable, str(BIN / "train"), f"--config={bad}"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "is not valid JSON" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_plot_writes_a_png_of_overlaid_runs(small, tmp_path):
  whole = quiet(small("plot-a", **VAL))
  resumed = interrupted(small, "plot-b", [11], **VAL)
  out = tmp_path / "curves.png"
  result = subprocess.run([sys.executable, str(BIN / "plot"), whole.output, resumed.output,
                           f"--out={out}"], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  blob = out.read_bytes()
  assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
  missing = subprocess.run([sys.executable, str(BIN / "plot"), str(tmp_path / "nope")],
                           capture_output=True, text=True, timeout=300)
  assert missing.returncode == 2 and "is not a repro run directory" in missing.stderr
  (tmp_path / "afile").write_text("x")
  unwritable = subprocess.run([sys.executable, str(BIN / "plot"), whole.output,
                               f"--out={tmp_path / 'afile' / 'p.png'}"],
                              capture_output=True, text=True, timeout=300)
  assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
  lines = unwritable.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: cannot write --out")


def test_plot_shows_the_monitored_metric_else_accuracy_else_loss(tmp_path):
  from repro.cli import plot
  records = [{"step": 4, "val_loss": 2.0, "val_perplexity": 7.4}]
  assert plot.validation_metric(tmp_path, records) == "val_loss"
  (tmp_path / "config.json").write_text(json.dumps({"monitor": "val_perplexity"}))
  assert plot.validation_metric(tmp_path, records) == "val_perplexity"
  assert plot.validation_metric(tmp_path, [{"step": 1, "loss": 1.0}]) is None
