"""A Grain MapDataset and a Hugging Face Dataset as splits, with every guarantee (issue 29).

The tiny regression (tests/tiny_tasks.py) trains on the same examples given as arrays, as a
Grain pipeline whose map doubles x as repro gathers, and as a Hugging Face dataset (in memory,
and saved to disk): tests/source_tasks.py's Fed. Each gives the arrays' bits on the device
path, fed from the host and read on the device; runs twice the same; killed and resumed, the
same; with micro-shards, the same on 1, 2 and 4 devices; bin/check finds its pairs equal on
the Grain task; repro.evaluate, bin/eval, repro.load, --init_from and repro.replay read the
data through the same source. What repro cannot read is refused in one line, with the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing here may reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")

grain = pytest.importorskip("grain")  # the extras repro[grain] and repro[hf]
datasets = pytest.importorskip("datasets")

import repro  # noqa: E402
import source_tasks  # noqa: E402
from bits import assert_same_run  # noqa: E402
from conftest import flags_of, quiet  # noqa: E402
from repro import Config, ReproError, Splits  # noqa: E402
from repro.data import source as repro_source  # noqa: E402
from repro.data import splits as splits_lib  # noqa: E402

TESTS = Path(__file__).resolve().parent
BIN = TESTS.parent / "bin"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(TESTS))
FORMS = ("grain", "hf", "hf_disk")
MICRO_STEPS = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("grain_hf")


@pytest.fixture(scope="module")
def saved(root) -> str:
  """The train split saved as a Hugging Face dataset (before its map), for form hf_disk."""
  directory = root / "saved"
  source_tasks.save_hf(source_tasks.regression_splits()[0], str(directory))
  return str(directory)


@pytest.fixture(scope="module")
def config(root, saved):
  """config(form, run name, **overrides) -> a 32-step run of Fed on `form`."""

  def make(form: str, run: str, **overrides) -> Config:
    values = dict(seed=0, epochs=2, batch_size=16, output=str(root / run), checkpoint_every=10,
                  chunk_steps=8, progress=False, task="source_tasks:Fed",
                  task_options={"form": form, **({"saved": saved} if form == "hf_disk" else {})})
    values.update(overrides)
    return Config(**values)

  return make


@pytest.fixture(scope="module")
def runs(config):
  """The arrays on the device path (the reference), and each form fed from the host."""
  done = {"arrays": quiet(config("arrays", "arrays"))}
  for form in FORMS:
    done[form] = quiet(config(form, form, data_path="host"))
  return done


def manifest(run) -> dict:
  step = max(int(p.name) for p in Path(run).iterdir() if p.name.isdigit())
  return json.loads((Path(run) / str(step) / "manifest" / "metadata").read_text())


@pytest.mark.parametrize("form", FORMS)
def test_fed_from_the_host_each_gives_the_bits_of_the_same_data_as_arrays(form, runs):
  assert_same_run(runs["arrays"].output, runs[form].output)
  assert runs[form].test == runs["arrays"].test
  data = manifest(runs[form].output)["data"]
  assert data["path"] == "host" and data["features"] == {"x": "float32[2]", "y": "float32[2]"}
  train = data["splits"]["train"]
  assert train["reader"].startswith("grain " if form == "grain" else "datasets ")
  if form == "grain":  # the pipeline, outermost first; never Grain's repr (an address)
    assert train["pipeline"][0].startswith("MapMapDataset(transform=doubled")
    assert not any(" at 0x" in step for step in train["pipeline"])
  else:
    assert "Dataset._fingerprint" in train["rule"] and train["hf_fingerprint"]
    assert bool(train["cache_files"]) == (form == "hf_disk")


@pytest.mark.parametrize("form", ["grain", "hf"])
def test_read_on_the_device_and_run_again_the_same_bits(form, runs, config):
  again = quiet(config(form, f"{form}-device", data_path="device"))
  assert again.digest == runs[form].digest
  assert_same_run(runs[form].output, again.output)


def test_the_fingerprint_is_the_contents_not_the_object(runs):
  """Each form's train fingerprint follows the rule (the arrays' is every byte); the same
  pipeline built twice gives one fingerprint, another map another."""
  train, _ = source_tasks.regression_splits()
  first = repro_source.Grain(source_tasks.grain_split(train)).fingerprint()
  assert repro_source.Grain(source_tasks.grain_split(train)).fingerprint() == first
  assert manifest(runs["grain"].output)["identity"]["data_fingerprint"]["train"] == first
  other = source_tasks.grain_split(train).map(source_tasks.doubled)
  assert repro_source.Grain(other).fingerprint() != first
  hf = repro_source.HuggingFace(source_tasks.hf_split(train))
  assert hf.fingerprint() != first  # the Hugging Face fingerprint joins the content's


def train_with_fault(config: Config, fault: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(TESTS / "faulty_train.py"), *flags_of(config)],
                        env={**ENV, "REPRO_TEST_FAULT": fault}, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize("form", ["grain", "hf_disk"])
def test_stopped_killed_and_resumed_gives_the_straight_runs_bits(form, runs, config):
  interrupted = config(form, f"{form}-killed", data_path="host")
  assert quiet(interrupted.replace(max_steps=3)).step == 3
  killed = train_with_fault(interrupted, "kill_after_chunk:20")  # bin/train, killed at 20
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  resumed = quiet(interrupted.replace(chunk_steps=5))  # chunks of another length: the same
  assert resumed.resumed_from in (10, 20) and resumed.step == runs[form].step
  assert_same_run(runs[form].output, resumed.output)


def run_on_devices(configs: list, devices: int, directory: Path) -> None:
  """The Configs one after another in one process of `devices` forced CPU devices."""
  listing = directory / "configs.json"
  listing.write_text(json.dumps([c.to_dict() for c in configs]))
  environment = {**ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  done = subprocess.run([sys.executable, str(TESTS / "run_configs.py"), str(listing)],
                        env=environment, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def micro_shard_runs(config, tmp_path_factory):
  """Grain and Hugging Face fed from the host with --micro_shards=4: on 1 device in one
  process, on 2 and 4 of 4 forced devices in another (the arrays on the device path too)."""
  made = {(form, d): config(form, f"{form}-micro{d}", micro_shards=4, devices=d,
                            max_steps=MICRO_STEPS, data_path="device" if form == "arrays"
                            else "host")
          for form in ("grain", "hf") for d in (1, 2, 4)}
  made[("arrays", 4)] = config("arrays", "arrays-micro4", micro_shards=4, devices=4,
                               max_steps=MICRO_STEPS)
  for devices, wanted in ((1, (1,)), (4, (2, 4))):
    run_on_devices([c for (_, d), c in made.items() if d in wanted], devices,
                   tmp_path_factory.mktemp(f"micro{devices}"))
  return {key: Path(c.output) for key, c in made.items()}


@pytest.mark.parametrize("form", ["grain", "hf"])
def test_micro_shards_give_the_same_bits_on_1_2_and_4_devices(form, micro_shard_runs):
  for devices in (2, 4):
    assert_same_run(micro_shard_runs[(form, 1)], micro_shard_runs[(form, devices)])
  assert_same_run(micro_shard_runs[("arrays", 4)], micro_shard_runs[(form, 4)])


# bin/check on the Grain task fed from the host: the same run twice and resumed midway,
# each in fresh processes. Its other rows are this file's tests (another chunk length: the
# resumes above; micro-shards on 1, 2 and 4 devices) or tests/test_check.py's (XLA:CPU's
# pool, a second run in one process), which the data cannot change.
CHECK_PAIRS = ("again", "resumed")


def test_bin_check_finds_every_pair_equal_on_a_grain_task(config):
  from repro.proof import checker
  report = repro.check(config("grain", "unused", data_path="host"), steps=6, pairs=CHECK_PAIRS,
                       log=lambda _: None)
  text = checker.format_report(report)
  assert report.exit_code == 0, text
  ran = [r for r in report.rows if not r.skipped]
  assert len(ran) == len(CHECK_PAIRS) and all(r.equal for r in ran), text


@pytest.mark.parametrize("form", FORMS)
def test_evaluate_and_load_read_the_data_through_the_same_source(form, runs):
  run = runs[form]
  assert repro.evaluate(run.output).metrics == run.test
  assert (repro.evaluate(run.output, split="train").metrics ==
          repro.evaluate(runs["arrays"].output, split="train").metrics)
  trained = repro.load(run.output)
  test = splits_lib.prepare(trained.task.data(), "fed", 0, 16).test
  assert isinstance(test, repro_source.Grain if form == "grain" else repro_source.HuggingFace)
  x = test.gather(np.arange(len(test)))["x"]
  reference = repro.load(runs["arrays"].output)
  assert np.asarray(trained.model(x)).tobytes() == np.asarray(
      reference.model(reference.task.data().test["x"])).tobytes()


def test_bin_eval_reads_a_grain_split(runs):
  done = subprocess.run([sys.executable, str(BIN / "eval"), runs["grain"].output, "--json"],
                        env=ENV, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  found = json.loads(done.stdout)
  assert found["metrics"] == {k: float(v) for k, v in runs["grain"].test.items()}


@pytest.mark.parametrize("form", ["grain", "hf"])
def test_a_fine_tune_reads_the_source_with_the_arrays_bits(form, runs, config):
  tuned = {f: quiet(config(f, f"{f}-tuned", init_from=runs["arrays"].output, epochs=1,
                           data_path="host" if f != "arrays" else "device"))
           for f in ("arrays", form)}
  assert_same_run(tuned["arrays"].output, tuned[form].output)


def test_replay_reads_the_grain_split(runs):
  run = Path(runs["grain"].output)
  kept = min(int(p.name) for p in run.iterdir() if p.name.isdigit())
  found = repro.replay(run, kept + 1, log=lambda _: None)  # one step from a checkpoint
  assert found.equal and found.start == kept and len(found.indices) == 16


def test_a_resume_on_other_hugging_face_data_is_refused(config, tmp_path):
  directory = tmp_path / "saved"
  train, _ = source_tasks.regression_splits()
  source_tasks.save_hf(train, str(directory))
  first = config("hf_disk", "x", output=str(tmp_path / "run"), max_steps=3,
                 task_options={"form": "hf_disk", "saved": str(directory)})
  quiet(first)
  source_tasks.save_hf({"x": train["x"], "y": train["y"] + np.float32(1)}, str(directory))
  with pytest.raises(ReproError, match=r"data_fingerprint"):
    quiet(first.replace(max_steps=6))


def test_a_cache_file_that_changes_mid_run_stops_the_run(config, tmp_path, saved):
  import shutil
  directory = tmp_path / "saved"
  shutil.copytree(saved, directory)
  files = sorted(directory.glob("*.arrow"))

  class Touch(repro.Hook):  # another program rewrites a cache file mid-run
    def at_boundary(self, info):
      if info.step == 8:
        os.utime(files[0], ns=(0, 0))

  run = config("hf_disk", "x", output=str(tmp_path / "run"), data_path="host",
               task_options={"form": "hf_disk", "saved": str(directory)})
  with pytest.raises(ReproError, match=r"data file .*\.arrow changed while the run read it"):
    quiet(run, hooks=[Touch()])
  assert not (Path(run.output) / "16").exists()


# What cannot be read is refused in one line, with the fix.
def _pipeline():
  return source_tasks.grain_split(source_tasks.regression_splits()[0])


def _hf(**columns):
  return datasets.Dataset.from_dict(columns)


REFUSED = {
    "shuffle": (lambda: _pipeline().shuffle(), r"has a shuffle\(\): leave shuffling and "
                                               r"batching to repro"),
    "batch": (lambda: _pipeline().batch(4), r"has a batch\(\): leave shuffling and batching"),
    "repeat": (lambda: _pipeline().repeat(), r"has no end \(repeat\(\) without a count\)"),
    "filter": (lambda: _pipeline().filter(lambda e: True), r"has a filter\(\), which leaves "
                                                          r"holes"),
    "iter": (lambda: _pipeline().to_iter_dataset(), r"is a Grain IterDataset, not a Grain "
                                                    r"MapDataset"),
    "tuple": (lambda: _pipeline().map(lambda e: (e["x"], e["y"])),
              r"element 0 of the train split is a tuple, whose parts have no names"),
    "text": (lambda: _pipeline().map(lambda e: {**e, "s": "abc"}),
             r"feature 's' of element 0 of the train split is not a numeric array"),
    "ragged": (lambda: _hf(t=[[1] * (i % 3 + 1) for i in range(20)]),
               r"column 't' of the train split has variable length \(1 to 3\): pad it"),
    "strings": (lambda: _hf(s=["a"] * 20), r"column 's' of the train split holds text"),
    "missing": (lambda: _hf(v=[1.0, None] * 10), r"column 'v' of the train split has 1"),
    "dict": (lambda: datasets.DatasetDict({"train": _hf(v=[1.0] * 20)}),
             r"is a Hugging Face DatasetDict of the splits \['train'\]: give one of them"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cannot_be_read_is_refused_in_one_line_with_the_fix(case):
  make, message = REFUSED[case]
  with pytest.raises(ReproError, match=message) as refused:
    splits_lib.prepare(Splits(train=make()), "fed", 0, 4)
  assert "\n" not in str(refused.value) and str(refused.value).startswith("task fed: ")


class Ragged(repro.Task):
  """A Hugging Face split repro refuses (a column of variable length)."""

  name = "ragged"

  def model(self, rngs):
    from flax import nnx
    return nnx.Linear(1, 1, rngs=rngs)

  def loss(self, model, batch):
    return model(batch["t"]).mean()

  def data(self):
    return Splits(train=_hf(t=[[1.0] * (i % 3 + 1) for i in range(20)]))


def test_a_run_without_progress_turns_hugging_faces_bars_off(monkeypatch, tmp_path):
  """--noprogress: nothing on stderr but repro's line (a first build's "Generating train
  split" and "Map" bars came before it)."""
  monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
  datasets.enable_progress_bars()
  try:
    with pytest.raises(ReproError, match="variable length"):
      quiet(Config(progress=False, batch_size=4, output=str(tmp_path / "r")), task=Ragged())
    assert datasets.are_progress_bars_disabled()
    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"  # for a later import too
  finally:
    datasets.enable_progress_bars()


