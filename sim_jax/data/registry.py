"""Dataset names -> TFDS builders -> random-access sources.

sim_jax's own builders (`OWN`) are prepared on first use into `data_dir` (under a file lock);
any other name is a TFDS dataset read with `tfds.data_source` semantics (ArrayRecord). Both go
through `TfdsSource`.

Where a TFDS name is found (`tfds_data_dirs`): `data.data_dir` when the config sets it, else
sim_jax's directory ($SIM_JAX_DATA_DIR or ~/.cache/sim_jax/tensorflow_datasets), then TFDS's own
($TFDS_DATA_DIR, ~/tensorflow_datasets), so a dataset a TFDS user already prepared is read where
it is. A copy prepared as TFRecord (TFDS's default format, sequential reads only) is converted
once into sim_jax's directory as ArrayRecord (the same serialized records, shard for shard:
`convert_to_array_record`), and read from there afterwards. A dataset prepared nowhere is
downloaded into sim_jax's directory, unless the machine is offline: then the error says at once
which command prepares it, instead of TFDS retrying downloads for minutes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket

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
  # Logged once per options (TFDS's own notice, hidden by sim_jax.quiet, repeated them - the
  # whole font list - each time a builder was made).
  logging.info("data: %s options %s", name, options_json)
  return common.prepared_builder(OWN[name][0], json.loads(options_json), data_dir)


# Where `tfds build` downloads from: reachable in a few seconds, or the machine is offline.
DOWNLOAD_PROBE = ("storage.googleapis.com", 443)


def tfds_data_dirs(data_dir: str | None) -> list[str]:
  """Directories searched for a prepared TFDS dataset, in order: `data_dir` alone when set;
  else sim_jax's ($SIM_JAX_DATA_DIR or ~/.cache/sim_jax/tensorflow_datasets), $TFDS_DATA_DIR
  and ~/tensorflow_datasets (TFDS's default), without repeats."""
  if data_dir:
    return [str(data_dir)]
  dirs = [common.default_data_dir(), os.environ.get("TFDS_DATA_DIR"),
          os.path.expanduser("~/tensorflow_datasets")]
  out = []
  for d in dirs:
    if d and os.path.abspath(d) not in map(os.path.abspath, out):
      out.append(d)
  return out


def _prepared_builder_in(name: str, directory: str):
  """The builder of `name` prepared in `directory` (in any file format), or None."""
  try:
    builder = tfds.builder(name, data_dir=directory)
  except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
    return None
  return builder if builder.is_prepared() else None


def find_prepared(name: str, data_dir: str | None):
  """(directory, builder) of the first `tfds_data_dirs` entry where `name` is prepared, or None."""
  for directory in tfds_data_dirs(data_dir):
    builder = _prepared_builder_in(name, directory)
    if builder is not None:
      return directory, builder
  return None


def tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS dataset `name` is prepared in one of `tfds_data_dirs(data_dir)`; no download."""
  return find_prepared(name, data_dir) is not None


def _shard_path(directory: str, name: str, split: str, file_format: str, index: int,
                count: int) -> str:
  # TFDS's default filepathTemplate "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}".
  return os.path.join(directory, f"{name}-{split}.{file_format}-{index:05d}-of-{count:05d}")


def convert_to_array_record(src: str, dst: str) -> None:
  """Copies the TFRecord-prepared dataset version directory `src` to `dst` as ArrayRecord.

  The records (serialized tf.Examples) and shard lengths are unchanged, so the copied
  `dataset_info.json` stays true once its fileFormat says array_record. Written to a temporary
  directory and renamed, so an interrupted conversion is never taken for a finished one.
  """
  with open(os.path.join(src, "dataset_info.json")) as f:
    info = json.load(f)
  tmp = f"{dst}.incomplete"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  writer = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[tfds.core.FileFormat.ARRAY_RECORD]
  for split in info["splits"]:
    template = split.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
    if template != "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}":
      raise ValueError(f"{src}: split {split['name']!r} has shard names {template!r}; convert "
                       "it with `tfds convert_format --out_file_format=array_record`")
    count = len(split.get("shardLengths", []))
    for i in range(count):
      records = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[
          tfds.core.FileFormat.TFRECORD].make_tf_data(
              _shard_path(src, info["name"], split["name"], "tfrecord", i, count))
      writer.write_examples(
          _shard_path(tmp, info["name"], split["name"], "array_record", i, count),
          ((None, r) for r in records.as_numpy_iterator()))
  for entry in os.listdir(src):  # features.json, label names, ...: unchanged
    if ".tfrecord-" not in entry and entry != "dataset_info.json":
      shutil.copy(os.path.join(src, entry), tmp)
  info["fileFormat"] = "array_record"
  with open(os.path.join(tmp, "dataset_info.json"), "w") as f:
    json.dump(info, f, indent=2)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  os.rename(tmp, dst)


def _online(timeout: float = 3.0) -> bool:
  try:
    socket.create_connection(DOWNLOAD_PROBE, timeout=timeout).close()
  except OSError:
    return False
  return True


def _not_prepared(name: str, data_dir: str | None, why: str) -> ValueError:
  target = data_dir or common.default_data_dir()
  searched = ", ".join(tfds_data_dirs(data_dir))
  return ValueError(f"TFDS dataset {name!r} is not prepared in {searched} ({why}); run "
                    f"`tfds build {name} --file_format=array_record --data_dir={target}` on a "
                    "machine with network (or copy a prepared copy there)")


def _download(name: str, data_dir: str | None):
  """Downloads and prepares `name` into data_dir (default: sim_jax's), failing at once offline."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or common.default_data_dir(),
                           file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown dataset name {name!r}; valid names: sim_jax's "
                     f"{', '.join(DATASETS)} or a TFDS dataset prepared in "
                     f"{', '.join(tfds_data_dirs(data_dir))}") from e
  if not _online():
    raise _not_prepared(name, data_dir, f"this machine cannot reach {DOWNLOAD_PROBE[0]}")
  logging.info("TFDS dataset %s is not prepared: downloading into %s", name, builder.data_dir)
  try:
    with common.file_lock(f"{builder.data_dir}.lock"):
      builder.download_and_prepare(file_format="array_record")
  except Exception as e:  # noqa: BLE001  (network, disk, ...: say what to do instead)
    raise _not_prepared(name, data_dir, f"preparing failed: {type(e).__name__}: {e}") from e
  return builder


@functools.lru_cache(maxsize=16)
def _tfds_builder(name: str, data_dir: str | None):
  found = find_prepared(name, data_dir)
  if found is None:
    return _download(name, data_dir)
  directory, builder = found
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    return tfds.builder(name, data_dir=directory, file_format="array_record")
  # Prepared as TFRecord (sequential only): an ArrayRecord copy in sim_jax's directory, once.
  # sim_jax's directory, or a sub-directory of it when the TFRecord copy is there itself.
  own = common.default_data_dir()
  if os.path.abspath(directory) == os.path.abspath(own):
    own = os.path.join(own, "array_record")
  dst = os.path.join(own, os.path.relpath(builder.data_dir, directory))
  with common.file_lock(f"{dst}.lock"):
    if not os.path.exists(os.path.join(dst, "dataset_info.json")):
      logging.info("TFDS dataset %s is prepared as %s in %s: converting it once to ArrayRecord "
                   "into %s", name, builder.info.file_format.value, directory, dst)
      convert_to_array_record(builder.data_dir, dst)
  return tfds.builder(name, data_dir=own, file_format="array_record")


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
