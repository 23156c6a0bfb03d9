"""Datasets through our TFDS builder over local IDX files; clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import idx_data
from repro import ReproError
from repro.data import datasets as data
from repro.data import idx

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


def test_gzipped_and_plain_idx_files_read_the_same(tmp_path):
  a = idx_data.write_dataset(tmp_path / "gz", n_train=20, n_test=5, gz=True)
  b = idx_data.write_dataset(tmp_path / "plain", n_train=20, n_test=5, gz=False)
  for split in ("train", "test"):
    ia, la = idx.read_split(idx.find_idx_files(a, "fashion_mnist"), split)
    ib, lb = idx.read_split(idx.find_idx_files(b, "fashion_mnist"), split)
    assert ia.shape == ((20 if split == "train" else 5), 28, 28, 1)
    assert np.array_equal(ia, ib) and np.array_equal(la, lb)


def test_load_goes_through_tfds_once_then_reuses_the_prepared_copy(tmp_path):
  src = idx_data.write_dataset(tmp_path / "idx", n_train=40, n_test=10)
  messages = []
  first = data.load("fashion_mnist", str(src), str(tmp_path / "tfds"), log=messages.append)
  assert len(messages) == 1 and "tensorflow_datasets" in messages[0]
  prepared = list((tmp_path / "tfds" / "repro_fashion_mnist").glob("idx_*/1.0.0/*.array_record*"))
  assert prepared, "TFDS did not write an array_record copy"
  again = data.load("fashion_mnist", str(src), str(tmp_path / "tfds"), log=messages.append)
  assert len(messages) == 1
  assert np.array_equal(first.train_images, again.train_images)
  assert first.train_images.dtype == np.uint8 and first.train_labels.dtype == np.int32
  # Same examples as the IDX files, in TFDS's stored order.
  images, labels = idx.read_split(idx.find_idx_files(src, "fashion_mnist"), "train")
  assert sorted(map(bytes, first.train_images)) == sorted(map(bytes, images))


def test_tfds_stores_the_examples_in_an_order_fixed_by_their_index_alone(tmp_path):
  """What the round trip in repro.data.datasets does to the data: a permutation of the IDX index, the
  same one for other bytes (so it decides every run's bits, and does not depend on them)."""

  def order(seed: int) -> list[int]:
    src = idx_data.write_dataset(tmp_path / f"idx{seed}", n_train=40, n_test=10, seed=seed)
    loaded = data.load("fashion_mnist", str(src), str(tmp_path / "tfds"), log=lambda _: None)
    images, labels = idx.read_split(idx.find_idx_files(src, "fashion_mnist"), "train")
    index = {image.tobytes(): i for i, image in enumerate(images)}
    found = [index[image.tobytes()] for image in loaded.train_images]
    assert np.array_equal(labels[found], loaded.train_labels)
    return found

  first = order(seed=1)
  assert sorted(first) == list(range(40)) and first != list(range(40))
  assert order(seed=2) == first


def test_processes_started_together_prepare_the_copy_once(tmp_path):
  """Two runs started at once on a fresh TFDS directory (two seeds, or bin/check's runs)
  used to race in TFDS's rename of its incomplete directory; the preparation is locked."""
  import json
  import subprocess
  import sys
  src = idx_data.write_dataset(tmp_path / "idx", n_train=40, n_test=10)
  code = ("import sys, json; from repro.data import datasets as data; notes = []; d = data.load('fashion_mnist',"
          " sys.argv[1], sys.argv[2], log=notes.append); print(json.dumps([notes, "
          "int(d.train_images.sum())]))")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "tfds")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert sum(len(notes) for notes, _ in results) == 1  # prepared by one of them
  assert len({total for _, total in results}) == 1


def test_other_files_get_their_own_prepared_copy_and_fingerprint(tmp_path):
  a = data.load("fashion_mnist", str(idx_data.write_dataset(tmp_path / "a", 40, 10, seed=1)),
                str(tmp_path / "tfds"), log=lambda _: None)
  b = data.load("fashion_mnist", str(idx_data.write_dataset(tmp_path / "b", 40, 10, seed=2)),
                str(tmp_path / "tfds"), log=lambda _: None)
  assert not np.array_equal(a.train_images, b.train_images)


