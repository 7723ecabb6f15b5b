"""Can a data config's dataset be prepared on this machine? Said before training, by package name.

`unavailable_reason(data_config)` is cheap (no rendering, no preparation): it checks that the
files a builder reads are installed, so `launch.py` and `ablate.py --dry_run` can refuse a config
up front instead of failing minutes into a run. `CHECKS` maps a sim_jax dataset name to its check;
a sim_jax name without one falls back to resolving its build options (what preparation does
first), and any other name is a TFDS dataset that must already be prepared in `data_dir`.
"""

from __future__ import annotations

import os

import ml_collections
import tensorflow_datasets as tfds

from sim_jax.data import registry
from sim_jax.data.builders import common, fashion_mnist, han, icon_themes, icons


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _from_options(c: ml_collections.ConfigDict) -> str | None:
  """Resolve the build options (fonts found, files listed): their ValueError is the reason."""
  try:
    registry.OWN[str(c.name)][1](c)
  except ValueError as e:
    return _first_line(e)
  return None


def _glyph_icons(c) -> str | None:
  try:
    icons.icon_options(str(c.fonts))
  except ValueError as e:
    return _first_line(e)
  return None


def _glyph_han(c) -> str | None:
  # Reads the fonts' character maps (seconds once, cached); renders nothing.
  try:
    han.han_options(c)
  except ValueError as e:
    return _first_line(e)
  return None


def _fashion_mnist(c) -> str | None:
  if fashion_mnist.tfds_copy_usable(c) and registry.tfds_prepared("fashion_mnist", c.data_dir):
    return None
  return fashion_mnist.unavailable_reason()


def _image_folder(c) -> str | None:
  path = c.path
  if not path or not os.path.isdir(str(path)):
    return f"image_folder: data.path={path!r} is not a directory"
  return None


CHECKS = {
    "digits": lambda c: None,  # scikit-learn (a dependency) ships the data
    "glyph_symbols": lambda c: None,  # matplotlib (a dependency) ships the fonts
    "glyph_icons": _glyph_icons,
    "glyph_han": _glyph_han,
    "fashion_mnist": _fashion_mnist,
    "icon_themes": icon_themes.unavailable_reason,
    "image_folder": _image_folder,
}


def _tfds(name: str, data_dir: str | None) -> str | None:
  directory = data_dir or common.default_data_dir()
  searched = ", ".join(registry.tfds_data_dirs(data_dir))
  if registry.tfds_prepared(name, data_dir):
    return None
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    return (f"unknown dataset name {name!r}; valid names: sim_jax's "
            f"{', '.join(registry.DATASETS)} or a TFDS dataset prepared in {searched}")
  return (f"TFDS dataset {name!r} is not prepared in {searched} and cannot be prepared offline: "
          f"run `tfds build {name} --file_format=array_record --data_dir={directory}` on a "
          "machine with network (or copy a prepared copy there)")


def unavailable_reason(data_config: ml_collections.ConfigDict) -> str | None:
  """None when `data_config`'s dataset can be prepared (or read) here, else a one-line message
  naming what is missing: the Debian package(s) to install, the path, or how to prepare a TFDS
  dataset. Unknown names say so, listing the valid ones."""
  name = str(data_config.name)
  if name in CHECKS:
    return CHECKS[name](data_config)
  if name in registry.OWN:
    return _from_options(data_config)
  return _tfds(name, data_config.data_dir)
