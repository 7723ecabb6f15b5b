"""Tests of the image_folder builder: layouts, bad images (truncated / zero-byte), skipping."""

import io
import os

import numpy as np
import pytest
from PIL import Image

import sim_jax.data as sd


def write_png(path, value, size=10):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def make_classes(root, num_classes=3, per_class=4):
  for c in range(num_classes):
    for i in range(per_class):
      write_png(os.path.join(root, f"class{c}", f"{i}.png"), 40 * c + i)


def config(root, data_dir, **kw):
  c = sd.default_config()
  c.update(name="image_folder", path=str(root), data_dir=str(data_dir), image_size=8,
           **{"test_fraction": 0.25, **kw})
  return c


def test_classes_layout_round_trips_pixels(tmp_path):
  make_classes(tmp_path / "img")
  c = config(tmp_path / "img", tmp_path / "tfds")
  info = sd.get_info(c)
  assert info.num_classes == 3 and info.splits == {"train": 9, "test": 3}
  data = sd.load_split(c, "train")
  # Constant images survive resizing: pixel = 40 * class + i for some i in 0..3.
  for img, lab in zip(data["image"], data["label"]):
    assert img.shape == (8, 8, 3) and len(np.unique(img)) == 1
    assert 0 <= int(img[0, 0, 0]) - 40 * int(lab) <= 3


def test_pairs_layout(tmp_path):
  for side, off in (("left", 0), ("right", 1)):
    for n in range(4):
      write_png(str(tmp_path / "img" / side / f"p{n}.png"), 10 * n + off)
  c = config(tmp_path / "img", tmp_path / "tfds", layout="pairs", test_fraction=0.0,
             sampler="pairs")
  assert sd.get_info(c).splits == {"train": 8}
  batch = next(sd.create_train_iterator(c, global_batch_size=4, seed=0))
  for (a, b), same, (la, lb) in zip(batch["image"], batch["same"], batch["label"]):
    if same:  # a POS pair is the left and right image of one name
      assert la == lb and abs(int(a[0, 0, 0]) - int(b[0, 0, 0])) == 1


@pytest.mark.parametrize("kind", ["zero", "truncated"])
def test_bad_image_names_the_file(tmp_path, kind):
  make_classes(tmp_path / "img")
  bad = tmp_path / "img" / "class1" / "bad.png"
  if kind == "zero":
    bad.write_bytes(b"")
  else:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 7).save(buf, "PNG")
    bad.write_bytes(buf.getvalue()[:60])
  with pytest.raises(ValueError, match="bad.png"):
    sd.get_info(config(tmp_path / "img", tmp_path / "tfds"))
  info = sd.get_info(config(tmp_path / "img", tmp_path / "tfds2", skip_bad_images=True))
  assert sum(info.splits.values()) == 12  # the bad one skipped, the 12 good ones kept
  with pytest.raises(ValueError, match="max_bad_images"):
    sd.get_info(config(tmp_path / "img", tmp_path / "tfds3", skip_bad_images=True,
                       max_bad_images=0))


def test_empty_folder_says_what_was_expected(tmp_path):
  (tmp_path / "img" / "empty_class").mkdir(parents=True)
  with pytest.raises(ValueError, match="no images"):
    sd.get_info(config(tmp_path / "img", tmp_path / "tfds"))
