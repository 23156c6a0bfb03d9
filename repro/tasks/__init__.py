"""Example tasks: each a repro.Task a researcher can run or copy.

cnn         the reference CNN on Fashion-MNIST (the default task)
resnet      a small residual CNN with BatchNorm and Dropout on Fashion-MNIST
charlm      a tiny decoder-only transformer language model on any UTF-8 text
regression  an MLP regression on NumPy arrays passed in from Python
"""

from repro.config import DEFAULT_TASK as DEFAULT  # what --task means when it is not given

from repro import _lazy

__getattr__ = _lazy.attributes(__name__)  # its modules, imported when first used
