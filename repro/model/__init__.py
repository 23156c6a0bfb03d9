"""After training: a trained model loaded (trained), evaluated (evaluation) and exported
(exports). Imports nothing of proof or cli.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
