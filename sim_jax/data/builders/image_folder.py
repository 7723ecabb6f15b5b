"""`image_folder`: a user's images as an offline TFDS dataset.

Layouts: `classes` = `root/<class name>/<image>` (one directory per class); `pairs` =
`root/left/<name>.<ext>` + `root/right/<name>.<ext>` (Totally-Looks-Like, seed 003): each name is
a class whose two examples are its left and right image. Images are converted to `channels`
and resized to `image_size` x `image_size` (bilinear) at preparation time.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
from PIL import Image

from sim_jax.data.builders import common

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def list_images(root: str, layout: str) -> list[tuple[str, str]]:
  """Sorted (class name, path) pairs; ValueError when the layout is wrong or there are none."""
  if not root or not os.path.isdir(root):
    raise ValueError(f"image_folder: data.path={root!r} is not a directory")
  is_image = lambda f: f.lower().endswith(EXTENSIONS)
  out = []
  if layout == "classes":
    for name in sorted(os.listdir(root)):
      d = os.path.join(root, name)
      if os.path.isdir(d):
        out += [(name, os.path.join(d, f)) for f in sorted(os.listdir(d)) if is_image(f)]
  elif layout == "pairs":
    sides = [os.path.join(root, s) for s in ("left", "right")]
    if not all(os.path.isdir(s) for s in sides):
      raise ValueError(f"image_folder layout 'pairs' needs {sides[0]} and {sides[1]}")
    stems = [{os.path.splitext(f)[0]: f for f in os.listdir(s) if is_image(f)} for s in sides]
    for name in sorted(set(stems[0]) & set(stems[1])):
      out += [(name, os.path.join(sides[0], stems[0][name])),
              (name, os.path.join(sides[1], stems[1][name]))]
  else:
    raise ValueError(f"image_folder: data.layout={layout!r} is not 'classes' or 'pairs'")
  if not out:
    raise ValueError(f"image_folder: no images ({', '.join(EXTENSIONS)}) under {root} with "
                     f"layout {layout!r} (empty class list)")
  classes = sorted({name for name, _ in out})
  if len(classes) < 2:
    # Similarity learning needs negatives; without this the sampler fails on the batch size.
    raise ValueError(f"image_folder: {root} with layout {layout!r} has {len(classes)} class "
                     f"({classes[0]!r}); similarity learning needs >= 2 classes")
  return out


def listing_digest(files: list[tuple[str, str]]) -> str:
  """Hash of (class, path, size, mtime): a changed folder selects a new prepared config."""
  h = hashlib.sha256()
  for name, path in files:
    st = os.stat(path)
    h.update(f"{name}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def load_image(path: str, index: int, size: int, channels: int) -> np.ndarray:
  """uint8 [size, size, channels]; ValueError naming the file for a zero-byte/truncated image."""
  try:
    if os.path.getsize(path) == 0:
      raise OSError("zero-byte file")
    with Image.open(path) as img:
      img.load()  # decodes fully, so a truncated file fails here rather than later
      img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
      arr = np.asarray(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"bad image {path} (index {index}): {type(e).__name__}: {e}") from e
  return arr[..., None] if arr.ndim == 2 else arr


class ImageFolder(common.SimJaxBuilder):
  """Options: path, layout, image_size, channels, skip_bad_images, max_bad_images,
  heldout_class_fraction, test_fraction, digest (of the file listing)."""

  def image_shape(self):
    o = self.builder_config.options
    return (o["image_size"], o["image_size"], o["channels"])

  def make_splits(self):
    o = self.builder_config.options
    files = list_images(o["path"], o["layout"])
    class_names = sorted({name for name, _ in files})
    label_of = {name: i for i, name in enumerate(class_names)}
    images, labels, srcs, bad = [], [], [], []
    for i, (name, path) in enumerate(files):
      try:
        images.append(load_image(path, i, o["image_size"], o["channels"]))
      except ValueError as e:
        if not o["skip_bad_images"]:
          raise
        bad.append(path)
        logging.warning("skipping %s (%d skipped so far)", e, len(bad))
        if len(bad) > o["max_bad_images"]:
          raise ValueError(f"image_folder: {len(bad)} bad images exceed max_bad_images="
                           f"{o['max_bad_images']}; last: {path}") from e
        continue
      labels.append(label_of[name])
      srcs.append(path)
    if bad:
      logging.warning("image_folder: skipped %d bad images: %s", len(bad), bad)
    self.info.metadata["skipped_images"] = bad
    labels = np.array(labels, np.int64)
    assign = common.assign_examples(labels, o["heldout_class_fraction"], o["test_fraction"])
    out = {split: [(int(i), {"image": images[i], "label": int(labels[i]), "id": int(i),
                             "class_name": class_names[labels[i]], "source": srcs[i]})
                   for i in idx] for split, idx in assign.items()}
    return class_names, out
