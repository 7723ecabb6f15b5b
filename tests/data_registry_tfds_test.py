"""sim_jax.data.registry with TFDS datasets prepared where TFDS users prepare them.

A tiny `GeneratorBasedBuilder` (12 train / 6 test images; image i is filled with 10 * i and has
label i % 3) is prepared in temporary directories; what registry reads back is checked against
that rule, record by record.
"""

import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sim_jax.data import availability, registry
from sim_jax.data.config import default_config

NAME = "sim_jax_registry_tiny"  # unique: TFDS registers builder classes process-wide


class SimJaxRegistryTiny(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((8, 8, 1), 10 * i, np.uint8), "label": i % 3}


def _prepare(root, file_format):
  SimJaxRegistryTiny(data_dir=str(root), file_format=file_format).download_and_prepare()


@pytest.fixture
def dirs(tmp_path, monkeypatch):
  """Empty sim_jax / TFDS / home directories, and registry's caches cleared around the test."""
  paths = {k: tmp_path / k for k in ("sim_jax", "tfds", "home")}
  monkeypatch.setenv("SIM_JAX_DATA_DIR", str(paths["sim_jax"]))
  monkeypatch.setenv("TFDS_DATA_DIR", str(paths["tfds"]))
  monkeypatch.setenv("HOME", str(paths["home"]))
  registry._tfds_builder.cache_clear()
  registry._open.cache_clear()
  yield paths
  registry._tfds_builder.cache_clear()
  registry._open.cache_clear()


def _config(**overrides):
  c = default_config()
  c.name = NAME
  c.update(overrides)
  return c


def _check_split(source, n):
  """Every record follows the builder's rule: pixel value 10 * i, label i % 3, all i < n."""
  out = source.read(np.arange(len(source)))
  values = out["image"][:, 0, 0, 0].astype(int)
  assert sorted(values.tolist()) == [10 * i for i in range(n)]
  np.testing.assert_array_equal(out["label"], (values // 10) % 3)
  np.testing.assert_array_equal(source.labels, out["label"])
  assert out["image"].shape == (n, 8, 8, 1) and source.num_classes == 3


def test_data_dirs_order_and_explicit_data_dir(dirs):
  assert registry.tfds_data_dirs(None) == [
      str(dirs["sim_jax"]), str(dirs["tfds"]), os.path.join(str(dirs["home"]),
                                                            "tensorflow_datasets")]
  assert registry.tfds_data_dirs("/somewhere") == ["/somewhere"]


def test_tfrecord_in_tfds_data_dir_is_found_and_converted_once(dirs):
  _prepare(dirs["tfds"], "tfrecord")
  assert registry.tfds_prepared(NAME, None)
  assert availability.unavailable_reason(_config()) is None
  _check_split(registry.open_split(_config(), "train"), 12)
  _check_split(registry.open_split(_config(), "test"), 6)
  converted = dirs["sim_jax"] / NAME / "1.0.0"
  shards = sorted(p.name for p in converted.iterdir() if ".array_record-" in p.name)
  assert shards == [f"{NAME}-test.array_record-00000-of-00001",
                    f"{NAME}-train.array_record-00000-of-00001"]
  # A second process (caches cleared) reads sim_jax's ArrayRecord copy, converting nothing.
  mtime = os.path.getmtime(converted / shards[1])
  registry._tfds_builder.cache_clear()
  registry._open.cache_clear()
  _check_split(registry.open_split(_config(), "train"), 12)
  assert os.path.getmtime(converted / shards[1]) == mtime


def test_array_record_in_home_tensorflow_datasets_is_read_in_place(dirs, monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR")
  _prepare(dirs["home"] / "tensorflow_datasets", "array_record")
  _check_split(registry.open_split(_config(), "train"), 12)
  assert not dirs["sim_jax"].exists()  # nothing copied


def test_offline_unprepared_name_fails_at_once_with_the_command(dirs, monkeypatch):
  # Port 9 (discard) on localhost: refused at once, as an offline machine's DNS would fail.
  monkeypatch.setattr(registry, "DOWNLOAD_PROBE", ("127.0.0.1", 9))
  start = time.monotonic()
  with pytest.raises(ValueError, match=r"tfds build mnist --file_format=array_record") as e:
    registry.open_split(_config(name="mnist"), "train")
  assert time.monotonic() - start < 10
  assert str(dirs["tfds"]) in str(e.value) and "cannot reach" in str(e.value)
