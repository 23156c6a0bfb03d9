"""The IDX files of 28x28 grey image datasets: where they are, and their arrays, validated.

read_split returns the bytes of the files as they are, in the files' order;
anything that is not a valid pair of IDX files of 28x28 images and labels
0..9 is a ReproError naming the file and the fix. sources_digest names the
files' contents, so that other files never reuse a copy prepared from these.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

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
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


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


def sources_digest(files: dict[str, Path]) -> str:
  """16 hex digits of the sha256 of the files' bytes (by role): what names a prepared copy."""
  digest = hashlib.sha256()
  for key in sorted(files):
    digest.update(key.encode())
    digest.update(files[key].read_bytes())
  return digest.hexdigest()[:16]
