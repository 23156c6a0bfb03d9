"""repro: bitwise-reproducible, resumable training for JAX."""

from repro import backend as _backend
from repro import environment as _environment

_backend.prepare_at_import()  # first: it notes what a backend already running started with
_environment.set_determinism_flags()  # before any JAX backend starts

from repro import source
from repro.audits import audit
from repro.checker import check
from repro.config import Config
from repro.errors import ReproError
from repro.evaluation import Evaluation, evaluate
from repro.exports import export
from repro.replays import augmented, replay
from repro.runner import Result, run
from repro.runstate import Hook, RunState, StepInfo
from repro.task import Splits, Task
from repro.trained import Trained, load

__all__ = ["Config", "Evaluation", "Hook", "ReproError", "Result", "RunState", "Splits",
           "StepInfo", "Task", "Trained", "audit", "augmented", "check", "evaluate", "export",
           "load", "replay", "run"]
__version__ = "0.1.0"
