"""Shared fixtures and helpers: a tiny synthetic IDX dataset and small, fast Configs."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# One compilation cache for the whole suite, every program in it however small, fresh for
# each pytest invocation (as on CI) and shared by its workers and every process they start
# (the variables are inherited; JAX reads them at import, and repro then keeps them).
# Measured on a tiny bin/train run: 7.8 s compiling everything, 4.6 s with repro's default
# cache (programs over 0.5 s), 3.7 s with every program cached. A cache hit is the same
# executable: it changes no bit (tests/test_cli.py). Tests of another machine's bits compile
# in a cache of their own (test_tasks.MACHINES; bin/check's CPU rows do by themselves).
_SUITE_CACHE = "REPRO_TEST_SUITE_CACHE"
_MADE_CACHE = _SUITE_CACHE not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _MADE_CACHE:
  os.environ[_SUITE_CACHE] = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="repro-suite-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  # A size limit makes JAX lock the cache while it writes (its LRU cache): processes that
  # write it at once never read a half-written entry.
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(2**40)


def pytest_unconfigure(config):
  if _MADE_CACHE:
    shutil.rmtree(os.environ[_SUITE_CACHE], ignore_errors=True)

from repro.machine import environment  # noqa: E402

environment.defer_collection()  # as bin/train does, until JAX, Flax and Orbax are imported
import idx_data  # noqa: E402
from repro import Config, run  # noqa: E402

environment.settle_imports()

N_TRAIN = 256
BATCH = 16
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 16
TRAIN = Path(__file__).resolve().parent.parent / "bin" / "train"


def small_config(root: Path, name: str, idx_dir: Path, tfds_dir: Path, options: dict | None = None,
                 **overrides) -> Config:
  """A 2-epoch, 32-step run of the reference task on the tiny data, writing root/name.

  options: task options beside the data location (e.g. {"dropout": 0.5}).
  """
  values = dict(seed=0, epochs=2, batch_size=BATCH, learning_rate=1e-3, output=str(root / name),
                checkpoint_every=10, chunk_steps=8, progress=False,
                task_options={"data_dir": str(idx_dir), "tfds_dir": str(tfds_dir),
                              **(options or {})})
  values.update(overrides)
  return Config(**values)


def quiet(config: Config, messages: list | None = None, **kwargs):
  """run() with its log lines collected in `messages` (or dropped)."""
  return run(config, log=(messages.append if messages is not None else (lambda _: None)),
             **kwargs)


def flags_of(config: Config) -> list[str]:
  """The bin/train command line of `config`."""
  flags = [f"--task={config.task}"]  # before its --task.x options (ml_collections' rule)
  flags += [f"--{k}={v}" for k, v in config.to_dict().items()
            if v is not None and k not in ("progress", "strict", "task", "task_options")]
  flags += [f"--task.{k}={v}" for k, v in config.task_options.items() if v is not None]
  return flags + ["--noprogress"]


def data_flags(idx_dir: Path, tfds_dir: Path) -> list[str]:
  """bin/train flags of the small run's data and shape (as small_config)."""
  return [f"--task.data_dir={idx_dir}", f"--task.tfds_dir={tfds_dir}", f"--batch_size={BATCH}",
          "--epochs=2", "--checkpoint_every=10", "--chunk_steps=8"]


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
  return idx_data.write_dataset(tmp_path_factory.mktemp("idx"), n_train=N_TRAIN, n_test=64)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture
def small(idx_dir, tfds_dir, tmp_path):
  """small(name, options=None, **overrides) -> Config of a 32-step run writing to tmp_path/name."""

  def make(name: str = "run", options: dict | None = None, **overrides) -> Config:
    return small_config(tmp_path, name, idx_dir, tfds_dir, options, **overrides)

  return make
