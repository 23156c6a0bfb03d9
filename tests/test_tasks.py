"""Every guarantee on every example task: cnn, resnet, charlm, regression, attention.

(tiny_tasks.py; attention is a user-style model with dropout inside nnx.MultiHeadAttention
and no mode calls.) Each task also runs under the chunk program --program=auto does not
pick for it.

Same seed, same bits; interrupted (--max_steps, SIGTERM, SIGKILL) and resumed,
the same bits and metrics.jsonl; --micro_shards, the same bits on 1, 2 and 4
devices; the same bits on 1 and 16 CPUs (the CNN's and the regression's:
bin/check's CPU rows, tests/test_check.py); bin/verify names the first
divergence; a resume with another task, option or model structure is refused
field by field; a bad task is one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import tiny_tasks
from bits import assert_bitwise_equal, assert_same_run, read_losses, restore_state
from conftest import TRAIN, flags_of, quiet
import repro
from repro import Config, ReproError
from repro.proof import verify
from tiny_tasks import NAMES

TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(TESTS))


@pytest.fixture(scope="session")
def text(tmp_path_factory) -> Path:
  return tiny_tasks.write_text(tmp_path_factory.mktemp("text") / "corpus.txt")


@pytest.fixture(scope="module")
def tiny(idx_dir, tfds_dir, text, tmp_path_factory):
  """tiny(task name, run name, options=None, **overrides) -> Config of a 30-32 step run."""
  root = tmp_path_factory.mktemp("tasks")

  def make(name: str, run: str, options: dict | None = None, **overrides) -> Config:
    spec, task_options = tiny_tasks.task(name, idx_dir, tfds_dir, text)
    values = dict(seed=0, epochs=3 if name == "charlm" else 2, batch_size=16,
                  output=str(root / run), checkpoint_every=10, chunk_steps=8, progress=False,
                  task=spec, task_options={**task_options, **(options or {})})
    values.update(overrides)
    return Config(**values)

  return make


@pytest.fixture(scope="module")
def reference(tiny):
  """One uninterrupted run of each task."""
  return {name: quiet(tiny(name, f"{name}-reference")) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_bits(name, tiny, reference):
  again = quiet(tiny(name, f"{name}-again"))
  assert again.digest == reference[name].digest and again.test == reference[name].test
  assert_same_run(reference[name].output, again.output)


def train_with_fault(config: Config, fault: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(TESTS / "faulty_train.py"), *flags_of(config)],
                        env={**ENV, "REPRO_TEST_FAULT": fault}, capture_output=True, text=True,
                        timeout=300)


class TermAt(repro.Hook):
  """Sends this process a SIGTERM at the boundary of `step` (repro.run stops there)."""

  def __init__(self, step: int):
    self.step = step

  def at_boundary(self, info: repro.StepInfo) -> None:
    if info.step == self.step:
      os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("name", NAMES)
def test_max_steps_sigterm_and_sigkill_then_resume_give_the_uninterrupted_bits(
    name, tiny, reference):
  config = tiny(name, f"{name}-interrupted")
  assert quiet(config.replace(max_steps=3)).step == 3
  # Resumed from 3, the boundaries are 10, 18, 20, ...: a SIGTERM sent by a hook at 10
  # is seen at that boundary's last phase, so the run stops at 10. (In this process, as
  # repro.run handles it; bin/train's exit 75 and its line: tests/test_faults.py.)
  stopped = quiet(config, hooks=[TermAt(10)])
  assert (stopped.stopped_by, stopped.step, Path(stopped.checkpoint).name) == ("SIGTERM", 10, "10")
  # From 10 on (boundaries 18, 20, 28); the kill at 28 may land while checkpoint 20 is
  # still written in the background, which then never counts: the newest finalized
  # step is 20 or 10.
  killed = train_with_fault(config, "kill_after_chunk:28")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  resumed = quiet(config)
  assert resumed.resumed_from in (10, 20) and resumed.step == reference[name].step
  assert_same_run(reference[name].output, resumed.output)


# What runs a chunk decides the bits, and every guarantee holds for either program:
# each task is also trained with the program that --program=auto does not pick for it
# (micro-shards always run the scan: see test_micro_shards_run_the_scan...).
AUTO = {"cnn": "step", "resnet": "step", "charlm": "scan", "regression": "scan",
        "attention": "scan"}
OTHER_PROGRAM = {name: {"step": "scan", "scan": "step"}[p] for name, p in AUTO.items()}


@pytest.mark.parametrize("name", NAMES)
def test_auto_picks_the_step_program_on_cpu_for_convolutions_only(name, reference):
  config = json.loads((Path(reference[name].output) / "config.json").read_text())
  assert config["program"] == AUTO[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_other_program_repeats_resumes_and_feeds_from_the_host_bitwise(name, tiny,
                                                                          reference):
  program = OTHER_PROGRAM[name]
  straight = quiet(tiny(name, f"{name}-{program}", program=program, max_steps=20))
  assert straight.digest != reference[name].digest  # the program decides the bits
  again = tiny(name, f"{name}-{program}-again", program=program, max_steps=20)
  assert quiet(again.replace(max_steps=7)).step == 7
  resumed = quiet(again.replace(chunk_steps=5, data_path="host"))  # resumed, other chunks, fed
  assert resumed.resumed_from == 7 and resumed.digest == straight.digest
  assert_same_run(straight.output, resumed.output)
  with pytest.raises(ReproError, match=rf"program: checkpoint {program!r}, requested "
                                       rf"{AUTO[name]!r}"):
    quiet(again.replace(program="auto", max_steps=30))


# The reference task's topology invariance is tests/test_parallel.py's, with
# validation, plateau and dropout and over two processes.
OTHER_TASKS = tuple(name for name in NAMES if name != "cnn")


def run_on_devices(configs: list, devices: int, directory: Path, env: dict | None = None,
                   pin: tuple[str, ...] = ()) -> None:
  """Trains the Configs one after another in one process of `devices` forced CPU devices.

  env: changes to its environment (a value None unsets); pin: a command prefix (taskset).
  """
  listing = directory / "configs.json"
  listing.write_text(json.dumps([c.to_dict() for c in configs]))
  environment = {**ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                 **(env or {})}
  done = subprocess.run([*pin, sys.executable, str(TESTS / "run_configs.py"), str(listing)],
                        env={k: v for k, v in environment.items() if v is not None},
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]


# One CPU (taskset), and a machine of 16 CPUs (NPROC=16, which XLA:CPU reads when
# PJRT_NPROC is unset): repro fixes XLA:CPU's pool by the config, so neither changes a bit.
# Each compiles its programs itself, as another machine would, never loading the suite's.
FRESH = {"JAX_ENABLE_COMPILATION_CACHE": "false"}
MACHINES = {"1cpu": (FRESH, ("taskset", "-c", str(min(os.sched_getaffinity(0))))),
            "16cpus": ({**FRESH, "NPROC": "16", "PJRT_NPROC": None}, ())}
# The CNN's and the regression's runs on such machines are bin/check's CPU rows in
# tests/test_check.py (the same tiny tasks, each row compiling for itself; their final
# state, test metrics, metrics.jsonl and trace.jsonl compared there).
MACHINE_TASKS = ("resnet", "charlm", "attention")


@pytest.fixture(scope="module")
def other_machines(tiny, tmp_path_factory):
  """Each task's reference run again, in one process per machine of MACHINES."""
  runs = {}
  for machine, (env, pin) in MACHINES.items():
    configs = {name: tiny(name, f"{name}-{machine}") for name in MACHINE_TASKS}
    run_on_devices(list(configs.values()), 1, tmp_path_factory.mktemp(machine), env, pin)
    runs.update({(name, machine): c.output for name, c in configs.items()})
  return runs


