"""Training: the pure core (core, rewrites, rng), the run's plan and state
(plan, state, optim, identity, warmstart), the chunk programs (programs), the loop
(trainer, runstate, schedule, control, components, stop), the checkpoints it writes
(checkpointer: the store and the events log) and resuming (resume, manifest).
Imports nothing of model, proof or cli.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
