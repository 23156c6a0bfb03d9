"""repro: bitwise-reproducible, resumable training for JAX."""

from repro.machine import backend as _backend
from repro.machine import environment as _environment

_backend.prepare_at_import()  # first: it notes what a backend already running started with
_environment.set_determinism_flags()  # before any JAX backend starts

from repro.data import source
from repro.proof.audits import audit
from repro.proof.checker import check
from repro.config import Config
from repro.errors import ReproError
from repro.model.evaluation import Evaluation, evaluate
from repro.model.exports import export
from repro.proof.replays import augmented, replay
from repro.runner import Result, run
from repro.train.runstate import Hook, RunState, StepInfo
from repro.task import Splits, Task
from repro.model.trained import Trained, load
from repro import golden, testing  # repro.golden.record / check, repro.testing.assert_golden

__all__ = ["Config", "Evaluation", "Hook", "ReproError", "Result", "RunState", "Splits",
           "StepInfo", "Task", "Trained", "audit", "augmented", "check", "evaluate", "export",
           "golden", "load", "replay", "run", "testing"]
__version__ = "0.1.0"
