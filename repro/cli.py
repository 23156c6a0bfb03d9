"""The absl faces of repro: flags -> Config -> run(), errors -> one line and exit 2."""

from __future__ import annotations

import sys

from absl import flags, logging

from repro.config import DATASETS, Config
from repro.errors import ReproError
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
                      "Default: runs/seed<seed>-<digest of seed, batch, lr, dataset>.")
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


def parse_flags_or_exit(argv: list[str], positional: int = 0) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr and exit code 2.

  `positional` is how many arguments besides flags the binary takes.
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
  if positional == 0 and len(rest) > 1:
    print(f"error: unexpected argument(s) {' '.join(rest[1:])}: every setting is a "
          f"--flag (see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if positional and len(rest) - 1 != positional:
    print(f"error: expected {positional} arguments, got {len(rest) - 1} "
          f"(see --helpfull)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  return rest


def config_from_flags() -> Config:
  return Config(**{name: FLAGS[name].value for name in (
      "seed", "epochs", "batch_size", "learning_rate", "dataset", "data_dir", "tfds_dir",
      "output", "checkpoint_every", "max_to_keep", "max_steps", "chunk_steps", "progress",
      "strict")})


def train_main(argv: list[str]) -> int:
  del argv
  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO; -v 0 shows it
    logging.set_verbosity(logging.WARNING)
  from repro.run import run  # imports jax: after the flags are known to be good
  try:
    result = run(config_from_flags().validate())
  except ReproError as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT
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


def verify_main(argv: list[str]) -> int:
  """bin/verify RUN_A RUN_B: 0 bitwise identical, 1 different, 2 bad input."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from repro import verify
  try:
    comparison = verify.compare(argv[1], argv[2])
  except ReproError as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(verify.report(comparison))
  return 0 if comparison.identical else 1
