"""What decides the bits is pinned, and CI runs the test command README.md gives."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bit_deciding_packages_are_pinned_exactly():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  lines = [l.strip() for l in cfg["options"]["install_requires"].splitlines()
           if l.strip() and not l.strip().startswith("#")]
  pins = dict(l.split("==", 1) for l in lines if "==" in l)
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
               "tensorflow-datasets"):
    assert name in pins and re.fullmatch(r"[0-9][0-9.]*", pins[name]), name
  assert all("==" in l for l in lines), "every direct dependency is pinned"


def test_ci_runs_the_test_command_that_readme_gives():
  readme = (ROOT / "README.md").read_text()
  commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
  test_commands = [c for c in commands if "pytest" in c]
  assert test_commands, "README.md gives no test command"
  assert test_commands[0].strip() in (ROOT / ".ci" / "run").read_text()
