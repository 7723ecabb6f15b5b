"""glyph_han at seed 001's scale: faces, character selection and the query/database split.

Checked against the font files themselves (fontTools cmaps and PIL drawings made here), never
against the builder's own bookkeeping. Renders little: the face/charset selection needs no
rendering, the distinctness check draws 40 characters per face, the build 3 characters.
"""

import functools
import os

import numpy as np
import pytest
from fontTools.ttLib import TTCollection, TTFont
from PIL import Image, ImageDraw, ImageFont

import sim_jax.data as sd
from sim_jax.data import registry
from sim_jax.data.builders import han, han_faces
from tests.helpers import require_debian

SAME_DESIGN = 0.065  # mean |pixel difference| below which two faces draw the same design


def _require_all_faces():
  present = all(os.path.isfile(os.path.join(han_faces.FONT_ROOT, d.files[0][1]))
                for d in han_faces.DESIGNS)
  require_debian(list(han.PACKAGES), present, "glyph_han at the seed's scale (>= 30 faces)")


@functools.lru_cache(maxsize=128)
def _cmap(path):
  font = TTFont(path, fontNumber=0, lazy=True) if path.endswith(".ttc") else TTFont(path, lazy=True)
  return frozenset(font.getBestCmap())


@functools.lru_cache(maxsize=128)
def _pil_font(path, size, index=0):
  return ImageFont.truetype(path, size, index=index)


