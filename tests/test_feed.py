"""Data larger than device memory: sources read by index, host-fed chunks, the same bits."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bits import assert_bitwise_equal, read_losses, restore_state
from conftest import TRAIN, flags_of, quiet, small_config
from repro import Config, ReproError
from repro.cli import common
from repro.data import datasets as data
from repro.data import source as repro_source
from repro.errors import DataReadError, exit_code_of

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)

TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(TESTS))


@pytest.fixture(scope="module")
def reference(idx_dir, tfds_dir, tmp_path_factory):
  """The reference task on its arrays in memory, device path."""
  return quiet(small_config(tmp_path_factory.mktemp("feed"), "ref", idx_dir, tfds_dir))


@pytest.fixture(scope="module")
def memmaps(idx_dir, tfds_dir, tmp_path_factory) -> dict:
  """The training split as two .npy files, and the task options reading them."""
  loaded = data.load("fashion_mnist", str(idx_dir), str(tfds_dir), log=lambda _: None)
  root = tmp_path_factory.mktemp("memmaps")
  np.save(root / "images.npy", loaded.train_images)
  np.save(root / "labels.npy", loaded.train_labels)
  return {"images": str(root / "images.npy"), "labels": str(root / "labels.npy")}


def memmap_config(tmp_path, idx_dir, tfds_dir, memmaps, **overrides) -> Config:
  return small_config(tmp_path, "mm", idx_dir, tfds_dir, memmaps,
                      task="source_tasks:MemmapCNN", **overrides)


def test_a_memmap_source_over_the_budget_is_fed_from_the_host_with_the_same_bits(
    reference, memmaps, idx_dir, tfds_dir, tmp_path):
  sys.path.insert(0, str(TESTS))
  result = quiet(memmap_config(tmp_path, idx_dir, tfds_dir, memmaps, data_budget_mb=0))
  assert_bitwise_equal(restore_state(reference.checkpoint), restore_state(result.checkpoint))
  assert read_losses(result.output) == read_losses(reference.output)
  manifest = json.loads((Path(result.checkpoint) / "manifest" / "metadata").read_text())
  assert manifest["data"]["path"] == "host"
  assert "positions i * n // 64" in manifest["data"]["splits"]["train"]["rule"]
  assert json.loads((Path(result.output) / "config.json").read_text())["data_path"] == "host"


def test_a_prepared_tfds_directory_read_by_index_gives_the_same_bits(reference, idx_dir,
                                                                     tfds_dir, tmp_path):
  sys.path.insert(0, str(TESTS))
  data.load("fashion_mnist", str(idx_dir), str(tfds_dir), log=lambda _: None)
  prepared = next(Path(tfds_dir).glob("repro_fashion_mnist/idx_*/1.0.0"))
  config = small_config(tmp_path, "tfds", idx_dir, tfds_dir, {"prepared": str(prepared)},
                        task="source_tasks:TFDSCNN", data_path="host")
  result = quiet(config)
  assert_bitwise_equal(restore_state(reference.checkpoint), restore_state(result.checkpoint))


def train_cli(config: Config) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(TRAIN), *flags_of(config)], env=ENV,
                        capture_output=True, text=True, timeout=300)


def one_error_line(result) -> str:
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
  return lines[0]


def test_an_index_out_of_range_is_one_line_and_exit_2(memmaps, idx_dir, tfds_dir, tmp_path):
  config = memmap_config(tmp_path, idx_dir, tfds_dir, {**memmaps, "extra_length": 40},
                         data_path="host")
  assert "index out of range reading the data" in one_error_line(train_cli(config))


def test_a_truncated_file_is_one_line_and_exit_2(memmaps, idx_dir, tfds_dir, tmp_path):
  cut = tmp_path / "images.npy"
  cut.write_bytes(Path(memmaps["images"]).read_bytes()[:100_000])
  config = memmap_config(tmp_path, idx_dir, tfds_dir, {**memmaps, "images": str(cut)},
                         data_path="host")
  line = one_error_line(train_cli(config))
  assert "data() failed" in line and "mmap" in line.lower()


def test_a_file_that_changes_while_the_run_reads_it_stops_the_run(memmaps, idx_dir, tfds_dir,
                                                                   tmp_path):
  import shutil
  import repro
  own = {k: str(shutil.copy(v, tmp_path / Path(v).name)) for k, v in memmaps.items()}

  class Overwrite(repro.Hook):  # another program rewrites the file mid-run
    def at_boundary(self, info):
      if info.step == 8:
        Path(own["labels"]).write_bytes(Path(own["labels"]).read_bytes()[::-1])

  config = memmap_config(tmp_path, idx_dir, tfds_dir, own, data_path="host")
  with pytest.raises(ReproError, match=r"data file .*labels.npy changed while the run read it"):
    quiet(config, hooks=[Overwrite()])
  assert not (Path(config.output) / "16").exists()  # nothing trained on the new bytes is saved


def test_each_device_reads_only_its_own_rows_of_every_batch(tmp_path):
  """With 4 devices, the host gathers each device's rows for that device only; so in a
  multi-process run each process reads only the examples of its own micro-shards."""
  code = """
