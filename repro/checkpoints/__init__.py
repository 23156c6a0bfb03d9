"""Checkpoint storage: the Orbax store (store), leaf digests (digest), the run
directory's lock (lock), reading what a run or an export stored (stored), and what an
Orbax or tensorstore error is: the file system failing, damage, or a bug (failures).
Imports nothing of train, model, proof or cli.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
