"""Modules imported when first used (PEP 562): `import repro` imports no JAX.

So a binary installs its signal handlers (repro.cli.stopping) before the seconds of
imports a Ctrl-C would otherwise interrupt with a traceback. Every dotted path works
after a bare `import repro`, as if everything had been imported: repro.proof.verify,
repro.data.source.Arrays, repro.config.Config, ...
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Callable


def attributes(package: str, public: dict[str, str] | None = None) -> Callable[[str], object]:
  """The module __getattr__ of `package`: its submodules, and `public` names
  ({name: "module" for a module, or "module:attribute"}), each imported when first used."""
  public = public or {}

  def __getattr__(name: str):
    if name in public:
      module, _, attribute = public[name].partition(":")
      value = importlib.import_module(module)
      value = getattr(value, attribute) if attribute else value
    elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
      value = importlib.import_module(f"{package}.{name}")
    else:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    setattr(sys.modules[package], name, value)
    return value

  return __getattr__
