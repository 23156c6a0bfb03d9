"""tensorflow_datasets without a network: a builder over local IDX files, and prepared datasets.

tfds.load('mnist') downloads from the internet, which many machines (and this
project's CI) cannot reach. prepare_idx runs a TFDS builder of ours over the
four IDX files of a local directory instead, under a builder config named by
the caller (repro.data.datasets names it by the files' digest). tfds_builder and
tfds_split open any dataset already prepared in a TFDS data directory; repro
never downloads. Examples come back in TFDS's stored order, which TFDS decides
(setup.cfg pins its version for that reason).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from repro.data import idx
from repro.errors import ReproError, squeezed, writable_directory

BUILDER_VERSION = "1.0.0"
FILE_FORMAT = "array_record"  # random access: what tfds.data_source and repro.data.source.TFDS read


def tfds_dir(given: str | None) -> Path:
  """The TFDS data directory: `given`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if given:
    return Path(given).expanduser()
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def check_writable(root: Path) -> None:
  """Creates the TFDS directory `root`; ReproError (one line) if it cannot be written."""
  writable_directory(root, "the TFDS directory", "pass --task.tfds_dir=DIR on a writable disk")


def builder_name(dataset: str) -> str:
  return f"repro_{dataset}"


def prepared_dir(root: Path, dataset: str, config_name: str) -> Path:
  """Where TFDS keeps the copy prepare_idx makes: <root>/<builder>/<config>/<version>."""
  return root / builder_name(dataset) / config_name / BUILDER_VERSION


def _builder_class(dataset: str):
  """A TFDS GeneratorBasedBuilder named builder_name(dataset) over local IDX files."""
  import tensorflow_datasets as tfds  # slow import: only when preparing

  class LocalIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = builder_name(dataset)
    VERSION = tfds.core.Version(BUILDER_VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = idx.INSTALL_HINT[dataset]

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"{dataset} from local IDX files (repro).",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=idx.IMAGE_SHAPE, dtype=np.uint8),
              "label": tfds.features.ClassLabel(num_classes=idx.NUM_CLASSES),
          }),
          supervised_keys=("image", "label"),
      )

    def _split_generators(self, dl_manager):
      files = idx.find_idx_files(Path(dl_manager.manual_dir), dataset)
      return {split: self._generate_examples(files, split) for split in idx.SPLITS}

    def _generate_examples(self, files, split):
      images, labels = idx.read_split(files, split)
      for index in range(len(labels)):  # the key TFDS orders the stored examples by
        yield index, {"image": images[index], "label": int(labels[index])}

  return LocalIdx


def prepare_idx(dataset: str, data_dir: Path, root: Path, config_name: str):
  """Prepares `dataset` from the IDX files of `data_dir` in `root` (once); its TFDS builder."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  builder = _builder_class(dataset)(
      config=tfds.core.BuilderConfig(name=config_name), data_dir=str(root),
      file_format=FILE_FORMAT)
  with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading and preparing"
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(data_dir)))
  return builder


def read_examples(builder, split: str) -> dict[str, np.ndarray]:
  """Every example of a prepared TFDS split (array_record) as {feature: array}, stored order."""
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(list(range(len(source))))
  if not examples:
    raise ReproError(f"split {split!r} of {builder.name} is empty")
  return {name: np.stack([np.asarray(e[name]) for e in examples]) for name in examples[0]}


def _tfds_error(err: Exception) -> str:
  """TFDS's own words for an error, on one line."""
  return f"{type(err).__name__}: {squeezed(err)}"


def tfds_builder(name: str, data_dir: str | None = None):
  """The builder of a TFDS dataset prepared offline: a registered name or a directory.

  ReproError (one line) if it is unknown or not prepared: repro never downloads.
  """
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  root = tfds_dir(data_dir)
  try:
    if Path(name).expanduser().is_dir():
      builder = tfds.builder_from_directory(str(Path(name).expanduser()))
    else:
      builder = tfds.builder(name, data_dir=str(root))
  except Exception as err:  # TFDS raises its own types for unknown or broken datasets
    raise ReproError(f"cannot open TFDS dataset {name!r} ({_tfds_error(err)})") from None
  if not builder.is_prepared():
    raise ReproError(f"TFDS dataset {name!r} is not prepared in {root}: prepare it there (e.g. "
                     f"`tfds build {name} --data_dir={root}` where a network is reachable); "
                     f"repro never downloads")
  return builder


def tfds_split(name: str, split: str, data_dir: str | None = None) -> dict[str, np.ndarray]:
  """Every example of a split of a TFDS dataset prepared offline, as {feature: array}.

  For a task's data(): repro never downloads, so the dataset must already be
  prepared (e.g. with `tfds build`) in array_record format. For a split
  larger than memory, give repro.data.source.TFDS instead (read by index).

  Args:
    name: a registered TFDS name ('mnist', 'mnist:3.0.1') found in data_dir,
      or the directory of a prepared dataset (<data_dir>/<name>/<config>/<version>).
    split: 'train', 'test', or any TFDS split expression ('train[:90%]').
    data_dir: the TFDS data directory; None means $TFDS_DATA_DIR or
      ~/tensorflow_datasets.

  Returns:
    The split's features stacked over its examples (nested features are not
    supported), in TFDS's stored order.
  """
  builder = tfds_builder(name, data_dir)
  try:
    return read_examples(builder, split)
  except ReproError:
    raise
  except Exception as err:  # TFDS and array_record raise their own types
    raise ReproError(f"cannot read split {split!r} of TFDS dataset {name!r} "
                     f"({_tfds_error(err)})") from None
