"""Tasks reading their splits from sources instead of arrays in memory: memmaps, a prepared
TFDS directory, Grain MapDatasets and Hugging Face Datasets (Fed)."""

from __future__ import annotations

import dataclasses

import numpy as np

import repro
from repro.tasks.cnn import CNN
from repro.tasks.npy import NpyCNN
from repro.tasks.regression import MLP, Regression


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


def regression_splits() -> tuple[dict, dict]:
  """The tiny regression's train and test arrays (tests/tiny_tasks.py), x doubled."""
  import tiny_tasks
  arrays = tiny_tasks.regression()
  return ({"x": arrays.x * np.float32(2), "y": arrays.y},
          {"x": arrays.x_test * np.float32(2), "y": arrays.y_test})


def doubled(example: dict) -> dict:
  """The pipelines' per-example transform: x times 2 (exact in float32, so the arrays match)."""
  return {"x": np.asarray(example["x"], np.float32) * np.float32(2),
          "y": np.asarray(example["y"], np.float32)}


def halved(split: dict) -> list[dict]:
  """The examples of a split before `doubled`, one dict each (what a Grain source holds)."""
  return [{"x": x / np.float32(2), "y": y} for x, y in zip(split["x"], split["y"])]


def grain_split(split: dict):
  import grain
  return grain.MapDataset.source(halved(split)).seed(7).map(doubled)


def hf_split(split: dict):
  import datasets
  datasets.disable_progress_bars()
  halves = halved(split)
  raw = datasets.Dataset.from_dict({k: np.stack([e[k] for e in halves]) for k in split})
  return raw.map(doubled)


def save_hf(split: dict, directory: str) -> None:
  """The split, before `doubled`, saved as a Hugging Face dataset on disk (Arrow files)."""
  import datasets
  datasets.disable_progress_bars()
  halves = halved(split)
  datasets.Dataset.from_dict({k: np.stack([e[k] for e in halves]) for k in split}).save_to_disk(
      directory)


@dataclasses.dataclass
class Fed(Regression):
  """The tiny regression on the same examples given in another form (option `form`):

  arrays   dicts of arrays, x already doubled
  grain    Grain MapDatasets whose map doubles x as repro gathers
  hf       Hugging Face Datasets (in memory) whose map doubled x
  hf_disk  the train split saved with save_to_disk in `saved` (Arrow files, watched),
           loaded and mapped; the test split in memory
  A broken pipeline for the refusals: `broken` = shuffle (a Grain shuffle before the map).
  """

  name = "fed-regression"
  location_options = ("saved",)

  form: str = "arrays"
  saved: str = ""
  broken: str = ""
  hidden: int = 8

  def model(self, rngs):
    return MLP(2, self.hidden, 2, rngs=rngs)

  def data(self):
    train, test = regression_splits()
    if self.form == "arrays":
      return repro.Splits(train=train, test=test)
    if self.form == "grain":
      pipeline = grain_split(train)
      if self.broken == "shuffle":
        pipeline = pipeline.shuffle()
      return repro.Splits(train=pipeline, test=grain_split(test), source="grain")
    if self.form == "hf":
      return repro.Splits(train=hf_split(train), test=hf_split(test), source="hf")
    if self.form == "hf_disk":
      import datasets
      datasets.disable_progress_bars()
      saved = datasets.load_from_disk(self.saved).map(doubled)
      return repro.Splits(train=saved, test=hf_split(test), source=self.saved)
    raise repro.ReproError(f"unknown form {self.form!r}")
