"""bin/train: flags -> Config -> repro.run, and how the run ended in one line and an exit code."""

from __future__ import annotations

import os

from repro.cli import common
from repro.cli.common import FLAGS
from repro.errors import CheckpointWriteError, PeerLost
from repro.machine import backend, environment
from repro.metrics import TEST
from repro.train.stop import EXIT_STOPPED

@common.one_line_errors
def main(argv: list[str], hooks=()) -> int:
  """bin/train: 0 done, 2 bad input, 75 stopped with a checkpoint (rerun to resume).

  argv: from parse_flags_or_exit, the program name and the --task.<option> arguments.
  hooks: repro.Hooks for the run (tests add fault injection here).
  """
  # XLA:CPU's pool before the task's module is imported (it may compute with JAX).
  backend.apply(backend.pool_size(FLAGS.cpu_threads, FLAGS.micro_shards))
  config = common.config_from_flags(argv[1:]).validate()
  from repro.machine import parallel  # imports jax: after the flags are known to be good
  if (FLAGS.coordinator_address or FLAGS.num_processes is not None
      or FLAGS.process_id is not None or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from repro.runner import run
  environment.settle_imports()
  try:
    result = run(config, hooks=hooks)
  except (PeerLost, CheckpointWriteError) as err:
    # At once: jax.distributed's exit barrier would wait for a dead process, and a
    # failed checkpoint writer's threads for what will never come.
    common.exit_at_once(err)
  if not parallel.is_primary():
    return EXIT_STOPPED if result.stopped_by else 0
  if result.stopped_by:
    print(f"stopped: {result.stopped_by} at step {result.step}; checkpoint "
          f"{result.checkpoint or 'none (nothing trained yet)'}; rerun the same command to resume")
    return EXIT_STOPPED
  tests = "".join(f", test {name.removeprefix(TEST)} {value:.4f}"
                  for name, value in sorted(result.test.items()))
  if not result.already_complete:
    speed = f"; {result.ms_step:.3g} ms a step" if result.ms_step is not None else ""
    print(f"done: step {result.step}, loss {result.loss:.4f}{tests}{speed}; checkpoint "
          f"{result.checkpoint}")
  else:
    print(f"done: step {result.step} (already complete){tests}; checkpoint {result.checkpoint}")
  return 0


define_flags = common.define_train_flags
