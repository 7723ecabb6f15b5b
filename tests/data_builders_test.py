"""Tests of sim_jax's offline TFDS builders and the generic TFDS path (no network)."""

import glob
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import sim_jax.data as sd
from sim_jax.data import registry
from sim_jax.data.builders import common, render


def _records(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def _files(builder):
  return {os.path.basename(p): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(builder.data_dir, "*.array_record*")))}


SYMBOL_OPTIONS = dict(image_size=16, fonts=render.matplotlib_fonts()[:8], charset="arrows",
                      renders_per_font=2, max_classes=12, heldout_class_fraction=0.25,
                      test_fraction=0.25)


@pytest.mark.parametrize("cls,options", [
    ("digits", dict(heldout_class_fraction=0.2, test_fraction=0.2)),
    ("glyph_symbols", SYMBOL_OPTIONS),
])
def test_builder_is_reproducible_and_splits_are_disjoint(tmp_path, cls, options):
  builder_cls = registry.OWN[cls][0]
  a = common.prepared_builder(builder_cls, options, str(tmp_path / "a"))
  b = common.prepared_builder(builder_cls, options, str(tmp_path / "b"))
  files_a, files_b = _files(a), _files(b)
  assert files_a and files_a == files_b  # identical bytes when rebuilt
  classes = {}
  ids = set()
  for split in ("train", "test", "heldout"):
    recs = _records(a, split)
    assert recs
    classes[split] = {int(r["label"]) for r in recs}
    split_ids = {int(r["id"]) for r in recs}
    assert not split_ids & ids  # no example in two splits
    ids |= split_ids
  n = len(a.info.metadata["class_names"])
  assert classes["train"] == classes["test"]
  assert not classes["heldout"] & classes["train"]
  assert len(classes["heldout"]) == round(0.2 * n if cls == "digits" else 0.25 * n)
  assert classes["train"] | classes["heldout"] == set(range(n))


def test_glyph_symbols_records_are_renderings_of_their_code_point(tmp_path):
  b = common.prepared_builder(registry.OWN["glyph_symbols"][0], SYMBOL_OPTIONS, str(tmp_path))
  names = b.info.metadata["class_names"]
  assert len(names) == 12 and all(0x2190 <= int(n[2:], 16) <= 0x21FF for n in names)
  for r in _records(b, "train")[:40]:
    assert r["image"].shape == (16, 16, 1) and r["image"].max() > 0
    font = r["source"].decode() if isinstance(r["source"], bytes) else r["source"]
    cp = int(names[int(r["label"])][2:], 16)
    assert cp in render.font_codepoints(font)


def test_pipeline_reads_glyph_symbols_through_tfds(tmp_path):
  c = sd.default_config()
  c.update(name="glyph_symbols", data_dir=str(tmp_path), image_size=16, charset="arrows",
           max_classes=10, fonts=",".join(SYMBOL_OPTIONS["fonts"]), sampler="pk")
  info = sd.get_info(c)
  assert info.image_shape == (16, 16, 1) and info.num_classes == 10
  batch = next(sd.create_train_iterator(c, global_batch_size=8, seed=0))
  assert batch["image"].shape == (8, 16, 16, 1) and len(set(batch["label"].tolist())) == 2
  test = sd.load_split(c, "test")
  assert len(test["label"]) == info.splits["test"]


def test_missing_font_and_empty_charset_raise(tmp_path):
  c = sd.default_config()
  c.update(name="glyph_symbols", data_dir=str(tmp_path), fonts="/no/such/font.ttf")
  with pytest.raises(ValueError, match="/no/such/font.ttf"):
    sd.get_info(c)
  c.update(fonts="", charset=" , ")
  with pytest.raises(ValueError, match="charset"):
    sd.get_info(c)


def test_unknown_name_lists_valid_ones(tmp_path):
  c = sd.default_config()
  c.update(name="no_such_dataset_xyz", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="glyph_symbols"):
    sd.get_info(c)


class SimJaxTinyExternal(tfds.core.GeneratorBasedBuilder):
  """A stand-in for a user's TFDS dataset (mnist-like features: image + ClassLabel label)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(6, 6, 3)),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "label": i % 3}


def test_any_tfds_name_goes_through_the_same_path(tmp_path):
  builder = SimJaxTinyExternal(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  ref = _records(builder, "train")
  c = sd.default_config()
  c.update(name="sim_jax_tiny_external", data_dir=str(tmp_path), sampler="random", channels=1)
  info = sd.get_info(c)
  assert info.image_shape == (6, 6, 1) and info.num_classes == 3
  assert info.splits == {"train": 30, "test": 9}
  batch = next(sd.create_train_iterator(c, global_batch_size=10, seed=0))
  for img, lab, i in zip(batch["image"], batch["label"], batch["index"]):
    assert lab == ref[i]["label"]
    luma = np.round(ref[i]["image"].astype(np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(img[..., 0], luma, atol=1)
