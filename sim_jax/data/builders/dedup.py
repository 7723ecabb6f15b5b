"""Near-duplicate detection and deduplication of icon drawings (`icon_themes`' build).

Exact copies by SHA-256 of the rendered pixels, near-identical drawings of one class by a
perceptual hash (pHash, Zauner 2010, as `imagehash.phash`) or a shift-tolerant thumbnail
difference; the rules and their order are in `sim_jax.data.builders.icon_themes`' docstring.
"""

from __future__ import annotations

import collections

import numpy as np
from PIL import Image

# Hamming distance (of 64 bits; two pHashes of 32 set bits differ by an even number) at or below
# which two drawings of a class are one picture. Chosen by eye on 600 classes of 11 families: pairs
# at <= 6 were copies, recolours or re-exports (gnome/mate, faenza/obsidian, elementary/-xfce); at 8
# independent designs of one shape appear (breeze's blue folder vs mate's grey one).
PHASH_THRESHOLD = 6
# The second near-duplicate test: 32 x 32 thumbnails whose shift-tolerant mean absolute difference
# (`shifted_mad`, 0..255) is <= MAD_THRESHOLD. pHash alone misses copies of simple symmetric icons
# (gnome's and mate's dialog-error: pHash distance 8, mean difference 1.2) and copies moved by a
# pixel. In the same sample, pairs at <= 8 were copies (gnome/mate, elementary/-xfce) bar two
# near-blank pages; above 10 different designs of one shape start (breeze's and mate's arrows).
MAD_THRESHOLD = 8.0
THUMB_SIZE = 32
MAX_SHIFT = 2

def _dct_matrix(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix D [n, n]: X = D @ x @ D.T for a 2-D signal x."""
  k, i = np.arange(n)[:, None], np.arange(n)[None, :]
  d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  d[0] /= np.sqrt(2.0)
  return d


_DCT32 = _dct_matrix(32)


def phash(rgb: np.ndarray) -> int:
  """64-bit perceptual hash of a uint8 [H, W, 3] image (see the module docstring)."""
  luma = Image.fromarray(rgb).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
  low = (_DCT32 @ np.asarray(luma, np.float64) @ _DCT32.T)[:8, :8].reshape(-1)
  bits = low > np.median(low)
  return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
  return (a ^ b).bit_count()


def thumbnail(rgb: np.ndarray) -> np.ndarray:
  """uint8 [T, T, 3], T = min(THUMB_SIZE, S): the image box-filtered down (for `shifted_mad`)."""
  side = min(THUMB_SIZE, rgb.shape[0])
  return np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BOX), np.uint8)


def shifted_mad(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
  """min over integer shifts |dx|, |dy| <= max_shift of the mean |a - b| (0..255 per channel)
  over the overlap of two thumbnails: a copy re-exported one or two pixels off scores ~1."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  n = a.shape[0]
  best = np.inf
  for dy in range(-max_shift, max_shift + 1):
    for dx in range(-max_shift, max_shift + 1):
      pa = a[max(dy, 0):n + min(dy, 0), max(dx, 0):n + min(dx, 0)]
      pb = b[max(-dy, 0):n + min(-dy, 0), max(-dx, 0):n + min(-dx, 0)]
      best = min(best, float(np.abs(pa - pb).mean()))
  return best


def near_identical(ph_a: int, ph_b: int, thumb_a: np.ndarray, thumb_b: np.ndarray) -> bool:
  """Rule 2 of the module docstring: pHash distance <= PHASH_THRESHOLD or shifted MAD <=
  MAD_THRESHOLD."""
  return (hamming(ph_a, ph_b) <= PHASH_THRESHOLD
          or shifted_mad(thumb_a, thumb_b) <= MAD_THRESHOLD)


def deduplicate(candidates: dict[str, dict[str, int]], digests: list[bytes], phashes: list[int],
                thumbs: list, family_order: list[str]):
  """Applies the two deduplication rules of the module docstring.

  candidates: {class: {family: picture index}} (pictures index `digests` / `phashes` /
  `thumbs`).
  Returns ({class: {family: picture index}} kept, {class: Counter of removals}): counts per
  class, so that the labelled classes and the `unlabelled` pool are reported apart.
  """
  priority = {f: i for i, f in enumerate(family_order)}
  # 1. Exact: each digest goes to one (class, family) owner.
  owner: dict[bytes, tuple] = {}
  for name, by_family in candidates.items():
    for family, idx in by_family.items():
      key = (-len(by_family), name, priority[family])
      if digests[idx] not in owner or key < owner[digests[idx]][0]:
        owner[digests[idx]] = (key, name, family)
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  exact: dict[str, dict[str, int]] = {}
  for name, by_family in candidates.items():
    for family, idx in by_family.items():
      _, o_name, o_family = owner[digests[idx]]
      if (o_name, o_family) == (name, family):
        exact.setdefault(name, {})[family] = idx
      else:
        counts[name]["exact_same_class" if o_name == name else "exact_other_class"] += 1
  # 2. Near-identical within a class (greedy in family priority order).
  kept: dict[str, dict[str, int]] = {}
  for name, by_family in exact.items():
    chosen: dict[str, int] = {}
    for family in sorted(by_family, key=priority.__getitem__):
      idx = by_family[family]
      if any(near_identical(phashes[idx], phashes[j], thumbs[idx], thumbs[j])
             for j in chosen.values()):
        counts[name]["near_same_class"] += 1
      else:
        chosen[family] = idx
    kept[name] = chosen
  return kept, dict(counts)


def total_counts(counts: dict[str, collections.Counter], names) -> collections.Counter:
  """The removals of `deduplicate` summed over `names`."""
  return sum((counts.get(n, collections.Counter()) for n in names), collections.Counter())
