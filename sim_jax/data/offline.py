"""Seed 004's data set-ups: fixed augmented copies, the trained-on reference set, other domains.

- Offline augmentation (seed 004 4.5-4.6: "this dataset was augmented with the RandAugment
  module to N x 20 samples per class"): with `data.augmentation_factor = f` and
  `data.offline_augment.name` set, the train set is the N originals plus `f - 1` augmented copies
  of each, drawn once from `data.subset_seed` and held in memory (`ArraySource`, N * f images).
  Every epoch sees the same copies, as a saved augmented data set would; `data.augment` (drawn
  fresh every step) stays independent and is "none" in seed 004's set-ups.
- `TRAINED` ("trained"), an eval split: the train-split rows the model was trained on (the
  `samples_per_class` subset, originals only), the k-NN reference of seed 004 4.4 so that the
  reference holds N images per class, not the whole train split.
- `"<dataset>:<split>"`, an eval split of another dataset (cross-domain zero-shot, seed 004 4.7:
  trained on one data set, embeddings of another): that dataset's split built with its default
  options, resized (bilinear) and converted to this config's image size and channels.

The subset and the copies depend on the data config only (`data.subset_seed`, not the training
seed), so the reference set, the floors and the copies are the same for every training seed.
"""

from __future__ import annotations

import functools
import json

import jax
import ml_collections
import numpy as np

from sim_jax.data import augment, samplers, sources
from sim_jax.data import config as data_config_lib

TRAINED = "trained"
_CHUNK = 512  # images augmented per jitted call (bounds host memory of the float copies)


def subset_indices(labels: np.ndarray, data_config: ml_collections.ConfigDict) -> np.ndarray:
  """Sorted indices of the train rows trained on: `samples_per_class` per class drawn with
  `data.subset_seed`, or every row when `samples_per_class` is None."""
  if data_config.samples_per_class is None:
    return np.arange(len(labels), dtype=np.int64)
  return samplers.samples_per_class_subset(labels, int(data_config.samples_per_class),
                                           int(data_config.subset_seed))


def uses_offline(data_config: ml_collections.ConfigDict) -> bool:
  return str(data_config.offline_augment.name) != "none"


@functools.cache
def _jitted_augment(aug_json: str):
  """One compiled augmentation per augment config (iterators re-created on resume reuse it)."""
  return jax.jit(augment.make_augment_fn(ml_collections.ConfigDict(json.loads(aug_json))))


def augmented_copies(images: np.ndarray, aug_config: ml_collections.ConfigDict, copies: int,
                     seed: int) -> np.ndarray:
  """uint8 [copies * N, H, W, C]: `copies` augmentations of each of `images` (uint8
  [N, H, W, C]), copy c of image i at row c * N + i, each drawn from key fold(seed, c)."""
  fn = _jitted_augment(aug_config.to_json())
  out = np.zeros((copies * len(images),) + images.shape[1:], np.uint8)
  for c in range(copies):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), c)
    for start in range(0, len(images), _CHUNK):
      chunk = images[start:start + _CHUNK].astype(np.float32) / 255.0
      aug = np.asarray(fn(jax.random.fold_in(key, start), chunk))
      rows = slice(c * len(images) + start, c * len(images) + start + len(chunk))
      out[rows] = np.clip(np.round(aug * 255.0), 0, 255).astype(np.uint8)
  return out


def uses_subset(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.samples_per_class is not None or uses_offline(data_config)


def subset_train_source(source, data_config: ml_collections.ConfigDict):
  """(ArraySource, example indices) of the rows trained on, in memory: the samples_per_class
  subset (reading only those records: no decode of the whole split), then either the
  `augmentation_factor - 1` fixed augmented copies (offline_augment set) after the originals,
  or `augmentation_factor` repeats of the indices. Raises ValueError for offline augmentation
  with augmentation_factor < 2 (nothing to add)."""
  factor = int(data_config.augmentation_factor)
  if uses_offline(data_config) and factor < 2:
    raise ValueError(f"data.offline_augment.name={data_config.offline_augment.name!r} needs "
                     f"data.augmentation_factor >= 2 (copies per image), got {factor}")
  rec = source.read(subset_indices(source.labels, data_config))
  images = sources.format_images(rec["image"], data_config.image_size, data_config.channels)
  labels, ids = rec["label"], rec["id"]
  if not uses_offline(data_config):
    out = sources.ArraySource(images, labels, ids, source.num_classes)
    return out, samplers.augmentation_factor_indices(len(out), factor)
  extra = augmented_copies(images, data_config.offline_augment, factor - 1,
                           int(data_config.subset_seed))
  out = sources.ArraySource(np.concatenate([images, extra]), np.tile(labels, factor),
                            np.tile(ids, factor), source.num_classes)
  return out, np.arange(len(out), dtype=np.int64)


def cross_domain_config(data_config: ml_collections.ConfigDict,
                        name: str) -> ml_collections.ConfigDict:
  """The default data config of dataset `name` (its default build, already prepared where the
  dataset is used elsewhere); `load_split` formats its images to this config's size."""
  other = data_config_lib.default_config()
  other.name = name
  other.data_dir = data_config.data_dir
  return other


def split_reference(split: str) -> tuple[str | None, str]:
  """"icon_themes:test" -> ("icon_themes", "test"); "test" -> (None, "test")."""
  if ":" not in split:
    return None, split
  name, _, inner = split.partition(":")
  if not name or not inner:
    raise ValueError(f"eval split {split!r}: a cross-domain split is '<dataset>:<split>'")
  return name, inner