import json, sys, numpy as np, jax
sys.path.insert(0, sys.argv[1])
from repro.data import feed
from repro.machine import parallel
from repro.train import rng
from repro.data import source
calls = []
class Recording(source.Arrays):
  def gather(self, indices):
    calls.append(sorted(int(i) for i in indices))
    return super().gather(indices)
src = Recording({"x": np.arange(64, dtype=np.float32)})
mesh = parallel.make_mesh(4, 4, 8)
f = feed.HostFeed(src, rng.streams(0)["shuffle"], 8, 3, mesh)
batches, idx = f._load(0)
print(json.dumps({"calls": calls, "idx": np.asarray(idx).tolist(),
                  "shards": [s.data.shape for s in batches["x"].addressable_shards]}))
"""
  env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", code, str(TESTS.parent)], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout.strip().splitlines()[-1])
  idx = np.array(report["idx"])  # (3 steps, 8 examples): device d owns columns 2d, 2d + 1
  assert len(report["calls"]) == 4 and report["shards"] == [[3, 2]] * 4
  for d, call in enumerate(report["calls"]):
    assert call == sorted(idx[:, 2 * d:2 * d + 2].ravel().tolist())


def test_npy_task_without_its_files_is_one_line_and_exit_2(tmp_path):
  config = Config(output=str(tmp_path / "npy"), task="repro.tasks.npy:NpyCNN", max_steps=1)
  line = one_error_line(train_cli(config))
  assert "--task.images=IMAGES.npy --task.labels=LABELS.npy" in line


def mapped_kib(path: Path) -> int:
  """Resident KiB of this process's mappings of `path` (from /proc/self/smaps)."""
  total, inside = 0, False
  for line in Path("/proc/self/smaps").read_text().splitlines():
    if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
      inside = line.endswith(str(path))
    elif inside and line.startswith("Rss:"):
      total += int(line.split()[1])
  return total


def test_reading_a_memmap_does_not_keep_its_pages_resident(tmp_path):
  """A memmap read at random keeps every page it touched (and the kernel maps their
  neighbours too): a file larger than memory would fill the process. The source reads
  the rows it needs, and nothing of the file stays resident."""
  path = tmp_path / "big.npy"
  np.save(path, np.arange(16 * 2**20, dtype=np.uint8).reshape(-1, 1024))  # 16 MiB
  mapped = np.load(path, mmap_mode="r")
  for start in range(0, len(mapped), 1024):
    np.asarray(mapped[np.arange(start, start + 1024)])
  assert mapped_kib(path) > 8 * 1024  # the plain memmap keeps what it read
  del mapped
  source = repro_source.Arrays({"x": np.load(path, mmap_mode="r")})
  got = [source.gather(np.arange(start, start + 1024))["x"] for start in range(0, 16384, 1024)]
  assert mapped_kib(path) < 1024
  assert np.array_equal(np.concatenate(got).ravel(), np.arange(16 * 2**20, dtype=np.uint8))