@pytest.mark.parametrize("machine", sorted(MACHINES))
@pytest.mark.parametrize("name", MACHINE_TASKS)
def test_the_number_of_cpus_changes_no_bit(name, machine, reference, other_machines):
  assert_same_run(reference[name].output, other_machines[name, machine])


MICRO_STEPS = 12  # two chunks and a checkpoint between: enough to show where bits differ


# The charlm's micro-shard runs are fine-tunes of its reference run (--init_from): they show
# that a warm start, too, gives the same bits on every device count.
MICRO_INIT_FROM = ("charlm",)


@pytest.fixture(scope="module")
def micro_shard_runs(tiny, reference, tmp_path_factory):
  """Each other task with --micro_shards=4: in a process of 1 device, and on 2 and 4 of 4
  forced devices in another. (Before repro fixed XLA:CPU's pool at max(--cpu_threads,
  --micro_shards), a process of 4 forced devices gave the ResNet's convolutions other bits
  than a process of 1 on a 2-core AVX2 machine: their pools were 4 and 2 threads. The pool
  of M is also why these runs are not in this process: its backend started with 2.)"""
  warm = lambda name: ({"init_from": reference[name].output, "seed": 1}
                       if name in MICRO_INIT_FROM else {})
  configs = {(name, d): tiny(name, f"{name}-micro{d}", micro_shards=4, devices=d,
                             max_steps=MICRO_STEPS, **warm(name))
             for name in OTHER_TASKS for d in (1, 2, 4)}
  for devices, wanted in ((1, (1,)), (4, (2, 4))):
    run_on_devices([c for (_, d), c in configs.items() if d in wanted], devices,
                   tmp_path_factory.mktemp(f"micro{devices}"))
  return {key: Path(c.output) for key, c in configs.items()}


