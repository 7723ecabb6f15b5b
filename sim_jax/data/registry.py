"""Dataset names -> sources. sim_jax's offline datasets, else any TFDS name."""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from sim_jax.data import sources, splits

DATASETS = ("digits",)


@functools.lru_cache(maxsize=8)
def _digits_splits(heldout_class_fraction: float, test_fraction: float):
  images, labels = sources.digits_arrays()
  assign = splits.split_assignment(labels, heldout_class_fraction, test_fraction)
  return images, labels, assign


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASETS)}")


def open_split(data_config: ml_collections.ConfigDict, split: str):
  """The random-access source of one split."""
  _check_name(data_config.name)
  images, labels, assign = _digits_splits(float(data_config.heldout_class_fraction),
                                          float(data_config.test_fraction))
  if split not in assign:
    raise ValueError(f"split {split!r} not in dataset {data_config.name!r}; "
                     f"splits: {sorted(assign)}")
  idx = assign[split]
  return sources.ArraySource(images[idx], labels[idx], idx.astype(np.int64), num_classes=10)


def describe(data_config: ml_collections.ConfigDict):
  """(stored image shape, number of classes, {split: size})."""
  _check_name(data_config.name)
  images, _, assign = _digits_splits(float(data_config.heldout_class_fraction),
                                     float(data_config.test_fraction))
  return tuple(images.shape[1:]), 10, {k: len(v) for k, v in assign.items()}