def test_an_element_unlike_element_0_or_none_is_one_line_where_it_is_read():
  train = _pipeline()
  odd = repro_source.Grain(train.map(lambda e: {**e, "x": e["x"][:1]} if e["y"][0] > 1.5
                                     else e))
  bad = next(i for i in range(len(train)) if train[i]["y"][0] > 1.5)
  with pytest.raises(ReproError, match=rf"feature 'x' of element {bad} of the Grain dataset is "
                                       rf"float32\[1\], of element 0 float32\[2\]"):
    odd.gather(np.arange(len(odd)))
  holes = repro_source.Grain(grain.MapDataset.range(8).map(
      lambda i: None if i == 5 else {"i": np.int32(i)}))
  with pytest.raises(ReproError, match=r"element 5 of the Grain dataset is None"):
    holes.gather(np.array([4, 5]))


def test_a_random_map_draws_the_same_for_an_example_every_time():
  """Grain's random_map draws by the example's index from its own seed: each epoch, which
  reads the same index again, sees the same draw (docs: use Task.augment for new draws)."""
  noisy = repro_source.Grain(_pipeline().random_map(
      lambda e, rng: {**e, "x": e["x"] + rng.normal(size=2).astype(np.float32)}))
  first, again = noisy.gather(np.array([3, 9])), noisy.gather(np.array([9, 3]))
  assert first["x"][0].tobytes() == again["x"][1].tobytes()
  assert first["x"][0].tobytes() != _pipeline()[3]["x"].tobytes()


