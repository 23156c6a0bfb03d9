"""repro: bitwise-reproducible, resumable training for JAX."""

from repro.machine import backend as _backend
from repro.machine import environment as _environment

_backend.prepare_at_import()  # first: it notes what a backend already running started with
_environment.set_determinism_flags()  # before any JAX backend starts

import importlib as _importlib

# The public API, imported when first used (PEP 562): `import repro` itself imports neither
# JAX nor Flax, so a binary installs its signal handlers (repro.cli.stopping) before the
# seconds of imports that a Ctrl-C would otherwise interrupt with a traceback, and pays
# only for the modules it needs.
_PUBLIC = {
    "Config": "repro.config", "Evaluation": "repro.model.evaluation", "Hook":
    "repro.train.runstate", "ReproError": "repro.errors", "Result": "repro.runner",
    "RunState": "repro.train.runstate", "Splits": "repro.task", "StepInfo":
    "repro.train.runstate", "Task": "repro.task", "Trained": "repro.model.trained",
    "audit": "repro.proof.audits", "augmented": "repro.proof.replays", "check":
    "repro.proof.checker", "evaluate": "repro.model.evaluation", "export":
    "repro.model.exports", "load": "repro.model.trained", "replay": "repro.proof.replays",
    "run": "repro.runner"}
_SUBMODULES = ("golden", "source", "testing")  # repro.golden.record / check, ...
_SUBPACKAGES = ("checkpoints", "cli", "data", "machine", "model", "proof", "tasks", "train")


def __getattr__(name: str):
  if name in _PUBLIC:
    value = getattr(_importlib.import_module(_PUBLIC[name]), name)
  elif name in _SUBMODULES or name in _SUBPACKAGES:
    value = _importlib.import_module(
        "repro.data.source" if name == "source" else f"repro.{name}")
  else:
    raise AttributeError(f"module 'repro' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


__all__ = sorted([*_PUBLIC, "golden", "source", "testing"])
__version__ = "0.1.0"