def _drawing(path, ch, size=48, index=0):
  """`ch` drawn in `path` at 64 px, cropped to its ink, fitted in size x size; floats in [0, 1]."""
  # 64 px: below ~50 px some fonts (AR PL Mingti2L) draw embedded bitmaps, not their outlines.
  font = _pil_font(path, 64, index)
  canvas = Image.new("L", (160, 160), 0)
  ImageDraw.Draw(canvas).text((40, 40), ch, font=font, fill=255)
  box = canvas.getbbox()
  if box is None:
    return None
  ink = canvas.crop(box)
  scale = 0.9 * size / max(ink.size)
  ink = ink.resize((max(1, round(ink.size[0] * scale)), max(1, round(ink.size[1] * scale))),
                   Image.LANCZOS)
  out = Image.new("L", (size, size), 0)
  out.paste(ink, ((size - ink.size[0]) // 2, (size - ink.size[1]) // 2))
  return np.asarray(out, np.float64) / 255


@pytest.fixture(scope="module")
def default_options():
  _require_all_faces()
  c = sd.default_config()
  c.update(name="glyph_han")
  return han.han_options(c)


def test_default_reaches_30_faces_and_1000_characters(default_options):
  fonts, chars = default_options["fonts"], [ord(ch) for ch in default_options["characters"]]
  assert len(fonts) >= 30 and len(set(fonts)) == len(fonts)
  assert len(chars) == len(set(chars)) >= 1000
  assert all(0x4E00 <= cp <= 0x9FFF for cp in chars)
  for font in fonts:  # every face maps every chosen character (its own cmap, read here)
    assert set(chars) <= _cmap(font), font
  # ... and draws ink for them (a sample: PIL, not the builder's glyph test).
  sample = [chars[i] for i in np.linspace(0, len(chars) - 1, 12).round().astype(int)]
  for font in fonts:
    pil = _pil_font(font, 32)
    for cp in sample:
      left, top, right, bottom = pil.getbbox(chr(cp))
      assert right > left and bottom > top, (font, hex(cp))


def test_chosen_characters_are_the_most_widely_drawn(default_options):
  """No sampled character left out is drawn by more installed faces than a chosen one."""
  candidates = [path for _, path in han_faces.installed_faces()]
  cmaps = [_cmap(f) for f in candidates]
  pil = [_pil_font(f, 24) for f in candidates]

  def faces_drawing(cp):
    count = 0
    for cmap, font in zip(cmaps, pil):
      if cp in cmap:
        left, top, right, bottom = font.getbbox(chr(cp))
        count += right > left and bottom > top
    return count

  chosen = [ord(ch) for ch in default_options["characters"]]
  rng = np.random.default_rng(0)
  others = sorted(set(range(0x4E00, 0xA000)) - set(chosen))
  left_out = [others[i] for i in rng.choice(len(others), 150, replace=False)]
  picked = [chosen[i] for i in rng.choice(len(chosen), 60, replace=False)]
  assert min(map(faces_drawing, picked)) >= max(map(faces_drawing, left_out))


def test_faces_are_distinct_designs_and_alternates_are_copies(default_options):
  """Kept faces differ pairwise; a design's other installed files draw the same glyphs."""
  chars = default_options["characters"]
  probe = [chars[i] for i in np.linspace(0, len(chars) - 1, 40).round().astype(int)]

  def drawings(path):
    return np.stack([_drawing(path, ch) for ch in probe])

  kept = {f: drawings(f) for f in default_options["fonts"]}
  names = sorted(kept)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      diff = np.abs(kept[a] - kept[b]).mean()
      assert diff > SAME_DESIGN, (os.path.basename(a), os.path.basename(b), diff)
      assert _identical(kept[a], kept[b]) < 0.1, (os.path.basename(a), os.path.basename(b))
  for design, path in han_faces.installed_faces():
    for _, rel in design.files:
      alt = os.path.realpath(os.path.join(han_faces.FONT_ROOT, rel))
      if alt == path or not os.path.isfile(alt) or path not in kept:
        continue
      shared = [ch for ch in probe if ord(ch) in _cmap(alt)]
      if len(shared) < 10:
        continue
      ref = np.stack([_drawing(path, ch) for ch in shared])
      diff = np.abs(np.stack([_drawing(alt, ch) for ch in shared]) - ref).mean()
      assert diff < SAME_DESIGN, (design.name, os.path.basename(alt), diff)


def _identical(a, b):
  """Fraction of characters two faces draw identically (per-character mean |difference| < 0.01)."""
  return float(np.mean(np.abs(a - b).mean(axis=(1, 2)) < 0.01))


def test_collections_hold_one_design(default_options):
  """Index 0 stands for a whole .ttc: its other faces (regions, fixed width) are the same design.

  A regional version redraws the characters whose standard form differs (Noto CJK SC/TC/HK vs
  JP: most of these), so the mean difference can reach a distinct design's; what two distinct
  designs never do is draw a third of the characters identically, as every index here does.
  """
  chars = default_options["characters"]
  probe = [chars[i] for i in np.linspace(0, len(chars) - 1, 40).round().astype(int)]
  for path in (f for f in default_options["fonts"] if f.endswith(".ttc")):
    first = np.stack([_drawing(path, ch) for ch in probe])
    for index in range(1, len(TTCollection(path).fonts)):
      other = np.stack([_drawing(path, ch, index=index) for ch in probe])
      assert _identical(other, first) >= 0.3, (os.path.basename(path), index)


def test_query_faces_are_kai_and_disjoint_from_the_database(default_options):
  fonts, query = default_options["fonts"], default_options["query_fonts"]
  assert query and set(query) < set(fonts)
  for f in query:
    assert han_faces.design_of(f).style == "kai"
  for f in set(fonts) - set(query):
    assert han_faces.design_of(f).style != "kai"


def test_small_build_keeps_query_faces_out_of_the_database(tmp_path, default_options):
  _require_all_faces()
  c = sd.default_config()
  c.update(name="glyph_han", data_dir=str(tmp_path), max_classes=3, renders_per_font=1,
           image_size=16, heldout_class_fraction=0.0, test_fraction=0.25)
  b = registry._builder(c)
  opts = b.builder_config.options
  assert len(opts["fonts"]) >= 30 and len(b.info.metadata["class_names"]) == 3
  sources = {}
  for split in ("train", "test", "query"):
    ds = b.as_data_source(split)
    recs = [ds[i] for i in range(len(ds))]
    sources[split] = [r["source"].decode() if isinstance(r["source"], bytes) else r["source"]
                      for r in recs]
    assert all(r["image"].max() > 0 for r in recs)
  database = set(sources["train"]) | set(sources["test"])
  assert set(sources["query"]) == set(opts["query_fonts"])
  assert database == set(opts["fonts"]) - set(opts["query_fonts"])
  # One clean rendering per (character, face): 3 x faces records in all.
  assert sum(map(len, sources.values())) == 3 * len(opts["fonts"])


def test_seed_scale_7500_characters_still_has_a_database(default_options):
  c = sd.default_config()
  c.update(name="glyph_han", max_classes=7500)
  opts = han.han_options(c)
  assert len(opts["characters"]) == 7500
  assert opts["query_fonts"] and len(opts["fonts"]) - len(opts["query_fonts"]) >= 2
  for font in opts["fonts"]:
    assert {ord(ch) for ch in opts["characters"]} <= _cmap(font)


def test_missing_faces_name_the_packages(tmp_path):
  c = sd.default_config()
  c.update(name="glyph_han", data_dir=str(tmp_path), fonts=str(tmp_path))
  with pytest.raises(ValueError, match="apt-get install .*fonts-noto-cjk"):
    sd.get_info(c)
  reason = sd.unavailable_reason(c)
  assert "fonts-noto-cjk" in reason and "\n" not in reason


@pytest.mark.parametrize("counts,n,expected", [
    # faces drawing each code point 0..5: 3, 1, 3, 2, 0, 3
    ([3, 1, 3, 2, 0, 3], 3, [0, 2, 5]),
    ([3, 1, 3, 2, 0, 3], 4, [0, 2, 3, 5]),
    ([3, 1, 3, 2, 0, 3], 10, [0, 1, 2, 3, 5]),  # never a character no face draws
    ([1, 1, 1, 1, 1], 3, [0, 2, 4]),  # a tie is sampled evenly, not from the start
])
def test_select_characters_hand_computed(counts, n, expected):
  faces = [frozenset(cp for cp, c in enumerate(counts) if c > k) for k in range(max(counts))]
  assert han_faces.select_characters(list(range(len(counts))), faces, n) == expected
