"""docs/your-own-model.md's complete task runs as written, from Python and from bin/train."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bits import assert_bitwise_equal, restore_state
from conftest import TRAIN

ROOT = Path(__file__).resolve().parent.parent


def own_model_section() -> str:
  """docs/your-own-model.md's complete task (sine.py) and the bin/train command for it."""
  text = (ROOT / "docs" / "your-own-model.md").read_text()
  return text[text.index("## A complete task"):text.index("## What else a task may give")]


def test_the_smallest_task_runs_from_python_and_bin_train_with_the_same_bits(tmp_path):
  section = own_model_section()
  code = re.search(r"```python\n(.*?)\n```", section, re.S).group(1)
  (tmp_path / "sine.py").write_text(code)
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
  python = subprocess.run([sys.executable, "sine.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert python.returncode == 0, python.stderr
  assert python.stdout.strip().splitlines()[-1].startswith("step 320, loss ")
  command = re.search(r"```sh\n(PYTHONPATH=\. bin/train .*?)\n```", section, re.S).group(1)
  args = command.split()[2:]  # after "PYTHONPATH=. bin/train"
  cli = subprocess.run([sys.executable, str(TRAIN), *args, "--noprogress"], cwd=tmp_path,
                       env={**env, "PYTHONPATH": f"{tmp_path}:{ROOT}"}, capture_output=True,
                       text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr
  assert_bitwise_equal(restore_state(tmp_path / "runs" / "sine" / "320"),
                       restore_state(tmp_path / "runs" / "sine-cli" / "320"))
