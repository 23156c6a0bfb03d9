"""Config validation, the shuffler and the key streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repro import Config, ReproError
from repro.train import rng
from repro.data import shuffle

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be >= 1"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("checkpoint_every", -1, "checkpoint_every must be >= 1"),
    ("max_to_keep", 0, "max_to_keep must be >= 1"),
    ("max_steps", 0, "max_steps must be >= 1"),
    ("chunk_steps", 0, "chunk_steps must be >= 1"),
    ("seed", -1, "seed must be >= 0"),
    ("seed", 2**32, "seed must be < 2\\*\\*32"),
    ("epochs", 2.5, "epochs must be an integer"),
    ("learning_rate", 0.0, "learning_rate must be a positive finite number"),
    ("learning_rate", float("nan"), "learning_rate must be a positive finite number"),
    ("schedule", "linear", "unknown schedule 'linear'"),
    ("monitor", "accuracy", "must name a validation metric"),
])
def test_bad_config_values_are_named(field, value, message):
  with pytest.raises(ReproError, match=message):
    Config(**{field: value}).validate()


def test_config_round_trips_through_json_and_refuses_unknown_fields():
  import json
  config = Config(seed=3, epochs=5, learning_rate=0.01, output="x")
  assert Config.from_dict(json.loads(config.to_json())) == config
  with pytest.raises(ReproError, match="unknown config field.*colour"):
    Config.from_dict({"colour": "red"})


def test_default_output_depends_on_the_bit_fields_only():
  from repro.train import identity
  from repro.tasks.cnn import CNN
  name = lambda config, task=CNN(): identity.default_output(config, task)
  base = Config(seed=0)
  assert name(base).startswith("runs/seed0-")
  assert name(base) == name(Config(seed=0, epochs=9, checkpoint_every=3))
  assert name(base) == name(base, CNN(data_dir="/elsewhere"))  # where the files are: no bits
  assert name(base) != name(Config(seed=0, learning_rate=0.01))
  assert name(base) != name(Config(seed=1))
  assert name(base) != name(base, CNN(dropout=0.5))
  # The name of every run from before tasks existed is kept for the scan program (the digest
  # of the same fields); the per-step program, which gives other bits, gets a name of its own.
  legacy = "runs/seed0-" + _legacy_digest(dataset="fashion_mnist", dropout=0.0)
  assert name(base.replace(program="scan")) == legacy != name(base.replace(program="step"))


def _legacy_digest(**fields) -> str:
  import hashlib
  import json
  old = dict(seed=0, batch_size=64, learning_rate=1e-3, validation_examples=0,
             schedule="constant", warmup_steps=0, **fields)
  return hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:8]


def test_configs_from_before_tasks_load_with_their_data_settings_as_task_options():
  old = {"seed": 3, "dataset": "mnist", "data_dir": "/d", "tfds_dir": "/t", "dropout": 0.2}
  config = Config.from_dict(old)
  assert config.seed == 3 and config.task == "repro.tasks.cnn:CNN"
  assert config.task_options == {"dataset": "mnist", "data_dir": "/d", "tfds_dir": "/t",
                                 "dropout": 0.2}
  with pytest.raises(ReproError, match="options of the default task"):
    Config.from_dict({**old, "task": "my.task:T"})


def test_key_streams_are_distinct_and_seeded():
  a, b = rng.streams(0), rng.streams(1)
  data = {k: jax.random.key_data(v).tobytes() for k, v in a.items()}
  assert len(set(data.values())) == len(rng.STREAMS) == 4
  assert all(jax.random.key_data(a[k]).tobytes() != jax.random.key_data(b[k]).tobytes()
             for k in a)


def test_every_epoch_visits_each_example_once_in_its_own_order():
  key = rng.streams(0)["shuffle"]
  n, batch = 50, 8  # 6 steps per epoch, 2 examples dropped each epoch
  orders = []
  for epoch in range(3):
    seen = np.concatenate([np.asarray(shuffle.batch_indices(key, epoch * 6 + s, n, batch))
                           for s in range(6)])
    assert len(seen) == 48 and len(set(seen.tolist())) == 48
    orders.append(seen.tolist())
  assert orders[0] != orders[1] != orders[2]


@pytest.mark.parametrize("chunk_steps", [1, 5, 6, 13])
def test_chunk_permutations_give_the_same_batches_as_the_step_alone(chunk_steps):
  key = rng.streams(7)["shuffle"]
  n, batch = 50, 8
  for first in (0, 4, 11, 17):
    first_epoch, perms = shuffle.chunk_permutations(key, jnp.int32(first), chunk_steps, n, batch)
    for i in range(chunk_steps):
      got = shuffle.batch_from_permutations(first_epoch, perms, jnp.int32(first + i), n, batch)
      want = shuffle.batch_indices(key, jnp.int32(first + i), n, batch)
      assert np.array_equal(np.asarray(got), np.asarray(want)), (first, i)


def test_chunks_of_any_start_and_length_share_one_compiled_program():
  from repro.train import core
  from repro.train import state as state_lib
  from repro.tasks.cnn import CNN
  keys = rng.streams(0)
  built = state_lib.build(CNN(), Config(), keys, 100, mesh=None)
  data = {"image": jnp.zeros((40, 28, 28, 1), jnp.uint8), "label": jnp.zeros((40,), jnp.int32)}
  chunk = core.make_train_chunk(built.graphdef, CNN(), chunk_steps=4, num_examples=40,
                                 batch_size=8)
  state = built.state
  for first, length in ((0, 4), (4, 1), (5, 3), (8, 4), (12, 2)):
    state, trace = chunk(state, data, keys, np.int32(first), np.int32(length))
  assert chunk.cache_size() == 1  # a recompile per chunk would be a silent slowdown
  assert trace["loss"].shape == (4,)
