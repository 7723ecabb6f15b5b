"""Every check a run's config must pass before it is launched: the trainer's own, each part's,
and whether its dataset can be prepared on this machine.

A variant that would fail after minutes of training, or whose data needs a Debian package that
is not installed, is reported before anything starts (`ablate.py --dry_run` runs these only).
"""

from __future__ import annotations

import ml_collections
import tensorflow_datasets as tfds

import sim_jax.data
from sim_jax import models, train
from sim_jax.data import augment, pipeline, registry
from sim_jax.data.builders import common
from sim_jax.eval import evaluators


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises (ValueError, KeyError, ...) for a config the trainer or one of its parts refuses."""
  train.validate_config(config)
  pipeline.validate_train_args(config.data, config.train.batch_size, 1)
  models.get_model(config.model)
  evaluators.get_evaluators(config.eval)
  if config.data.augment.name != "none":
    augment.make_augment_fn(config.data.augment)


def missing_packages(data_config: ml_collections.ConfigDict) -> str:
  """Why `data_config`'s dataset cannot be prepared on this machine ("" if it can).

  Asks `sim_jax.data.unavailable_reason`, which names the Debian package to install.
  """
  # TEMPORARY shim: `unavailable_reason` is being added to sim_jax.data in parallel; until it
  # lands every dataset counts as preparable, as before. Looked up at call time (tests patch it).
  unavailable_reason = getattr(sim_jax.data, "unavailable_reason", None)
  if unavailable_reason is None:
    return ""
  return unavailable_reason(data_config) or ""


def tfds_not_prepared(data_config: ml_collections.ConfigDict) -> str:
  """For a TFDS dataset (not one of sim_jax's offline builders): why it cannot be read without
  a download ("" when it is prepared in data_dir, or is sim_jax's own)."""
  name = str(data_config.name)
  if name in registry.DATASETS:
    return ""  # sim_jax's own builders prepare offline on first use
  data_dir = data_config.data_dir or common.default_data_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  (DatasetNotFoundError and friends)
    return f"unknown dataset {name!r} ({type(e).__name__})"
  if builder.is_prepared():
    return ""
  return (f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and this run does not "
          f"download (prepare it with `tfds build {name} --file_format=array_record "
          f"--data_dir={data_dir}` where there is network, or pass --allow_download)")


def dataset_unavailable(data_config: ml_collections.ConfigDict,
                        allow_download: bool = False) -> str:
  """Why the run's dataset cannot be read here ("" if it can, or will be built offline).

  A missing Debian package is reported even with `allow_download`: no download provides it.
  """
  missing = missing_packages(data_config)
  if missing:
    return f"data {str(data_config.name)!r} cannot be prepared on this machine: {missing}"
  return "" if allow_download else tfds_not_prepared(data_config)
