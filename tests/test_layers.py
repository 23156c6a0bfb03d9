"""The tree is the architecture: each subpackage imports only the layers below it, and no
module imports itself back through others.

Layers, lowest first (a module may import its own layer and those below):
errors and the lazy imports every package uses (_lazy); the user's vocabulary (task, metrics); the machine; the config; data;
checkpoint storage; training; the run's assembly (runner) and the example
tasks; the trained model; the proofs; the command line; the package's public
face (repro/__init__.py, and the public modules repro.golden and repro.testing).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.quick

PACKAGE = Path(__file__).resolve().parent.parent / "repro"
LAYERS = (("repro.errors", "repro._lazy"), ("repro.task", "repro.metrics"), ("repro.machine",),
          ("repro.config",), ("repro.data",), ("repro.checkpoints",), ("repro.train",),
          ("repro.runner", "repro.tasks"), ("repro.model",), ("repro.proof",), ("repro.cli",),
          ("repro", "repro.golden", "repro.testing"))


def _name(path: Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
  """The repro modules `path` imports, at any depth of its code (lazy imports count)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if full in MODULES else node.module)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
  return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
  matches = [i for i, prefixes in enumerate(LAYERS) for p in prefixes
             if module == p or (p != "repro" and module.startswith(p + "."))]
  assert matches, f"{module} is in no layer: add it to LAYERS"
  return matches[0]


def test_every_module_is_in_a_subpackage_or_the_vocabulary():
  top = sorted(name for name in MODULES if name.count(".") == 1 and name not in {
      p for prefixes in LAYERS for p in prefixes})
  assert top == [], f"modules at the top of repro/ that belong in a subpackage: {top}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_those_below(module):
  above = sorted(imported for imported in GRAPH[module]
                 if _layer(imported) > _layer(module))
  assert above == [], f"{module} (layer {_layer(module)}) imports a higher layer: {above}"


def test_no_import_cycle():
  done, path = set(), []

  def visit(module):
    if module in path:
      raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
    if module in done:
      return
    path.append(module)
    for imported in sorted(GRAPH[module]):
      visit(imported)
    path.pop()
    done.add(module)

  for module in sorted(GRAPH):
    visit(module)


def test_no_function_is_longer_than_60_lines():
  long = [f"{_name(path)}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
          for path in MODULES.values() for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 60]
  assert long == []


def test_import_repro_imports_no_jax_and_every_dotted_path_works():
  """`import repro` is light (the binaries' signal handlers come first), and a bare
  `import repro` reaches everything the docs name, as if all had been imported."""
  import subprocess
  import sys
  code = ("import sys, repro; assert 'jax' not in sys.modules\n"
          "repro.proof.verify.compare, repro.proof.checker.format_report, repro.config.Config\n"
          "repro.data.source.Arrays, repro.data.datasets.tfds_split, repro.train.identity.of\n"
          "assert repro.Config is repro.config.Config and repro.source is repro.data.source\n"
          "assert not hasattr(repro, 'nothing') and not hasattr(repro.proof, 'nothing')\n"
          "assert {'run', 'load', 'check', 'Task', 'golden'} <= set(dir(repro))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=PACKAGE.parent, timeout=120)
  assert done.returncode == 0, done.stderr