def test_a_refusal_through_bin_train_is_one_line_and_exit_2(config):
  run = config("grain", "broken", task_options={"form": "grain", "broken": "shuffle"})
  done = subprocess.run([sys.executable, str(BIN / "train"), *flags_of(run)], env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "leave shuffling and batching to repro" in lines[0], done.stderr


def test_repro_works_without_the_extras_and_names_them_when_needed():
  code = """
import sys
import numpy as np, repro
print(sorted({"grain", "datasets"} & set(sys.modules)))  # import repro imports neither
sys.modules["grain"] = sys.modules["datasets"] = None  # as if neither were installed
from repro.data import splits
splits.prepare(repro.Splits(train={"x": np.zeros((4, 2), np.float32)}), "t", 0, 2)
for make in (repro.source.Grain, repro.source.HuggingFace):
  try:
    make(object())
  except repro.ReproError as err:
    print(err)
"""
  done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.strip().splitlines()
  assert lines[0] == "[]", lines
  assert "pip install 'repro[grain]'" in lines[1] and "pip install 'repro[hf]'" in lines[2]


def test_hugging_face_columns_keep_their_dtypes_whichever_reader_reads_them():
  """Numbers and nested lists of numbers are read straight from Arrow, other features
  (Array2D here) by the numpy format: each column in its own dtype, row for row."""
  columns = {"x": np.arange(60, dtype=np.float64).reshape(5, 3, 4) / 7,
             "flag": np.array([True, False, True, True, False]),
             "pixel": np.arange(5, dtype=np.uint8), "label": np.arange(5, dtype=np.int32),
             "grid": np.arange(30, dtype=np.float32).reshape(5, 2, 3)}
  features = datasets.Features({
      "x": datasets.List(datasets.List(datasets.Value("float64"))),
      "flag": datasets.Value("bool"), "pixel": datasets.Value("uint8"),
      "label": datasets.Value("int32"), "grid": datasets.Array2D((2, 3), "float32")})
  source = repro_source.HuggingFace(datasets.Dataset.from_dict(columns, features=features))
  assert sorted(source._plain) == ["flag", "label", "pixel", "x"]
  assert {k: (d, s) for k, (d, s) in source.features().items()} == {
      k: (v.dtype, v.shape[1:]) for k, v in columns.items()}
  rows = np.array([4, 1, 1, 0])
  got = source.gather(rows)
  for name, value in columns.items():
    assert got[name].dtype == value.dtype and got[name].tobytes() == value[rows].tobytes()
