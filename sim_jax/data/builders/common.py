"""Shared machinery of sim_jax's offline TFDS builders.

Every builder is a `GeneratorBasedBuilder` whose `BuilderConfig` carries the build options
(image size, fonts, character set, splits); the config name is a hash of those options, so each
distinct option set is prepared once into its own directory of `data_dir` and reused.
Records: `image` (uint8 PNG, [S, S, C]), `label` (int64, dense class id), `id` (int64, unique,
stable), `class_name` (text), `source` (text: font file or image path). The class names are
stored in the dataset metadata (`class_names`), so readers know the label space without a scan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from sim_jax.data import splits

VERSION = tfds.core.Version("1.0.0")


@dataclasses.dataclass(eq=False)
class OptionsConfig(tfds.core.BuilderConfig):
  """A BuilderConfig named by the hash of its build options (a JSON-able dict)."""

  options: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_options(cls, **options) -> OptionsConfig:
    blob = json.dumps(options, sort_keys=True)
    name = "o" + hashlib.sha256(blob.encode()).hexdigest()[:12]
    return cls(name=name, version=VERSION, description=f"sim_jax options {name}",
               options=options)


class SimJaxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the offline builders; subclasses implement `image_shape` and `make_splits`."""

  VERSION = VERSION

  def image_shape(self) -> tuple[int, int, int]:
    raise NotImplementedError

  def make_splits(self) -> tuple[list[str], dict[str, list[tuple[str, dict]]]]:
    """Returns (class_names, {split: [(key, example), ...]}) with examples' `image` uint8."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.image_shape(), encoding_format="png"),
            "label": tfds.features.Scalar(np.int64),
            "id": tfds.features.Scalar(np.int64),
            "class_name": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # offline: everything is generated from local files
    class_names, split_examples = self.make_splits()
    if not class_names:
      raise ValueError(f"{self.name}: no classes to build (empty class list); options: "
                       f"{self.builder_config.options}")
    self.info.metadata["class_names"] = list(class_names)
    self.info.metadata["options"] = dict(self.builder_config.options)
    # TFDS refuses to write an empty split (e.g. "test" with test_fraction=0): leave it out.
    return {split: self._generate_examples(examples)
            for split, examples in split_examples.items() if examples}

  def _generate_examples(self, examples):
    yield from examples

  def _download_and_prepare(self, *args, **kwargs):
    with deterministic_serialization():
      return super()._download_and_prepare(*args, **kwargs)


@contextlib.contextmanager
def deterministic_serialization():
  """TFDS writes each record as a `tf.train.Example`, whose features are a protobuf map; a plain
  `SerializeToString()` emits map entries in an order that follows the process's string hashing
  (PYTHONHASHSEED), so the same example gave different bytes in another process. While building,
  records are serialised with `deterministic=True` (map entries sorted by key), so a rebuild in
  any process writes the same bytes. (TFDS builds its serializer inside its split builder, so the
  method is swapped for the duration of the build and restored after.)"""
  cls = example_serializer.ExampleSerializer
  original = cls.serialize_example

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  cls.serialize_example = serialize_example
  try:
    yield
  finally:
    cls.serialize_example = original


def default_data_dir() -> str:
  """`$SIM_JAX_DATA_DIR`, else `~/.cache/sim_jax/tensorflow_datasets`."""
  return os.environ.get("SIM_JAX_DATA_DIR") or os.path.expanduser(
      "~/.cache/sim_jax/tensorflow_datasets")


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive advisory lock (fcntl): two processes never prepare the same dataset at once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(builder_cls, options: dict, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder for `options`, prepared (ArrayRecord) into `data_dir` on first use.

  Preparation runs under a file lock; a second process waits, then finds it prepared.
  """
  data_dir = data_dir or default_data_dir()
  config = OptionsConfig.from_options(**options)
  builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  lock = os.path.join(data_dir, f".{builder.name}.{config.name}.lock")
  with file_lock(lock):
    builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      logging.info("preparing %s (%s) into %s", builder.name, config.description, data_dir)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
  return builder


def assign_examples(labels: np.ndarray, heldout_class_fraction: float, test_fraction: float,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """See `sim_jax.data.splits.split_assignment` (re-exported for builders)."""
  return splits.split_assignment(labels, heldout_class_fraction, test_fraction, seed)
