"""Data: sources of examples (source; adapters: what they read of Grain and Hugging Face datasets),
a task's splits and their fingerprints (splits),
the data order of every step (shuffle), the host feed (feed), and the built-in datasets (datasets, idx, npy_cache, tfds_offline).
Imports nothing of train, checkpoints, model, proof or cli.
"""

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
