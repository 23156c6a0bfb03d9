"""28x28 grey image datasets through tensorflow_datasets, offline from local IDX files.

tfds.load('mnist') downloads from the internet, which many machines (and this
project's CI) cannot reach. Instead a TFDS builder of ours reads the four IDX
files of the dataset from a local directory (Debian's dataset-fashion-mnist
puts Fashion-MNIST in /usr/share/datasets/fashion-mnist) and prepares it once
in the TFDS data directory, under a builder config named by the sha256 of the
source files, so other files never reuse a stale copy. The decoded arrays are
cached beside the prepared copy with the sha256 of each file recorded at
preparation: every load verifies them, parses the very bytes it verified, and
rebuilds a damaged cache (TFDS's prepared copy included) from the source.
repro.splits then fingerprints the arrays themselves for every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import logging
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from repro.errors import ReproError

DEFAULT_DATA_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
INSTALL_HINT = {
    "fashion_mnist": "install it with 'apt-get install -y dataset-fashion-mnist' or pass "
                     "--task.data_dir=DIR holding the four IDX files",
    "mnist": "no Debian package ships MNIST: pass --task.data_dir=DIR holding "
             "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
             "and t10k-labels-idx1-ubyte (each may end in .gz)",
}
DATASETS = tuple(DEFAULT_DATA_DIRS)
NOTES = logging.getLogger("repro.data")  # what a load says; repro.run routes it to its log
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SHAPE = (28, 28, 1)
# The decoded cache: its arrays, and the sha256 of each file recorded when it was
# prepared from the source; every load verifies them.
CACHED = ("train-images.npy", "train-labels.npy", "test-images.npy", "test-labels.npy")
FINGERPRINTS = "fingerprints.json"
NUM_CLASSES = 10
BUILDER_VERSION = "1.0.0"


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays of one dataset: images uint8 (n, 28, 28, 1), labels int32 (n,)."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str


def find_idx_files(data_dir: Path, dataset: str) -> dict[str, Path]:
  """The four IDX files of `data_dir` (plain or .gz), or a ReproError naming what is missing."""
  if not data_dir.is_dir():
    what = "is not a directory" if data_dir.exists() else "does not exist"
    raise ReproError(f"data directory {data_dir} {what}: {INSTALL_HINT[dataset]}")
  found = {}
  for key, stem in IDX_FILES.items():
    candidates = [data_dir / stem, data_dir / (stem + ".gz")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
      raise ReproError(
          f"{stem}[.gz] is missing from {data_dir}: {INSTALL_HINT[dataset]}")
    found[key] = path
  return found


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
  """Parses one IDX file of unsigned bytes; ReproError if it is not one."""
  try:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, zlib.error) as err:
    raise ReproError(f"cannot read {path}: {err}; replace it with an intact copy") from None
  bad = f"{path} is not a valid IDX file"
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ReproError(f"{bad} (bad magic number); replace it with an intact copy")
  dtype_code, ndim = raw[2], raw[3]
  if dtype_code != 0x08 or ndim != expected_ndim:
    raise ReproError(
        f"{bad} (expected unsigned bytes in {expected_ndim} dimensions, found type "
        f"0x{dtype_code:02x} in {ndim}); check that the file names are not swapped")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ReproError(f"{bad} (header truncated); replace it with an intact copy")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  size = int(np.prod(shape))
  if len(raw) - header != size:
    raise ReproError(
        f"{bad} (header promises {size} bytes of data for shape {shape}, file has "
        f"{len(raw) - header}); replace it with an intact copy")
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images (n, 28, 28, 1) uint8 and labels (n,) uint8 of 'train' or 'test', validated."""
  images = read_idx(files[f"{split}_images"], 3)
  labels = read_idx(files[f"{split}_labels"], 1)
  if images.shape[1:] != IMAGE_SHAPE[:2]:
    raise ReproError(
        f"{files[f'{split}_images']} holds {images.shape[1:]} images, expected 28x28")
  if len(images) != len(labels):
    raise ReproError(
        f"{split} split has {len(images)} images but {len(labels)} labels; the IDX files "
        f"in {files[f'{split}_images'].parent} do not belong together")
  if len(labels) and labels.max() >= NUM_CLASSES:
    raise ReproError(
        f"{files[f'{split}_labels']} has label {labels.max()}, expected 0..{NUM_CLASSES - 1}")
  return images.reshape((-1,) + IMAGE_SHAPE), labels


