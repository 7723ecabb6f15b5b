"""`fashion_mnist` offline: the prepared dataset equals Debian's IDX files, read here with NumPy.

The reference parser below reads the IDX bytes itself (struct header, NumPy body): it shares no
code with `sim_jax.data.builders.fashion_mnist`.
"""

import collections
import glob
import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

import sim_jax.data as sd
from sim_jax.data import registry
from sim_jax.data.builders import common, fashion_mnist
from tests.helpers import require_debian

IDX_DIR = "/usr/share/datasets/fashion-mnist"
# The label names of TFDS's fashion_mnist (tensorflow_datasets/image_classification/mnist.py).
TFDS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
              "Bag", "Ankle boot"]
SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}


def _reference(split, directory=IDX_DIR):
  """(images [N, 784] uint8, labels [N]) parsed from the gzip'd IDX bytes: magic 2051 / 2049."""
  image_file, label_file, _ = SPLITS[split]
  with gzip.open(os.path.join(directory, image_file), "rb") as f:
    raw = f.read()
  magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
  assert magic == 2051 and (rows, cols) == (28, 28)
  images = np.frombuffer(raw[16:], np.uint8).reshape(n, rows * cols)
  with gzip.open(os.path.join(directory, label_file), "rb") as f:
    raw = f.read()
  magic, m = struct.unpack(">II", raw[:8])
  assert magic == 2049 and m == n
  return images, np.frombuffer(raw[8:], np.uint8)


def _multiset(images, labels):
  """Each example as bytes (label, then its 784 pixels), counted: order-free equality."""
  flat = np.asarray(images, np.uint8).reshape(len(labels), -1)
  return collections.Counter(bytes([int(y)]) + x.tobytes() for x, y in zip(flat, labels))


def _require_package():
  present = all(os.path.isfile(os.path.join(IDX_DIR, f)) for a, b, _ in SPLITS.values()
                for f in (a, b))
  require_debian("dataset-fashion-mnist", present, "fashion_mnist")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  _require_package()
  c = sd.default_config()
  c.update(name="fashion_mnist", data_dir=str(tmp_path_factory.mktemp("fmnist")))
  return c


def test_counts_and_pixels_equal_the_idx_files(config):
  info = sd.get_info(config)
  assert registry._builder(config).name == "fashion_mnist_idx"  # sim_jax's build, not TFDS's
  assert info.splits == {"train": 60000, "test": 10000}
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  for split, (_, _, n) in SPLITS.items():
    ref_images, ref_labels = _reference(split)
    assert len(ref_labels) == n
    got = sd.load_split(config, split)
    assert got["image"].shape == (n, 28, 28, 1) and got["image"].dtype == np.uint8
    assert _multiset(got["image"], got["label"]) == _multiset(ref_images, ref_labels)
    assert np.array_equal(np.bincount(got["label"], minlength=10),
                          np.bincount(ref_labels, minlength=10))


def test_features_and_label_names_are_tfds(config, tmp_path):
  builder = registry._builder(config)
  features = builder.info.features
  assert set(features) == {"image", "label"}
  assert features["image"].shape == (28, 28, 1) and features["image"].dtype == np.uint8
  assert features["label"].names == TFDS_NAMES
  assert builder.info.supervised_keys == ("image", "label")
  # TFDS's own builder, where this TFDS has it (instantiating it downloads nothing).
  try:
    theirs = tfds.builder("fashion_mnist", data_dir=str(tmp_path)).info.features
  except tfds.core.registered.DatasetNotFoundError:
    pytest.skip("this tensorflow_datasets has no fashion_mnist builder to compare with")
  assert theirs["label"].names == features["label"].names
  assert theirs["image"].shape == features["image"].shape
  assert theirs["image"].dtype == features["image"].dtype


def _files(builder):
  paths = sorted(glob.glob(os.path.join(builder.data_dir, "*.array_record*")))
  return {os.path.basename(p): open(p, "rb").read() for p in paths}


