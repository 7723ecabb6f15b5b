"""`sim_jax.data.unavailable_reason`: None where a config's data can be prepared, else one line
naming what to install or do. Cheap checks only: nothing here renders or prepares a dataset."""

import pytest

import sim_jax.data as sd
from sim_jax.data import availability, registry
from sim_jax.data.builders import fashion_mnist, han, icons
from tests.data_builders_test import SimJaxTinyExternal


def _config(name, **kw):
  c = sd.default_config()
  c.update(name=name, **kw)
  return c


def _one_line(reason):
  assert reason and "\n" not in reason
  return reason


@pytest.mark.parametrize("name", ["digits", "glyph_symbols"])
def test_datasets_shipped_by_dependencies_are_always_available(name):
  assert sd.unavailable_reason(_config(name)) is None


def test_image_folder_needs_its_directory(tmp_path):
  assert sd.unavailable_reason(_config("image_folder", path=str(tmp_path))) is None
  missing = str(tmp_path / "nope")
  assert missing in _one_line(sd.unavailable_reason(_config("image_folder", path=missing)))


def test_font_datasets_name_their_packages(tmp_path):
  reason = _one_line(sd.unavailable_reason(_config("glyph_icons", fonts=str(tmp_path))))
  assert all(s.package in reason for s in icons.ICON_SETS)
  reason = _one_line(sd.unavailable_reason(_config("glyph_han", fonts=str(tmp_path))))
  assert all(p in reason for p in han.PACKAGES) and len(han.PACKAGES) >= 30


def test_fashion_mnist_names_its_package(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, "IDX_DIR", str(tmp_path))
  reason = _one_line(sd.unavailable_reason(_config("fashion_mnist", data_dir=str(tmp_path))))
  assert "apt-get install dataset-fashion-mnist" in reason


def test_tfds_names_must_be_prepared(tmp_path):
  reason = _one_line(sd.unavailable_reason(_config("mnist", data_dir=str(tmp_path))))
  assert "not prepared" in reason and f"tfds build mnist --file_format=array_record " \
      f"--data_dir={tmp_path}" in reason
  reason = _one_line(sd.unavailable_reason(_config("no_such_dataset_xyz")))
  assert "unknown dataset name 'no_such_dataset_xyz'" in reason and "glyph_han" in reason


def test_a_prepared_tfds_dataset_is_available(tmp_path):
  builder = SimJaxTinyExternal(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  assert sd.unavailable_reason(_config("sim_jax_tiny_external", data_dir=str(tmp_path))) is None


def test_an_own_name_without_a_check_resolves_its_options(monkeypatch):
  """A builder added to registry.OWN without a CHECKS entry is judged by its options."""
  def options(c):
    raise ValueError("new_set needs the Debian package(s): apt-get install some-package\nmore")

  monkeypatch.setitem(registry.OWN, "new_set", (None, options))
  assert sd.unavailable_reason(_config("glyph_symbols", fonts="")) is None
  c = _config("new_set")
  assert _one_line(sd.unavailable_reason(c)).endswith("apt-get install some-package")
  monkeypatch.setitem(availability.CHECKS, "new_set", lambda c: None)  # one line to wire a check
  assert sd.unavailable_reason(c) is None
