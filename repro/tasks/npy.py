"""The reference CNN trained on images and labels from .npy files, memory-mapped.

For a training split larger than device memory (or than RAM): the files are
read by index, a chunk of batches at a time, and fed from the host
(--data_path=auto picks this when the split exceeds --data_budget_mb):

    bin/train --task=repro.tasks.npy:NpyCNN \
        --task.images=images.npy --task.labels=labels.npy --output=runs/npy

images: (N, 28, 28, 1) uint8; labels: (N,) int32 class ids in 0..9. The test
split is Fashion-MNIST's. Give the same examples as the default task's
training split and the bits are the default task's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from repro.data import source
from repro.errors import ReproError
from repro.task import Splits
from repro.tasks.cnn import CNN


@dataclasses.dataclass
class NpyCNN(CNN):
  """CNN's options, and images, labels: the paths of the training split's .npy files."""

  name = "cnn_npy"
  location_options = CNN.location_options + ("images", "labels")

  images: str = ""
  labels: str = ""

  def data(self) -> Splits:
    if not self.images or not self.labels:
      raise ReproError("the training split's files are not given: pass "
                       "--task.images=IMAGES.npy --task.labels=LABELS.npy")
    test = super().data().test
    train = source.Arrays({"image": np.load(self.images, mmap_mode="r"),
                           "label": np.load(self.labels, mmap_mode="r")})
    return Splits(train=train, test=test, source="npy")
