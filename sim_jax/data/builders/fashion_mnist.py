"""`fashion_mnist` offline (seeds 002, 004): the real Fashion-MNIST from Debian's package.

Debian's `dataset-fashion-mnist` installs Zalando's IDX files (`IDX_DIR`). This builder turns
them into the dataset TFDS's `fashion_mnist` is, so a config written for TFDS runs unchanged:
- features: `image` (uint8 PNG, [28, 28, 1]) and `label` (`ClassLabel` with TFDS's 10 names,
  `LABEL_NAMES`), supervised keys (image, label); nothing else;
- splits: `train` = the 60,000 images of `train-images-idx3-ubyte.gz`, `test` = the 10,000 of
  `t10k-images-idx3-ubyte.gz`; record keys = the row in the IDX file, as TFDS's builder uses.
- With `data.heldout_class_fraction > 0` (seed 004's zero-shot retrieval), `round(f * 10)`
  classes (drawn by `sim_jax.data.splits.split_assignment`, seed 0) leave `train` and `test` for
  a third split, `heldout` (keys: the train row, or 60,000 + the test row). `data.test_fraction`
  does not apply: train / test are Zalando's split.
- With `data.validation_size = N > 0` (seed 002: 48,000 train / 12,000 validation), the last N
  rows of Zalando's train file form a `validation` split (keys: the train row) and leave `train`,
  as TFDS's `train[:48000]` / `train[48000:]` slices would; held-out classes stay held out.
`sim_jax.data.registry` reads TFDS's own prepared copy instead when `data_dir` holds one, no
class is held out and no validation split is asked for (TFDS's copy has train / test only).
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from sim_jax.data import splits
from sim_jax.data.builders import common

PACKAGE = "dataset-fashion-mnist"
IDX_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# TFDS's fashion_mnist label names (tensorflow_datasets/image_classification/mnist.py).
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
SHAPE = (28, 28, 1)
_IDX_DTYPES = {0x08: np.uint8}  # the only element type Fashion-MNIST's files use


def missing_files(directory: str | None = None) -> list[str]:
  """The IDX files absent from `directory` (default `IDX_DIR`; empty when all are there)."""
  directory = directory or IDX_DIR
  return [os.path.join(directory, f) for pair in FILES.values() for f in pair
          if not os.path.isfile(os.path.join(directory, f))]


def unavailable_reason(directory: str | None = None) -> str | None:
  """None when the IDX files are installed, else a one-line message naming the package."""
  missing = missing_files(directory)
  if not missing:
    return None
  return (f"fashion_mnist needs the Debian package {PACKAGE} (apt-get install {PACKAGE}): "
          f"missing {', '.join(missing)}")


def read_idx(path: str) -> np.ndarray:
  """An IDX file (gzip or raw) as an array: magic = 0, 0, type, ndim; ndim big-endian uint32
  dimensions; then the elements, row-major. ValueError naming the file when malformed."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file of uint8 (magic bytes {data[:4].hex()})")
  ndim = data[3]
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
  body = np.frombuffer(data, _IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} = {int(np.prod(dims))} elements, "
                     f"the file holds {body.size}")
  return body.reshape(dims)


def load_split(split: str, directory: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28, 1], labels int64 [N]) of Zalando's `split` ("train" / "test")."""
  directory = directory or IDX_DIR
  reason = unavailable_reason(directory)
  if reason:
    raise ValueError(reason)
  image_file, label_file = (os.path.join(directory, f) for f in FILES[split])
  images, labels = read_idx(image_file), read_idx(label_file)
  if images.shape[1:] != SHAPE[:2] or len(images) != len(labels):
    raise ValueError(f"{image_file} ({images.shape}) and {label_file} ({labels.shape}) are not "
                     "N 28x28 images with N labels")
  if labels.max(initial=0) >= len(LABEL_NAMES):
    raise ValueError(f"{label_file}: label {labels.max()} is not one of the 10 classes")
  return images[..., None], labels.astype(np.int64)


def heldout_classes(heldout_class_fraction: float) -> set[int]:
  """The classes `split_assignment` holds out of 10 (one example per class stands for all)."""
  assign = splits.split_assignment(np.arange(len(LABEL_NAMES)), heldout_class_fraction, 0.0)
  return {int(c) for c in assign.get("heldout", [])}


class FashionMnistIdx(common.SimJaxBuilder):
  """Fashion-MNIST from the IDX files (module docstring). Options: `directory`,
  `heldout_class_fraction`."""

  def image_shape(self):
    return SHAPE

  def _info(self) -> tfds.core.DatasetInfo:
    # TFDS's fashion_mnist features, so readers cannot tell the two copies apart.
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=SHAPE),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        }),
        metadata=tfds.core.MetadataDict(),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def make_splits(self):
    o = self.builder_config.options
    held = heldout_classes(o["heldout_class_fraction"])
    out = {"train": [], "validation": [], "test": [], "heldout": []}
    offset = 0  # heldout keys: the train row, or len(train) + the test row
    for split in ("train", "test"):
      images, labels = load_split(split, o["directory"])
      first_val = validation_start(len(labels), o.get("validation_size", 0)) \
          if split == "train" else len(labels)
      for i, (image, label) in enumerate(zip(images, labels)):
        record = {"image": image, "label": int(label)}
        if int(label) in held:
          out["heldout"].append((offset + i, record))
        else:
          out["validation" if i >= first_val else split].append((i, record))
      offset += len(labels)
    return list(LABEL_NAMES), out  # empty splits (heldout, validation) are left out


def validation_start(num_train: int, validation_size: int) -> int:
  """The first train row of the validation split: num_train - validation_size (ValueError
  naming `data.validation_size` unless 0 <= validation_size < num_train)."""
  if not 0 <= int(validation_size) < num_train:
    raise ValueError(f"config.data.validation_size={validation_size}: fashion_mnist's train file "
                     f"has {num_train} rows; take 0 (no validation split) to {num_train - 1}")
  return num_train - int(validation_size)


def fashion_options(c) -> dict:
  """The build options of `data_config` `c` (ValueError naming the package when missing).

  `validation_size` joins the options only when > 0, so that the copies prepared before it
  existed keep their options hash (their directory).
  """
  reason = unavailable_reason()
  if reason:
    raise ValueError(reason)
  options = {"directory": IDX_DIR, "heldout_class_fraction": float(c.heldout_class_fraction)}
  if int(c.validation_size):
    options["validation_size"] = int(c.validation_size)
  return options


def tfds_copy_usable(c) -> bool:
  """Whether TFDS's own copy (train / test only) can serve `data_config` `c`."""
  return float(c.heldout_class_fraction) == 0.0 and int(c.validation_size) == 0
