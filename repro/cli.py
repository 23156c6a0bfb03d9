"""The absl faces of repro: flags -> Config -> run(), errors -> one line and exit 2."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

from absl import flags, logging

from repro.config import DATASETS, MONITORS, SCHEDULES, Config
from repro.errors import PeerLost, ReproError
from repro.stop import EXIT_STOPPED

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2


def define_train_flags() -> None:
  d = Config()
  flags.DEFINE_integer("seed", d.seed, "The one seed of every random stream.")
  flags.DEFINE_integer("epochs", d.epochs, "Epochs to train; may be raised on resume.")
  flags.DEFINE_integer("batch_size", d.batch_size, "Examples per step.")
  flags.DEFINE_float("learning_rate", d.learning_rate, "Adam learning rate.")
  flags.DEFINE_string("dataset", d.dataset, f"One of {', '.join(DATASETS)}.")
  flags.DEFINE_string("data_dir", None,
                      "Directory of the four IDX files (plain or .gz). Default: "
                      "/usr/share/datasets/fashion-mnist for fashion_mnist.")
  flags.DEFINE_string("tfds_dir", None, "TFDS data directory for the prepared copy. "
                      "Default: $TFDS_DATA_DIR or ~/tensorflow_datasets.")
  flags.DEFINE_string("output", None, "Run directory; resumed if it holds checkpoints. "
                      "Default: runs/seed<seed>-<digest of the settings that decide the bits>.")
  flags.DEFINE_integer("checkpoint_every", d.checkpoint_every,
                       "Save a checkpoint every N global steps (and at the end).")
  flags.DEFINE_integer("max_to_keep", d.max_to_keep, "Checkpoints to keep (>= 1).")
  flags.DEFINE_integer("max_steps", None,
                       "Stop after this global step, with a checkpoint there.")
  flags.DEFINE_integer("chunk_steps", d.chunk_steps,
                       "Steps per compiled scan chunk (speed only; never the bits).")
  flags.DEFINE_boolean("progress", d.progress, "Show a progress bar.")
  flags.DEFINE_boolean("strict", d.strict, "Refuse to resume a checkpoint written with "
                       "other package versions or on another platform (default: warn).")
  flags.DEFINE_integer("validation_examples", d.validation_examples,
                       "Hold out the last N training examples as a static validation set.")
  flags.DEFINE_integer("eval_every", d.eval_every, "Also evaluate every N steps (validation "
                       "is evaluated at each epoch end anyway).")
  flags.DEFINE_enum("monitor", d.monitor, list(MONITORS),
                    "What early stopping, plateau and the kept best checkpoint look at.")
  flags.DEFINE_integer("patience", d.patience,
                       "Stop after N evaluations without improvement (0: never).")
  flags.DEFINE_enum("schedule", d.schedule, list(SCHEDULES), "Learning-rate schedule.")
  flags.DEFINE_integer("warmup_steps", d.warmup_steps, "Warmup steps of warmup_cosine.")
  flags.DEFINE_integer("plateau_patience", d.plateau_patience,
                       "Evaluations without improvement before plateau decays the rate.")
  flags.DEFINE_float("plateau_factor", d.plateau_factor, "Plateau decay factor.")
  flags.DEFINE_float("dropout", d.dropout, "Dropout rate after the 256-unit layer.")
  flags.DEFINE_integer("devices", d.devices, "Train data-parallel on the first N devices "
                       "(0: all, of every process). CPU: XLA_FLAGS="
                       "--xla_force_host_platform_device_count=N makes N.")
  flags.DEFINE_integer("micro_shards", d.micro_shards, "0: the bits follow the device count. "
                       "M: topology-invariant mode, the same bits on every device count "
                       "dividing M (the batch is cut into M micro-shards summed in one order).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a multi-process "
                      "run (jax.distributed); default $JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_string("config", None, "A JSON config (as written to <output>/config.json); "
                      "flags given explicitly override it.")


def parse_flags_or_exit(argv: list[str], positional: int = 0) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr and exit code 2.

  `positional` is how many arguments besides flags the binary takes (-1: one
  or more).
  """
  try:
    rest = FLAGS(argv)
  except SystemExit as stop:  # absl exits 1 after --help/--helpfull: asked for, so 0
    asked = any(a.lstrip("-").split("=")[0] in ("help", "helpfull", "helpshort", "helpxml", "h", "?")
                for a in argv[1:])
    sys.exit(0 if asked and stop.code == 1 else stop.code)
  except flags.Error as err:
    print(f"error: {err} (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if positional == -1 and len(rest) < 2:
    print("error: expected at least one argument (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if positional == 0 and len(rest) > 1:
    print(f"error: unexpected argument(s) {' '.join(rest[1:])}: every setting is a "
          f"--flag (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if positional > 0 and len(rest) - 1 != positional:
    print(f"error: expected {positional} arguments, got {len(rest) - 1} "
          f"(see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  return rest


def config_from_flags() -> Config:
  """--config's JSON (or the defaults), overridden by the flags given explicitly."""
  names = [f.name for f in dataclasses.fields(Config)]
  base = Config()
  if FLAGS.config:
    path = Path(FLAGS.config).expanduser()
    try:
      values = json.loads(path.read_text())
    except OSError as err:
      raise ReproError(f"cannot read --config {path} ({err.strerror}): pass a JSON file") from None
    except json.JSONDecodeError as err:
      raise ReproError(f"--config {path} is not valid JSON ({err.msg} at line {err.lineno}): "
                       f"fix the file") from None
    if not isinstance(values, dict):
      raise ReproError(f"--config {path} must hold a JSON object of config fields")
    base = Config.from_dict(values)
  return base.replace(**{name: FLAGS[name].value for name in names if FLAGS[name].present})


def _drop_stdout() -> None:
  """Points stdout at /dev/null, so that a closed pipe raises no error at exit."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _one_line_errors(main):
  """A binary's main: quiet absl logging, and a ReproError becomes one line and exit 2."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> int:
    if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO; -v 0 shows it
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except ReproError as err:
      print(f"error: {err}", file=sys.stderr)
      return EXIT_BAD_INPUT
    except BrokenPipeError:  # `bin/train | head`: the reader has all it wanted
      _drop_stdout()
      return 0

  return wrapped


@_one_line_errors
def train_main(argv: list[str]) -> int:
  del argv
  config = config_from_flags().validate()
  from repro import parallel  # imports jax: after the flags are known to be good
  if (FLAGS.coordinator_address or FLAGS.num_processes is not None
      or FLAGS.process_id is not None or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from repro.run import run
  try:
    result = run(config)
  except PeerLost as err:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_STOPPED)  # jax.distributed's exit barrier would wait for the dead process
  if not parallel.is_primary():
    return EXIT_STOPPED if result.stopped_by else 0
  if result.stopped_by:
    print(f"stopped: {result.stopped_by} at step {result.step}; checkpoint "
          f"{result.checkpoint or 'none (nothing trained yet)'}; rerun the same command to resume")
    return EXIT_STOPPED
  if not result.already_complete:
    print(f"done: step {result.step}, loss {result.loss:.4f}, test accuracy "
          f"{result.test_accuracy:.4f}; checkpoint {result.checkpoint}")
  else:
    print(f"done: step {result.step} (already complete), test accuracy "
          f"{result.test_accuracy:.4f}; checkpoint {result.checkpoint}")
  return 0


@_one_line_errors
def verify_main(argv: list[str]) -> int:
  """bin/verify RUN_A RUN_B: 0 bitwise identical, 1 different, 2 bad input."""
  from repro import verify
  comparison = verify.compare(argv[1], argv[2])
  try:
    print(verify.report(comparison), flush=True)
  except BrokenPipeError:  # `bin/verify A B | head`: the verdict still goes in the exit code
    _drop_stdout()
  return 0 if comparison.identical else 1


def define_plot_flags() -> None:
  flags.DEFINE_string("out", "plot.png", "Where to write the PNG.")


@_one_line_errors
def plot_main(argv: list[str]) -> int:
  """bin/plot RUN [RUN ...] --out=plot.png: loss and accuracy curves, overlaid."""
  from repro import plot
  print(f"wrote {plot.plot(argv[1:], FLAGS.out)}")
  return 0
