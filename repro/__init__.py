"""repro: bitwise-reproducible, resumable training for JAX."""

from repro import environment as _environment

_environment.set_determinism_flags()  # before any JAX backend starts

from repro.config import Config
from repro.errors import ReproError
from repro.run import Result, run

__all__ = ["Config", "ReproError", "Result", "run"]
__version__ = "0.1.0"