@pytest.fixture
def broken(tmp_path):
  """broken(mutate) -> directory of a small dataset with train images mutated."""

  def make(mutate):
    d = idx_data.write_dataset(tmp_path / "bad", n_train=20, n_test=5, gz=False)
    path = d / "train-images-idx3-ubyte"
    path.write_bytes(mutate(path.read_bytes()))
    return d

  return make


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:-100], "header promises"),
    (lambda b: b"\x01\x02" + b[2:], "bad magic number"),
    (lambda b: b[:3] + b"\x01" + b[4:], "expected unsigned bytes in 3 dimensions"),
    (lambda b: b[:2], "bad magic number"),
])
def test_malformed_idx_file_is_named_in_a_clear_error(broken, mutate, message):
  d = broken(mutate)
  with pytest.raises(ReproError, match=message) as err:
    idx.read_split(idx.find_idx_files(d, "fashion_mnist"), "train")
  assert "train-images-idx3-ubyte" in str(err.value)


def test_truncated_gzip_is_a_clear_error(tmp_path):
  d = idx_data.write_dataset(tmp_path / "gz", n_train=20, n_test=5)
  path = d / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(ReproError, match="cannot read .*train-images-idx3-ubyte.gz"):
    data.load("fashion_mnist", str(d), str(tmp_path / "tfds"), log=lambda _: None)


def test_labels_that_do_not_match_the_images_are_refused(tmp_path):
  d = idx_data.write_dataset(tmp_path / "x", n_train=20, n_test=5, gz=False)
  (d / "train-labels-idx1-ubyte").write_bytes(idx_data.idx_bytes(np.zeros(19, np.uint8)))
  with pytest.raises(ReproError, match="20 images but 19 labels"):
    idx.read_split(idx.find_idx_files(d, "fashion_mnist"), "train")
  (d / "train-labels-idx1-ubyte").write_bytes(idx_data.idx_bytes(np.full(20, 12, np.uint8)))
  with pytest.raises(ReproError, match="has label 12"):
    idx.read_split(idx.find_idx_files(d, "fashion_mnist"), "train")


def test_missing_file_and_missing_directory_say_how_to_fix_it(tmp_path):
  d = idx_data.write_dataset(tmp_path / "m", n_train=20, n_test=5)
  (d / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(ReproError, match=r"t10k-labels-idx1-ubyte\[.gz\] is missing"):
    idx.find_idx_files(d, "fashion_mnist")
  with pytest.raises(ReproError, match="apt-get install -y dataset-fashion-mnist"):
    idx.find_idx_files(tmp_path / "nowhere", "fashion_mnist")


def test_fingerprint_covers_bytes_shape_and_dtype():
  from repro.data import splits
  images = np.zeros((2, 28, 28, 1), np.uint8)
  labels = np.array([1, 2], np.int32)
  base = splits.fingerprint({"image": images, "label": labels})
  assert base == splits.fingerprint({"label": labels.copy(), "image": images.copy()})
  changed = images.copy()
  changed[1, 5, 5, 0] = 1
  assert splits.fingerprint({"image": changed, "label": labels}) != base
  assert splits.fingerprint({"image": images, "label": labels.astype(np.int64)}) != base


@pytest.mark.skipif(not Path(idx.DEFAULT_DATA_DIRS["fashion_mnist"]).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files_from_debian_parse():
  files = idx.find_idx_files(Path(idx.DEFAULT_DATA_DIRS["fashion_mnist"]), "fashion_mnist")
  images, labels = idx.read_split(files, "train")
  assert images.shape == (60000, 28, 28, 1) and labels.shape == (60000,)
  test_images, _ = idx.read_split(files, "test")
  assert test_images.shape == (10000, 28, 28, 1)
  assert np.bincount(labels).tolist() == [6000] * 10


def test_a_prepared_tfds_dataset_reads_offline_by_directory(tmp_path):
  src = idx_data.write_dataset(tmp_path / "idx", n_train=40, n_test=10)
  loaded = data.load("fashion_mnist", str(src), str(tmp_path / "tfds"), log=lambda _: None)
  prepared = next((tmp_path / "tfds" / "repro_fashion_mnist").glob("idx_*/1.0.0"))
  train = data.tfds_split(str(prepared), "train")
  assert sorted(train) == ["image", "label"]
  assert np.array_equal(train["image"], loaded.train_images)
  assert np.array_equal(train["label"], loaded.train_labels)
  assert len(data.tfds_split(str(prepared), "test[:4]")["label"]) == 4


def test_a_tfds_dataset_that_is_not_prepared_is_one_line_and_never_downloaded(tmp_path):
  with pytest.raises(ReproError, match=r"TFDS dataset 'mnist' is not prepared in .*repro never "
                                       r"downloads"):
    data.tfds_split("mnist", "train", str(tmp_path / "empty"))
  with pytest.raises(ReproError, match="cannot open TFDS dataset 'no_such_dataset_xyz'"):
    data.tfds_split("no_such_dataset_xyz", "train", str(tmp_path / "empty"))
  assert not (tmp_path / "empty" / "downloads").exists()