def _sources_digest(files: dict[str, Path]) -> str:
  digest = hashlib.sha256()
  for key in sorted(files):
    digest.update(key.encode())
    digest.update(files[key].read_bytes())
  return digest.hexdigest()[:16]


def _builder_class(dataset: str):
  """A TFDS GeneratorBasedBuilder named repro_<dataset> over local IDX files."""
  import tensorflow_datasets as tfds  # slow import: only when preparing

  class LocalIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = f"repro_{dataset}"
    VERSION = tfds.core.Version(BUILDER_VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTALL_HINT[dataset]

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"{dataset} from local IDX files (repro).",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
              "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          }),
          supervised_keys=("image", "label"),
      )

    def _split_generators(self, dl_manager):
      files = find_idx_files(Path(dl_manager.manual_dir), dataset)
      return {split: self._generate_examples(files, split) for split in ("train", "test")}

    def _generate_examples(self, files, split):
      images, labels = read_split(files, split)
      for index in range(len(labels)):
        yield index, {"image": images[index], "label": int(labels[index])}

  return LocalIdx


def _check_writable(root: Path) -> None:
  try:
    root.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ReproError(f"cannot create the TFDS directory {root} ({err.strerror}): "
                     f"pass --task.tfds_dir=DIR on a writable disk") from None
  if not os.access(root, os.W_OK):
    raise ReproError(f"TFDS directory {root} is not writable: pass --task.tfds_dir=DIR")


def _tfds_dir(tfds_dir: str | None) -> Path:
  if tfds_dir:
    return Path(tfds_dir).expanduser()
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _write_atomic(path: Path, blob: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(blob)
  os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _prepare_with_tfds(dataset: str, data_dir: Path, root: Path, config_name: str,
                       cache: Path) -> None:
  """Runs the TFDS builder once and caches its decoded arrays under `cache`."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  builder = _builder_class(dataset)(
      config=tfds.core.BuilderConfig(name=config_name), data_dir=str(root),
      file_format="array_record")
  with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading and preparing"
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(data_dir)))
  cache.mkdir(parents=True, exist_ok=True)
  recorded = {}
  for split in ("train", "test"):
    arrays = _read_split(builder, split)
    for name, array in ((f"{split}-labels.npy", arrays["label"].astype(np.int32)),
                        (f"{split}-images.npy", arrays["image"])):
      blob = _npy_bytes(array)
      _write_atomic(cache / name, blob)
      recorded[name] = hashlib.sha256(blob).hexdigest()
  # Written last: a preparation cut short leaves no fingerprints, so it is redone.
  _write_atomic(cache / FINGERPRINTS, json.dumps(recorded, indent=1).encode())


def _verified_arrays(cache: Path) -> tuple[list[np.ndarray] | None, str | None]:
  """The cached arrays if every file matches the fingerprint recorded at preparation.

  Returns (arrays, None), or (None, why not) naming the first file that is
  missing, unreadable or changed. The bytes parsed are the bytes hashed.
  """
  try:
    recorded = json.loads((cache / FINGERPRINTS).read_text())
  except (OSError, ValueError):
    return None, f"{cache / FINGERPRINTS} is missing or unreadable"
  arrays = []
  for name in CACHED:
    try:
      blob = (cache / name).read_bytes()
    except OSError as err:
      return None, f"{cache / name} is unreadable ({err.strerror})"
    if hashlib.sha256(blob).hexdigest() != recorded.get(name):
      return None, f"{cache / name} does not match the fingerprint recorded when it was prepared"
    arrays.append(_npy_view(blob))
  return arrays, None


def _npy_view(blob: bytes) -> np.ndarray:
  """The array of an .npy file's bytes, without copying them (read-only)."""
  stream = io.BytesIO(blob)
  version = np.lib.format.read_magic(stream)
  read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}.get(version)
  if read_header is None:  # a format np.save does not write for these arrays
    return np.load(io.BytesIO(blob), allow_pickle=False)
  shape, fortran, dtype = read_header(stream)
  count = int(np.prod(shape))
  array = np.frombuffer(blob, dtype=dtype, count=count, offset=stream.tell())
  return array.reshape(shape, order="F" if fortran else "C")


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
  """Every example of a prepared TFDS split (array_record) as {feature: array}."""
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(list(range(len(source))))
  if not examples:
    raise ReproError(f"split {split!r} of {builder.name} is empty")
  return {name: np.stack([np.asarray(e[name]) for e in examples]) for name in examples[0]}