@pytest.mark.parametrize("source", [
    repro_source.Arrays({"x": np.arange(10)}),
    repro_source.Subset(repro_source.Arrays({"x": np.arange(10)}), 2, 6),
])
def test_an_index_outside_a_source_is_one_line(source):
  with pytest.raises(ReproError, match=rf"index {len(source)} is out of range for .* of "
                                       rf"{len(source)} examples"):
    source.gather(np.array([0, len(source)]))
  with pytest.raises(ReproError, match="index -1 is out of range"):
    source.gather(np.array([-1, 0]))
  assert source.gather(np.array([len(source) - 1]))["x"].tolist() == [len(source) - 1 +
                                                                       getattr(source, "start", 0)]


class Failing:
  """A reader whose every read raises `error`: a source's files failing under it."""

  def __init__(self, error: Exception):
    self.error = error

  def __len__(self) -> int:
    return 10

  def __getitems__(self, rows):  # how TFDS's array_record reader is read
    raise self.error

  def __getitem__(self, rows):  # how a Hugging Face dataset's Arrow table is read
    raise self.error


def tfds_reading(error: Exception) -> repro_source.TFDS:
  source = object.__new__(repro_source.TFDS)  # a prepared dataset's reader, failing
  source.name, source.split, source.data = "mnist", "train", Failing(error)
  return source


def hf_reading(error: Exception) -> repro_source.HuggingFace:
  datasets = pytest.importorskip("datasets")
  source = repro_source.HuggingFace(datasets.Dataset.from_dict({"x": [1.0, 2.0]}))
  source._arrow = Failing(error)
  return source


@pytest.mark.parametrize("reading", [tfds_reading, hf_reading])
def test_a_failing_disk_under_a_source_is_exit_74_and_damaged_or_vanished_files_exit_2(
    reading, capsys):
  eio = OSError(errno.EIO, "Input/output error")
  # array_record's own type for it (seen under strace's injected EIO), the OS's words inside
  library_eio = RuntimeError("read() failed: Input/output error; reading /d/x.array_record")
  for error in (eio, library_eio):
    with pytest.raises(DataReadError, match=r"^reading .+ failed \(.*Input/output error.*\): "
                                            r"the file system failed, not the data; rerun once"
                       ) as found:
      reading(error).gather(np.array([0]))
    assert exit_code_of(found.value) == 74
  for error in (FileNotFoundError(errno.ENOENT, "No such file or directory"),
                ValueError("bad record")):  # a library's own error for a damaged file
    with pytest.raises(ReproError, match=rf"^reading .+ failed \({type(error).__name__}: .+\): "
                                         rf"its (cache )?files are damaged or gone"):
      reading(error).gather(np.array([0]))
  # bin/train, bin/eval: the line and exit 74, the run's checkpoints closed as on any error
  assert common.one_line_errors(lambda argv: reading(eio).gather(np.array([0])))([]) == 74
  err = capsys.readouterr().err
  assert err.startswith("error: reading ") and err.count("\n") == 1


@pytest.mark.parametrize("error, kind, line", [
    (OSError(errno.EIO, "Input/output error"), DataReadError,
     "task failing: data() failed reading a file (Input/output error): the file system failed, "
     "not the task; rerun once it is healthy"),
    (ValueError("no such column"), ReproError,
     "task failing: data() failed (ValueError: no such column)"),
])
def test_a_tasks_data_failing_on_the_disk_is_exit_74_and_its_own_errors_exit_2(error, kind, line):
  from repro import task as task_lib

  class Failing(task_lib.Task):
    name = "failing"

    def data(self):
      raise error

  with pytest.raises(kind) as found:
    task_lib.guarded("data()", Failing(), Failing().data)
  assert str(found.value) == line and exit_code_of(found.value) == kind.exit_code
