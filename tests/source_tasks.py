"""The reference task reading its training split from sources instead of arrays in memory."""

from __future__ import annotations

import dataclasses

import repro
from repro.tasks.cnn import CNN
from repro.tasks.npy import NpyCNN


@dataclasses.dataclass
class MemmapCNN(NpyCNN):
  """NpyCNN, with a broken source when extra_length > 0: it claims that many examples more."""

  extra_length: int = 0

  def data(self):
    splits = super().data()
    train = Claiming(splits.train, self.extra_length)
    return repro.Splits(train=train, test=splits.test, source="memmaps")


class Claiming(repro.data.source.Arrays):
  """Arrays whose length is off by `extra` (0: honest)."""

  def __init__(self, arrays: repro.data.source.Arrays, extra: int):
    super().__init__(arrays.arrays)
    self.extra = extra

  def __len__(self):
    return super().__len__() + self.extra


@dataclasses.dataclass
class TFDSCNN(CNN):
  """Training examples read by index from a prepared TFDS directory (repro.data.source.TFDS)."""

  location_options = CNN.location_options + ("prepared",)

  prepared: str = ""

  def data(self):
    splits = super().data()
    return repro.Splits(train=repro.data.source.TFDS(self.prepared, "train",
                                                dtypes={"label": "int32"}),
                        test=splits.test)