@pytest.mark.parametrize("name", OTHER_TASKS)
def test_micro_shards_give_the_same_bits_on_1_2_and_4_devices(name, micro_shard_runs):
  for devices in (2, 4):
    assert_same_run(micro_shard_runs[(name, 1)], micro_shard_runs[(name, devices)])
  if name in MICRO_INIT_FROM:  # a fine-tune: its lineage names the reference run
    lineage, = repro.load(micro_shard_runs[(name, 4)]).manifest["lineage"]
    assert lineage["kind"] == "run" and Path(lineage["path"]).parent.name == f"{name}-reference"


def test_micro_shards_run_the_scan_and_the_step_program_is_refused_with_them(
    micro_shard_runs, tiny):
  for name in OTHER_TASKS:
    config = json.loads((micro_shard_runs[(name, 4)] / "config.json").read_text())
    assert config["program"] == "scan", name
  with pytest.raises(ReproError, match=r"--program=step cannot give topology-invariant bits"):
    quiet(tiny("charlm", "charlm-step-micro", micro_shards=4, program="step"))


def test_a_four_device_checkpoint_loads_on_one_device_with_the_same_bits(micro_shard_runs):
  from flax import nnx
  import repro
  one, four = (repro.load(micro_shard_runs[("charlm", d)]) for d in (1, 4))
  assert one.step == four.step and one.metrics == four.metrics
  params = lambda trained: jax.tree.leaves(nnx.state(trained.model, nnx.Param))
  for a, b in zip(params(one), params(four), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_batchnorm_statistics_are_updated_and_equal_on_every_device_count(micro_shard_runs):
  states = {d: restore_state(micro_shard_runs[("resnet", d)] / str(MICRO_STEPS))
            for d in (1, 2, 4)}
  mean = {d: np.asarray(s["model"]["block1"]["norm1"]["mean"]) for d, s in states.items()}
  assert np.any(mean[1] != 0)  # the running statistics did move from their init
  assert mean[1].tobytes() == mean[2].tobytes() == mean[4].tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_verify_names_the_first_divergence(name, tiny, reference):
  ref = reference[name].output
  faster = quiet(tiny(name, f"{name}-lr", learning_rate=2e-3)).output
  assert verify.compare(ref, faster).divergence == verify.Divergence(1, "params", ("params",))
  if name == "regression":  # (the reference task's init divergence: tests/test_verify.py)
    seed1 = quiet(tiny(name, f"{name}-seed1", seed=1)).output
    assert verify.compare(ref, seed1).divergence.what == "init"
  if name == "charlm":  # and as a user sees it
    cli = subprocess.run([sys.executable, str(TRAIN.parent / "verify"), ref, faster],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1
    assert "first divergence: step 1: params diverged first (data and loss agree)" in cli.stdout


@pytest.mark.parametrize("name, option, value", [
    ("cnn", "dropout", 0.5), ("resnet", "width", 8), ("charlm", "context", 8),
    ("regression", "hidden", 4)])
def test_resuming_with_another_task_option_is_refused_naming_it(name, option, value, tiny):
  config = tiny(name, f"{name}-option", max_steps=4)
  quiet(config)
  changed = config.replace(max_steps=None, task_options={**config.task_options, option: value})
  with pytest.raises(ReproError) as refused:
    quiet(changed)
  old = config.task_options[option]
  assert f"\n  {option}: checkpoint {old!r}, requested {value!r}" in str(refused.value)
  assert sorted(p.name for p in Path(config.output).iterdir() if p.name.isdigit()) == ["4"]


@pytest.mark.parametrize("name", NAMES)
def test_resuming_as_another_task_is_refused(name, tiny, idx_dir, tfds_dir, text):
  config = tiny(name, f"{name}-as-other", max_steps=4)
  quiet(config)
  other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
  spec, options = tiny_tasks.task(other, idx_dir, tfds_dir, text)
  with pytest.raises(ReproError, match=f"\n  task: checkpoint '{name}', requested '{other}'"):
    quiet(config.replace(task=spec, task_options=options, max_steps=None))


def test_resuming_with_another_model_structure_is_refused_leaf_by_leaf(tiny):
  from flax import nnx
  from repro.tasks import regression

  @dataclasses.dataclass
  class Deeper(regression.Regression):  # the same name, options and architecture string
    def model(self, rngs):
      mlp = super().model(rngs)
      mlp.extra = nnx.Linear(2, 2, rngs=rngs)
      return mlp

  config = tiny("regression", "regression-structure", max_steps=4)
  quiet(config)
  with pytest.raises(ReproError, match=r"another structure:\n  model/extra/bias: checkpoint none, "
                                       r"requested float32\[2\]"):
    quiet(config.replace(max_steps=None), task=Deeper(**vars(tiny_tasks.regression())))


def test_any_metric_can_steer_early_stopping_plateau_and_the_best_checkpoint(tiny):
  kw = dict(validation_examples=32, eval_every=3, monitor="val_perplexity", patience=4,
            schedule="plateau", plateau_patience=1, epochs=5, max_to_keep=1)
  whole = quiet(tiny("charlm", "charlm-steered", **kw))
  parts = tiny("charlm", "charlm-steered-parts", **kw)
  quiet(parts.replace(max_steps=whole.step // 2))
  resumed = quiet(parts)
  assert resumed.stopped_early == whole.stopped_early and resumed.step == whole.step
  assert_same_run(whole.output, resumed.output)
  evals = [r for r in map(json.loads, read_losses(whole.output).splitlines())
           if "val_perplexity" in r]
  assert evals and all(r["val_perplexity"] > 1 for r in evals)
  assert whole.best_value == min(r["val_perplexity"] for r in evals)
  assert (Path(whole.output) / str(whole.best_step)).is_dir()
  with pytest.raises(ReproError, match="--monitor=val_bleu is not a metric of task charlm: pass "
                                       "one of --monitor=val_accuracy, --monitor=val_loss, "
                                       "--monitor=val_perplexity"):
    quiet(tiny("charlm", "charlm-bleu", **{**kw, "monitor": "val_bleu"}))


def test_bin_plot_draws_every_tasks_runs(reference, tmp_path):
  out = tmp_path / "all.png"
  result = subprocess.run([sys.executable, str(TRAIN.parent / "plot"),
                           *(reference[n].output for n in NAMES), f"--out={out}"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_modules_own_rng_stream_state_does_not_change_a_step(idx_dir, tfds_dir):
  """The stream nnx.Dropout holds is reseeded from (seed, step) before each step: whatever
  key and count it carries in (how often a program ran before), the step is the same."""
  from flax import nnx
  from repro.train import core
  from repro.train import rng
  from repro.train import state as state_lib
  from repro.tasks.resnet import ResNet
  task = ResNet(data_dir=str(idx_dir), tfds_dir=str(tfds_dir), width=4, dropout=0.5)
  keys = rng.streams(0)
  built = state_lib.build(task, Config(batch_size=8), keys, 10, mesh=None)
  chunk = core.make_train_chunk(built.graphdef, task, chunk_steps=2, num_examples=16,
                                 batch_size=8)
  data = {"image": np.arange(16 * 784, dtype=np.uint8).reshape(16, 28, 28, 1),
          "label": np.arange(16, dtype=np.int32) % 10}
  worn = nnx.to_pure_dict(built.state)
  worn["model"]["dropout"]["rngs"]["count"] = np.uint32(12345)
  worn["model"]["dropout"]["rngs"]["key"] = jax.random.key(99)
  other = state_lib.build(task, Config(batch_size=8), keys, 10, mesh=None)
  worn_state = state_lib.restore(other, worn)
  ran = [chunk(s, data, keys, np.int32(0), np.int32(2)) for s in (built.state, worn_state)]
  assert_bitwise_equal(nnx.to_pure_dict(ran[0][0]), nnx.to_pure_dict(ran[1][0]))
  assert ran[0][1]["loss"].tobytes() == ran[1][1]["loss"].tobytes()


def test_two_modules_holding_streams_get_different_keys():
  from flax import nnx
  from repro.train import rng

  class TwoDropouts(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Dropout(0.5, rngs=rngs)
      self.b = nnx.Dropout(0.5, rngs=rngs)

  model = TwoDropouts(nnx.Rngs(0))
  rng.reseed(model, jax.random.key(7))
  data = lambda stream: jax.random.key_data(stream.key[...]).tobytes()
  assert data(model.a.rngs) != data(model.b.rngs)  # nnx.reseed would give both the same key
  rng.reseed(model, jax.random.key(7))
  again = data(model.a.rngs)
  rng.reseed(model, jax.random.key(8))
  assert again != data(model.a.rngs)


@pytest.mark.parametrize("spec, message", [
    ("broken_tasks:not_a_task", "task broken_tasks:not_a_task is a int, not a repro.Task"),
    ("broken_tasks:RaisesInModel", "task fine: building the model (traced, under "
                                   "nnx.eval_shape) failed (ValueError: width 0"),
    ("broken_tasks:RaisesInData", "task fine: data() failed (FileNotFoundError:"),
    ("broken_tasks:EagerOnlyModel", "task fine: building the model (traced, under "
                                    "nnx.eval_shape) failed (ConcretizationTypeError"),
    ("broken_tasks:NonScalarLoss", "task fine: its loss is float32[16, 3], not a float scalar"),
    ("broken_tasks:WhileLoopLoss", "task fine: a training step (the loss's gradient and the "
                                   "update, traced) failed (ValueError: Reverse-mode"),
    ("broken_tasks:AugmentDropsAField", "task fine: a training step (the loss's gradient and "
                                        "the update, traced) failed (KeyError: 'y')"),
    ("broken_tasks:RaisesInEvalMetrics", "task fine: eval_metrics on a batch of the train split "
                                         "failed (KeyError: 'label')"),
    ("broken_tasks:SplitsDisagree", "the features of the train split disagree in length "
                                    "(x 64, y 63)"),
    ("broken_tasks:EmptySplit", "task fine: the train split is empty"),
    ("broken_tasks:TestFeaturesDiffer", "task fine: the test split's features"),
])
def test_a_broken_task_is_refused_in_one_line_before_anything_is_written(spec, message, tmp_path,
                                                                         capfd, recwarn):
  with pytest.raises(ReproError) as refused:
    quiet(Config(task=spec, batch_size=16, output=str(tmp_path / "out"), progress=False))
  assert message in str(refused.value) and "\n" not in str(refused.value)
  assert not (tmp_path / "out").exists() and capfd.readouterr().err == ""
  # and no warning that bin/train would print (pytest records them; the kinds Python shows)
  shown = [w for w in recwarn if not issubclass(w.category, (DeprecationWarning,
                                                             PendingDeprecationWarning))]
  assert not shown, [str(w.message) for w in shown]


@pytest.mark.parametrize("spec, message", [
    ("broken_tasks:not_a_task", "task broken_tasks:not_a_task is a int, not a repro.Task"),
    ("broken_tasks:WhileLoopLoss", "task fine: a training step (the loss's gradient and the "
                                   "update, traced) failed (ValueError: Reverse-mode")])
def test_a_broken_task_is_one_line_and_exit_2(spec, message, tmp_path):
  """As above, through bin/train: its one line on stderr (the others' refusals are the same
  ReproError, which bin/train prints so for any of them: tests/test_cli.py)."""
  result = subprocess.run([sys.executable, str(TRAIN), f"--task={spec}", "--batch_size=16",
                           f"--output={tmp_path / 'out'}", "--noprogress"], env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not (tmp_path / "out").exists()


def test_run_refuses_what_is_not_a_task(tmp_path):
  with pytest.raises(ReproError, match="task must be a repro.Task, got dict"):
    quiet(Config(output=str(tmp_path / "x")), task={"model": None})


@pytest.mark.parametrize("name", NAMES)
def test_the_host_fed_path_gives_the_device_paths_bits(name, tiny, reference):
  fed = quiet(tiny(name, f"{name}-host", data_path="host"))
  assert fed.digest == reference[name].digest and fed.test == reference[name].test
  assert_same_run(reference[name].output, fed.output)  # state, metrics.jsonl, trace.jsonl


@pytest.mark.parametrize("name", ["cnn", "charlm"])
def test_a_run_resumes_on_the_other_data_path_bitwise(name, tiny, reference):
  config = tiny(name, f"{name}-switch")
  quiet(config.replace(max_steps=13, data_path="host"))
  resumed = quiet(config.replace(data_path="device"))
  assert resumed.resumed_from == 13
  assert_same_run(reference[name].output, resumed.output)
  manifest = json.loads((Path(resumed.checkpoint) / "manifest" / "metadata").read_text())
  assert manifest["data"]["path"] == "device" and manifest["config"]["data_path"] == "device"
