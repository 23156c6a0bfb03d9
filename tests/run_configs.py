#!/usr/bin/env python3
"""Runs the repro.Configs of a JSON list one after another in this process.

For tests that need many runs in one process of a given device count
(XLA_FLAGS=--xla_force_host_platform_device_count=N): starting a process per
run would cost seconds each. Usage: run_configs.py CONFIGS.json
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from repro.machine import environment  # noqa: E402

environment.defer_collection()  # as bin/train does
import repro  # noqa: E402
from repro import runner  # noqa: E402

if __name__ == "__main__":
  environment.settle_imports()
  for values in json.loads(Path(sys.argv[1]).read_text()):
    runner.run(repro.Config.from_dict(values), log=lambda _: None)