def tfds_builder(name: str, data_dir: str | None = None):
  """The builder of a TFDS dataset prepared offline: a registered name or a directory.

  ReproError (one line) if it is unknown or not prepared: repro never downloads.
  """
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  root = _tfds_dir(data_dir)
  try:
    if Path(name).expanduser().is_dir():
      builder = tfds.builder_from_directory(str(Path(name).expanduser()))
    else:
      builder = tfds.builder(name, data_dir=str(root))
  except Exception as err:  # TFDS raises its own types for unknown or broken datasets
    raise ReproError(f"cannot open TFDS dataset {name!r} ({type(err).__name__}: "
                     f"{' '.join(str(err).split())[:160]})") from None
  if not builder.is_prepared():
    raise ReproError(f"TFDS dataset {name!r} is not prepared in {root}: prepare it there (e.g. "
                     f"`tfds build {name} --data_dir={root}` where a network is reachable); "
                     f"repro never downloads")
  return builder


def tfds_split(name: str, split: str, data_dir: str | None = None) -> dict[str, np.ndarray]:
  """Every example of a split of a TFDS dataset prepared offline, as {feature: array}.

  For a task's data(): repro never downloads, so the dataset must already be
  prepared (e.g. with `tfds build`) in array_record format. For a split
  larger than memory, give repro.source.TFDS instead (read by index).

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
    return _read_split(builder, split)
  except ReproError:
    raise
  except Exception as err:
    raise ReproError(f"cannot read split {split!r} of TFDS dataset {name!r} "
                     f"({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None


@contextlib.contextmanager
def _preparation_lock(prepared: Path):
  """Holds an exclusive flock beside a prepared copy while it is checked and (re)built."""
  prepared.parent.mkdir(parents=True, exist_ok=True)
  with open(prepared.parent / f"{prepared.name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
    yield


def _rebuild(dataset: str, files: dict[str, Path], source: Path, root: Path, config_name: str,
             cache: Path, problem: str | None, say: Callable[[str], None]) -> list[np.ndarray]:
  """Prepares the TFDS copy and the verified cache (again, if damaged); the cached arrays."""
  if cache.exists():  # a damaged cache: rebuild it, TFDS's prepared copy included
    say(f"WARNING: {problem}; rebuilding it from {source}")
    shutil.rmtree(cache.parent.parent, ignore_errors=True)
  else:
    say(f"preparing {dataset} from {source} with tensorflow_datasets into {root} (once)")
  for split in ("train", "test"):
    read_split(files, split)  # clear errors before TFDS sees the files
  _prepare_with_tfds(dataset, source, root, config_name, cache)
  arrays, problem = _verified_arrays(cache)
  if arrays is None:
    raise ReproError(f"the data cache {cache} cannot be written intact ({problem}): pass "
                     f"--task.tfds_dir=DIR on a healthy disk")
  return arrays


def load(dataset: str, data_dir: str | None = None, tfds_dir: str | None = None,
         log: Callable[[str], None] | None = None) -> Dataset:
  """Loads `dataset` ('mnist' or 'fashion_mnist') from local IDX files via TFDS.

  Args:
    dataset: the dataset name.
    data_dir: directory of the IDX files; None means DEFAULT_DATA_DIRS[dataset].
    tfds_dir: TFDS data directory for the prepared copy; None means
      $TFDS_DATA_DIR or ~/tensorflow_datasets.
    log: where to say that a (first or repairing) preparation is happening;
      None: the logger "repro.data" (repro.run passes its lines to its log).

  Returns:
    A Dataset of its train and test arrays.
  """
  if dataset not in DEFAULT_DATA_DIRS:
    raise ReproError(f"unknown dataset {dataset!r}: use one of {sorted(DEFAULT_DATA_DIRS)}")
  source = Path(data_dir or DEFAULT_DATA_DIRS[dataset]).expanduser().resolve()
  files = find_idx_files(source, dataset)
  config_name = "idx_" + _sources_digest(files)
  root = _tfds_dir(tfds_dir)
  cache = root / f"repro_{dataset}" / config_name / BUILDER_VERSION / "decoded"
  say = log or NOTES.warning
  arrays, problem = _verified_arrays(cache)
  if arrays is None:
    _check_writable(root)
    with _preparation_lock(cache.parent.parent):  # runs started together prepare it once
      arrays, problem = _verified_arrays(cache)
      if arrays is None:
        arrays = _rebuild(dataset, files, source, root, config_name, cache, problem, say)
  train_images, train_labels, test_images, test_labels = arrays
  return Dataset(
      name=dataset,
      train_images=train_images, train_labels=train_labels,
      test_images=test_images, test_labels=test_labels,
      source=str(source))
