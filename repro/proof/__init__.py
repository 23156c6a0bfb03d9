"""Proofs: comparing runs (verify), fresh-process checks (checker, check_run, processes),
audits and replays of stored steps (audits, replays), a model's lineage (lineage) and a
task's recorded bits (golden).
Imports nothing of cli.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
