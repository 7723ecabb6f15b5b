"""Random-access sources: a split of a dataset as `labels` plus batched record reads.

A source exposes `labels` (int32 [N], read once: the samplers need them), `ids` (int64 [N]),
`image_shape` (H, W, C as stored), `num_classes` and `read(indices) -> {"image", "label", "id"}`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


class ArraySource:
  """A split held in memory (uint8 images [N, H, W, C], int labels, int64 ids)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, num_classes: int):
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if not len(images) == len(labels) == len(ids):
      raise ValueError(f"images/labels/ids lengths differ: {len(images)}/{len(labels)}/{len(ids)}")
    self.images = images
    self.labels = np.asarray(labels, np.int32)
    self.ids = np.asarray(ids, np.int64)
    self.image_shape = tuple(images.shape[1:])
    self.num_classes = int(num_classes)

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    return {"image": self.images[indices], "label": self.labels[indices], "id": self.ids[indices]}


def format_images(images: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
  """Resizes uint8 `[..., H, W, C]` to `image_size` (bilinear, PIL) and converts channels.

  `image_size=None` keeps the size; `channels=None` keeps C; 1 -> 3 repeats the gray channel,
  3 -> 1 uses ITU-R 601-2 luma (PIL "L": 0.299 R + 0.587 G + 0.114 B).
  """
  if channels not in (None, 1, 3):
    raise ValueError(f"channels must be None, 1 or 3, got {channels}")
  if image_size is not None and image_size < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}")
  lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
  flat = images.reshape((-1, h, w, c))
  if image_size is not None and (h, w) != (image_size, image_size):
    flat = np.stack([_resize(x, image_size) for x in flat]) if len(flat) else \
        np.zeros((0, image_size, image_size, c), np.uint8)
  if channels == 3 and c == 1:
    flat = np.repeat(flat, 3, axis=-1)
  elif channels == 1 and c == 3:
    flat = np.round(flat.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    flat = np.clip(flat, 0, 255).astype(np.uint8)[..., None]
  elif channels not in (None, c):
    raise ValueError(f"cannot convert {c} channels to channels={channels}")
  return flat.reshape(lead + flat.shape[1:])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  mode_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(mode_image.resize((size, size), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits (1797 images, UCI optdigits test set) as uint8 [N, 8, 8, 1], int32.

  Pixel values 0..16 map to 0..255 by `round(v * 255 / 16)`.
  """
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int32)
