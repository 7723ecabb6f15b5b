"""Every check a run's config must pass before it is launched: the trainer's own, each part's,
and whether its dataset can be prepared on this machine.

A variant that would fail after minutes of training, or whose data needs a Debian package that
is not installed, is reported before anything starts (`ablate.py --dry_run` runs these only).
"""

from __future__ import annotations

import ml_collections

import sim_jax.data
from sim_jax import models, train
from sim_jax.data import augment, pipeline, registry
from sim_jax.eval import evaluators


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises (ValueError, KeyError, ...) for a config the trainer or one of its parts refuses."""
  train.validate_config(config)
  pipeline.validate_train_args(config.data, config.train.batch_size, 1)
  models.get_model(config.model)
  evaluators.get_evaluators(config.eval)
  if config.data.augment.name != "none":
    augment.make_augment_fn(config.data.augment)
  if config.data.offline_augment.name != "none":
    augment.make_augment_fn(config.data.offline_augment)
    if config.data.augmentation_factor < 2:
      raise ValueError("data.offline_augment needs data.augmentation_factor >= 2, got "
                       f"{config.data.augmentation_factor}")


def dataset_unavailable(data_config: ml_collections.ConfigDict,
                        allow_download: bool = False) -> str:
  """Why the run's dataset cannot be read here ("" if it can, or will be built offline).

  Asks `sim_jax.data.unavailable_reason` (looked up at call time, so a test can stand in for it),
  which names the Debian package to install or how to prepare a TFDS dataset. With
  `allow_download` a TFDS dataset that is not prepared is left to launch.py to download; a missing
  Debian package is reported all the same, since no download provides it.
  """
  name = str(data_config.name)
  if allow_download and name not in registry.OWN:
    return ""
  reason = sim_jax.data.unavailable_reason(data_config)
  if not reason:
    return ""
  return f"data {name!r} cannot be prepared on this machine: {reason}" if name in registry.OWN \
      else reason
