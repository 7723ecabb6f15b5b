"""Dataset names -> TFDS builders -> random-access sources.

sim_jax's own builders (`OWN`) are prepared on first use into `data_dir` (under a file lock);
any other name is a TFDS dataset read from `data_dir` with `tfds.data_source` semantics
(ArrayRecord). Both go through `TfdsSource`.
"""

from __future__ import annotations

import functools
import json
import logging

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from sim_jax.data.builders import (
  common,
  digits,
  fashion_mnist,
  glyphs,
  han,
  icon_themes,
  icons,
  image_folder,
)

# name -> (builder class, options(data_config) -> JSON-able dict of build options)
OWN = {
    "digits": (digits.Digits, lambda c: {
        "heldout_class_fraction": float(c.heldout_class_fraction),
        "test_fraction": float(c.test_fraction)}),
    "glyph_symbols": (glyphs.GlyphSymbols, lambda c: {
        "image_size": int(c.image_size or 32), "fonts": glyphs.symbol_fonts(c.fonts),
        "charset": str(c.charset), "renders_per_font": int(c.renders_per_font),
        "max_classes": c.max_classes, "heldout_class_fraction": float(c.heldout_class_fraction),
        "test_fraction": float(c.test_fraction)}),
    "glyph_icons": (icons.GlyphIcons, lambda c: {
        "image_size": int(c.image_size or 32), "icon_sets": icons.icon_options(c.fonts),
        "charset": str(c.charset), "renders_per_font": int(c.renders_per_font),
        "max_classes": c.max_classes, "heldout_class_fraction": float(c.heldout_class_fraction),
        "test_fraction": float(c.test_fraction)}),
    "glyph_han": (han.GlyphHan, han.han_options),
    "fashion_mnist": (fashion_mnist.FashionMnistIdx, fashion_mnist.fashion_options),
    "icon_themes": (icon_themes.IconThemes, icon_themes.icon_theme_options),
    "image_folder": (image_folder.ImageFolder, lambda c: {
        "path": str(c.path), "layout": str(c.layout), "image_size": int(c.image_size or 64),
        "channels": int(c.channels or 3), "skip_bad_images": bool(c.skip_bad_images),
        "max_bad_images": int(c.max_bad_images),
        "heldout_class_fraction": float(c.heldout_class_fraction),
        "test_fraction": float(c.test_fraction),
        "digest": image_folder.listing_digest(image_folder.list_images(str(c.path), c.layout))}),
}
DATASETS = tuple(OWN)
# Names TFDS also builds: TFDS's copy, when prepared in data_dir and able to serve the config, is
# read instead of sim_jax's offline build.
TFDS_FIRST = {"fashion_mnist": fashion_mnist.tfds_copy_usable}


class TfdsSource:
  """One split of a prepared TFDS dataset (ArrayRecord data source, random access)."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, num_classes: int):
    self.data_source = builder.as_data_source(split)
    self.has_id = "id" in builder.info.features
    # Labels (and ids) are read once with the images left undecoded: cheap even for 60k records.
    raw = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    labels, ids = [], []
    for start in range(0, len(raw), 4096):
      recs = raw.__getitems__(list(range(start, min(start + 4096, len(raw)))))
      labels += [r["label"] for r in recs]
      ids += [r["id"] for r in recs] if self.has_id else []
    self.labels = np.asarray(labels, np.int32).reshape(-1)
    self.ids = np.asarray(ids, np.int64) if self.has_id else np.arange(len(raw), dtype=np.int64)
    self.image_shape = tuple(builder.info.features["image"].shape)
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    recs = self.data_source.__getitems__(indices.tolist()) if len(indices) else []
    shape = self.image_shape if None not in self.image_shape else (0, 0, 1)
    images = np.stack([np.asarray(r["image"]) for r in recs]) if recs else np.zeros(
        (0, *shape), np.uint8)
    if images.ndim == 3:
      images = images[..., None]
    return {"image": images.astype(np.uint8), "label": self.labels[indices],
            "id": self.ids[indices]}


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  name = str(data_config.name)
  if name in OWN and not (name in TFDS_FIRST and TFDS_FIRST[name](data_config)
                          and tfds_prepared(name, data_config.data_dir)):
    cls, options = OWN[name]
    return _own_builder(name, json.dumps(options(data_config), sort_keys=True),
                        data_config.data_dir)
  return _tfds_builder(name, data_config.data_dir)


@functools.lru_cache(maxsize=16)
def _own_builder(name: str, options_json: str, data_dir: str | None):
  return common.prepared_builder(OWN[name][0], json.loads(options_json), data_dir)


def tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS dataset `name` is prepared in `data_dir` (default: sim_jax's); no download."""
  try:
    return tfds.builder(name, data_dir=data_dir or common.default_data_dir(),
                        file_format="array_record").is_prepared()
  except tfds.core.registered.DatasetNotFoundError:
    return False


@functools.lru_cache(maxsize=16)
def _tfds_builder(name: str, data_dir: str | None):
  try:
    builder = tfds.builder(name, data_dir=data_dir or common.default_data_dir(),
                           file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown dataset name {name!r}; valid names: sim_jax's "
                     f"{', '.join(DATASETS)} or a TFDS dataset prepared in data_dir") from e
  if not builder.is_prepared():
    logging.info("TFDS dataset %s is not in %s: downloading and preparing", name, builder.data_dir)
    try:
      with common.file_lock(f"{builder.data_dir}.lock"):
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # noqa: BLE001  (network, disk, ...: say what to do instead)
      raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and could "
                       f"not be prepared ({type(e).__name__}: {e}); run `tfds build {name} "
                       "--file_format=array_record --data_dir=...` where there is network") from e
  return builder


def builder_class_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """The label space's names, label i -> names[i]: sim_jax's builders store them in the metadata
  (`class_names`), TFDS datasets in a `ClassLabel(names=...)` feature; () when neither has them."""
  names = builder.info.metadata.get("class_names") if builder.info.metadata else None
  if not names:
    names = getattr(builder.info.features["label"], "names", None)
  return tuple(str(n) for n in names) if names else ()


def _num_classes(builder: tfds.core.DatasetBuilder) -> int:
  names = builder_class_names(builder)
  if names:
    return len(names)
  label = builder.info.features["label"]
  return int(getattr(label, "num_classes", 0) or 0)


@functools.lru_cache(maxsize=32)
def _open(builder: tfds.core.DatasetBuilder, split: str) -> TfdsSource:
  try:
    return TfdsSource(builder, split, _num_classes(builder))
  except (KeyError, ValueError) as e:
    raise ValueError(f"split {split!r} not in dataset {builder.name!r}; splits: "
                     f"{sorted(builder.info.splits)} ({e})") from e


def open_split(data_config: ml_collections.ConfigDict, split: str) -> TfdsSource:
  """The random-access source of one split (prepares sim_jax's datasets on first use)."""
  return _open(_builder(data_config), split)


def describe(data_config: ml_collections.ConfigDict):
  """(stored image shape, number of classes, {split: size})."""
  builder = _builder(data_config)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  return tuple(builder.info.features["image"].shape), _num_classes(builder), splits


def class_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Names of the classes of `data_config`'s dataset, indexed by label; () when it has none."""
  return builder_class_names(_builder(data_config))