def _write_idx(directory, split, images, labels):
  image_file, label_file, _ = SPLITS[split]
  with gzip.open(os.path.join(directory, image_file), "wb") as f:
    f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.astype(np.uint8).tobytes())
  with gzip.open(os.path.join(directory, label_file), "wb") as f:
    f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def test_heldout_classes_leave_train_and_test(tmp_path):
  """A small IDX set written here (no package needed): 3 of 10 classes go to "heldout"."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 80), ("test", 30)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    _write_idx(str(tmp_path), split, images, labels)
    arrays[split] = (images, labels)
  options = {"directory": str(tmp_path), "heldout_class_fraction": 0.3}
  b = common.prepared_builder(fashion_mnist.FashionMnistIdx, options, str(tmp_path / "data"))
  again = common.prepared_builder(fashion_mnist.FashionMnistIdx, options, str(tmp_path / "again"))
  assert _files(b) and _files(b) == _files(again)  # a rebuild writes identical bytes
  got = {}
  for split in ("train", "test", "heldout"):
    ds = b.as_data_source(split)
    recs = [ds[i] for i in range(len(ds))]
    got[split] = (np.stack([r["image"] for r in recs]), np.array([r["label"] for r in recs]))
  held = set(got["heldout"][1].tolist())
  assert len(held) == 3
  for split in ("train", "test"):
    images, labels = arrays[split]
    keep = ~np.isin(labels, list(held))
    assert set(got[split][1].tolist()) == set(range(10)) - held
    assert _multiset(*got[split]) == _multiset(images[keep], labels[keep])
  both = [arrays[s] for s in ("train", "test")]
  held_ref = _multiset(np.concatenate([im[np.isin(y, list(held))] for im, y in both]),
                       np.concatenate([y[np.isin(y, list(held))] for _, y in both]))
  assert _multiset(*got["heldout"]) == held_ref


def test_validation_size_takes_the_last_train_rows(tmp_path, monkeypatch):
  """Seed 002's 48,000 / 12,000 split, scaled down: the last 12 of 50 train rows are validation,
  in file order (keys = the train row); test is untouched; a size >= the train rows is refused.
  The IDX files are written here, so no package is needed."""
  monkeypatch.setattr(fashion_mnist, "IDX_DIR", str(tmp_path))
  rng = np.random.default_rng(1)
  images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 50),
                                                                                ("test", 20))}
  labels = {"train": rng.integers(0, 10, 50), "test": np.arange(20) % 10}
  for split in images:
    _write_idx(str(tmp_path), split, images[split], labels[split])
  c = sd.default_config()
  c.update(name="fashion_mnist", validation_size=12)
  options = fashion_mnist.fashion_options(c)
  assert options["directory"] == str(tmp_path) and options["validation_size"] == 12
  assert not fashion_mnist.tfds_copy_usable(c)
  b = common.prepared_builder(fashion_mnist.FashionMnistIdx, options, str(tmp_path / "data"))
  want = {"train": slice(0, 38), "validation": slice(38, 50)}
  for split, rows in want.items():
    ds = b.as_data_source(split)
    recs = [ds[i] for i in range(len(ds))]
    got_images = np.stack([r["image"][..., 0] for r in recs])
    assert _multiset(got_images, [r["label"] for r in recs]) == _multiset(
        images["train"][rows], labels["train"][rows]), split
  assert len(b.as_data_source("test")) == 20
  # validation_size = 0 keeps the options (and the prepared copy's hash) of before the option.
  c.validation_size = 0
  assert "validation_size" not in fashion_mnist.fashion_options(c)
  with pytest.raises(ValueError, match=r"config\.data\.validation_size=50"):
    fashion_mnist.validation_start(50, 50)


def test_missing_files_name_the_package(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, "IDX_DIR", str(tmp_path))
  c = sd.default_config()
  c.update(name="fashion_mnist", data_dir=str(tmp_path / "data"))
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
    sd.get_info(c)
  reason = sd.unavailable_reason(c)
  assert "dataset-fashion-mnist" in reason and "\n" not in reason


def test_bad_idx_file_names_the_file(tmp_path):
  _write_idx(str(tmp_path), "train", np.zeros((2, 28, 28)), np.zeros(2))
  path = os.path.join(tmp_path, "train-images-idx3-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + bytes(784))  # 1 of 5 images
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
    fashion_mnist.read_idx(path)


def test_a_prepared_tfds_copy_is_read_first(tmp_path, monkeypatch):
  """TFDS's copy serves configs without held-out classes; sim_jax's build serves the others."""
  monkeypatch.setattr(registry, "tfds_prepared", lambda name, data_dir: name == "fashion_mnist")
  monkeypatch.setattr(registry, "_tfds_builder", lambda name, data_dir: ("tfds", name))
  monkeypatch.setattr(registry, "_own_builder", lambda name, options, data_dir: ("own", name))
  monkeypatch.setattr(fashion_mnist, "IDX_DIR", str(tmp_path))  # no IDX files: TFDS's is enough
  c = sd.default_config()
  c.update(name="fashion_mnist", data_dir=str(tmp_path))
  assert registry._builder(c) == ("tfds", "fashion_mnist")
  assert sd.unavailable_reason(c) is None
  c.update(heldout_class_fraction=0.2)  # TFDS's copy has no heldout split
  assert "dataset-fashion-mnist" in sd.unavailable_reason(c)
  monkeypatch.setattr(fashion_mnist, "IDX_DIR", IDX_DIR)
  if not fashion_mnist.missing_files():
    assert registry._builder(c) == ("own", "fashion_mnist")
