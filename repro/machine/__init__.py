"""The machine: XLA:CPU's configuration (backend), the platform facts a run records
(environment), devices and meshes (parallel). Imports nothing else of repro but errors.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
