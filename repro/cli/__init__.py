"""The command line: one module per binary (train, verify, evaluate, export, plot, check,
audit, replay, golden), each with define_flags() and main(argv), over what they share (common:
the absl parser, flags -> Config, one-line errors; stopping: a signal outside a training
loop) and a task's options (task_options).
Imports any layer below it; nothing imports it.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
