"""The machine: XLA:CPU's configuration (backend), the platform facts a run records
(environment), devices and meshes (parallel). Imports nothing else of repro but errors.
"""
