"""repro: bitwise-reproducible, resumable training for JAX."""

from repro.machine import backend as _backend
from repro.machine import environment as _environment

_backend.prepare_at_import()  # first: it notes what a backend already running started with
_environment.set_determinism_flags()  # before any JAX backend starts

from typing import TYPE_CHECKING

from repro import _lazy

# The public API, imported when first used (repro/_lazy.py: `import repro` imports no JAX).
_PUBLIC = {
    "Config": "repro.config:Config", "Evaluation": "repro.model.evaluation:Evaluation",
    "Hook": "repro.train.runstate:Hook", "ReproError": "repro.errors:ReproError",
    "Result": "repro.runner:Result", "RunState": "repro.train.runstate:RunState",
    "Splits": "repro.task:Splits", "StepInfo": "repro.train.runstate:StepInfo",
    "Task": "repro.task:Task", "Trained": "repro.model.trained:Trained",
    "audit": "repro.proof.audits:audit", "augmented": "repro.proof.replays:augmented",
    "check": "repro.proof.checker:check", "evaluate": "repro.model.evaluation:evaluate",
    "export": "repro.model.exports:export", "load": "repro.model.trained:load",
    "replay": "repro.proof.replays:replay", "run": "repro.runner:run",
    "golden": "repro.golden", "source": "repro.data.source", "testing": "repro.testing"}
__getattr__ = _lazy.attributes(__name__, _PUBLIC)

if TYPE_CHECKING:  # what type checkers and editors see: the same names
  from repro import golden, testing  # noqa: F401
  from repro.config import Config  # noqa: F401
  from repro.data import source  # noqa: F401
  from repro.errors import ReproError  # noqa: F401
  from repro.model.evaluation import Evaluation, evaluate  # noqa: F401
  from repro.model.exports import export  # noqa: F401
  from repro.model.trained import Trained, load  # noqa: F401
  from repro.proof.audits import audit  # noqa: F401
  from repro.proof.checker import check  # noqa: F401
  from repro.proof.replays import augmented, replay  # noqa: F401
  from repro.runner import Result, run  # noqa: F401
  from repro.task import Splits, Task  # noqa: F401
  from repro.train.runstate import Hook, RunState, StepInfo  # noqa: F401


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"
