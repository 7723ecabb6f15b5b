"""`glyph_han` (seed 001): CJK characters rendered from every installed CJK font.

Seed 001 retrieves Sino-Nom characters (a query image -> a ranked database, MRR@5) and trains on
characters "drawn with different fonts, stroke levels and noisy backgrounds" (47 fonts, 7500
characters). Here:
- Faces: `data.fonts` ("" = one face per distinct Han design Debian packages, the first
  installed file of each entry of `han_faces.DESIGNS`: 39 designs from 32 packages; weights,
  regional versions and copies of another package's glyphs are not separate faces).
- Classes: the `max_classes` (default `DEFAULT_MAX_CLASSES` = 1,000; up to 7,500 and more)
  characters of `charset` (default: CJK Unified Ideographs U+4E00-U+9FFF) drawn by the most
  faces (`han_faces.select_characters`); then only the faces that draw *every* chosen character
  are kept, so each class has the same renderings. With every package: 1,000 and 2,000
  characters keep all 39 faces, 7,500 keep 9 (`python -m sim_jax.data.builders.han_faces`).
- Renderings per (character, font): one clean + `renders_per_font - 1` styled ones. A styled one
  draws the glyph with a stroke weight from `STROKES` (PIL stroke width at the 96 pt reference
  size; -1 = eroded by a 3x3 min filter: thinner strokes), applies the affine
  jitter of `render.jitter_params`, then puts it on a noisy background
  (`noisy_background`). All draws come from a Generator seeded by (class, font, j).
- Splits (seed 001's query vs database): renderings in the query fonts (`query_fonts`; "" = the
  Kai faces: brush-written, unlike the printed database faces; the designs of style "kai", or a
  file name containing "kai", else the last face) form the "query" split of the non-held-out
  classes; the other fonts' renderings form the database: "train" and, by example, "test".
  Held-out classes (`heldout_class_fraction`) go entirely to "heldout". So a query never shares
  a font with the database it is searched against.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageFilter

from sim_jax.data import samplers
from sim_jax.data.builders import common, glyphs, han_faces, render

PACKAGES = tuple(han_faces.packages())
HAN_BLOCKS = {"cjk": (0x4E00, 0x9FFF), "cjk_ext_a": (0x3400, 0x4DBF)}
DEFAULT_CHARSET = "cjk"
DEFAULT_MAX_CLASSES = 1000
MIN_FONTS = 2
STROKES = (-1, 0, 2, 4)  # stroke widths of styled renderings (-1: eroded by a 3x3 min filter)


def packages_hint() -> str:
  return "apt-get install " + " ".join(PACKAGES)


def han_selection(spec: str, codepoints: list[int],
                  max_classes: int | None) -> tuple[list[str], list[int]]:
  """(faces, characters) of glyph_han: the `max_classes` characters of `codepoints` drawn by the
  most faces, and the faces drawing all of them (`han_faces` module docstring). Faces: `spec`
  (files / directories) or one per installed design. ValueError naming the packages when fewer
  than MIN_FONTS faces are left."""
  fonts = render.discover_fonts(spec, []) if spec else [p for _, p in han_faces.installed_faces()]
  n = DEFAULT_MAX_CLASSES if max_classes is None else int(max_classes)
  drawn = [han_faces.drawn_codepoints(f) for f in fonts]
  chars = han_faces.select_characters(codepoints, drawn, n) if fonts else []
  kept = [f for f, d in zip(fonts, drawn) if chars and set(chars) <= d]
  if len(kept) < MIN_FONTS:
    raise ValueError(
        f"glyph_han needs >= {MIN_FONTS} CJK faces drawing the {n} most widely drawn characters "
        f"of the charset, found {len(kept)} of {len(fonts)} fonts (data.fonts={spec!r}, "
        f"data.max_classes={max_classes}); install the Debian packages: {packages_hint()} "
        "(or point data.fonts at CJK font files or directories, or lower data.max_classes)")
  return kept, chars


@functools.lru_cache(maxsize=8)
def _cached_selection(spec: str, codepoints: tuple[int, ...], max_classes: int | None):
  # Every open of the dataset resolves its options; the ranking over ~20k code points x faces
  # is done once per process.
  return han_selection(spec, list(codepoints), max_classes)


def query_font_list(spec: str, fonts: list[str]) -> list[str]:
  """The query fonts: `spec` (comma-separated paths or base names, each one of `fonts`), or
  "" = the Kai faces (`han_faces.QUERY_STYLE` designs, or "kai" in the file name), else the last
  font. At least one font must be left for the database."""
  if spec:
    chosen = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
      match = [f for f in fonts if os.path.realpath(token) == f or os.path.basename(f) == token]
      if not match:
        raise ValueError(f"data.query_fonts entry {token!r} is not one of the fonts in use: "
                         f"{[os.path.basename(f) for f in fonts]}")
      chosen += match
  else:
    chosen = [f for f in fonts if _is_kai(f)] or fonts[-1:]
  chosen = sorted(set(chosen))
  if len(chosen) >= len(fonts):
    raise ValueError(f"data.query_fonts={spec!r} takes every font {fonts}; keep at least one "
                     "for the database")
  return chosen


def _is_kai(path: str) -> bool:
  design = han_faces.design_of(path)
  return (design.style == han_faces.QUERY_STYLE) if design else "kai" in os.path.basename(
      path).lower()


def noisy_background(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
  """uint8: ink (0..255) composited over noisy paper,
  `out = round(clip(max(paper, ink * c), 0, 255))`, `paper = b + g * t + N(0, s^2)` per pixel,
  with level b ~ U(20, 60), an illumination gradient of amplitude g ~ U(0, 40) along a random
  direction (t in [0, 1] across the image), noise std s ~ U(4, 16), ink contrast c ~ U(0.75, 1)."""
  h, w = ink.shape
  b, s, g, c = rng.uniform(20, 60), rng.uniform(4, 16), rng.uniform(0, 40), rng.uniform(0.75, 1)
  angle = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:h, 0:w] / max(h - 1, 1)
  t = np.cos(angle) * xx + np.sin(angle) * yy
  t = (t - t.min()) / max(np.ptp(t), 1e-9)
  paper = b + g * t + rng.normal(0, s, (h, w))
  return np.clip(np.maximum(paper, ink.astype(np.float64) * c), 0, 255).round().astype(np.uint8)


def styled_render(font: str, text: str, size: int, rng: np.random.Generator) -> np.ndarray | None:
  """A stroke-weight variant (from STROKES), affine jitter, then a noisy background."""
  stroke = int(rng.choice(STROKES))
  ink = render.ink_crop(font, text, max(stroke, 0))
  if ink is None:
    return None
  if stroke < 0:  # thinner strokes: erode the ink (a min filter shrinks white regions)
    ink = np.asarray(Image.fromarray(ink).filter(ImageFilter.MinFilter(1 - 2 * stroke)))
    if not ink.any():
      ink = render.ink_crop(font, text)
  out = render.fit(ink, size, **render.jitter_params(rng))
  return noisy_background(rng, out)


class GlyphHan(common.SimJaxBuilder):
  """CJK characters x fonts x styles with seed 001's query/database split (module docstring).

  Options: image_size, fonts (resolved paths), query_fonts (resolved paths), charset,
  characters (the chosen characters, a string), renders_per_font, max_classes,
  heldout_class_fraction, test_fraction.
  """

  def image_shape(self):
    s = self.builder_config.options["image_size"]
    return (s, s, 1)

  def make_splits(self):
    o = self.builder_config.options
    fonts, size, per = o["fonts"], o["image_size"], o["renders_per_font"]
    if per < 1:
      raise ValueError(f"renders_per_font must be >= 1, got {per}")
    names, images, labels, srcs = [], [], [], []
    for cp in map(ord, o["characters"]):
      clean = [render.render(f, chr(cp), size) for f in fonts]
      if any(img is None or not img.any() for img in clean):
        continue  # a blank glyph (a cmap entry without outline): the class would be unequal
      label = len(names)
      names.append(f"U+{cp:04X}")
      for v, (font, img) in enumerate(zip(fonts, clean)):
        images.append(img)
        for j in range(1, per):
          rng = samplers.rng_for(2, 11, cp * 1000 + v, j)
          images.append(styled_render(font, chr(cp), size, rng))
        labels += [label] * per
        srcs += [font] * per
    if not names:
      raise ValueError(f"glyph_han: every character of {o['charset']!r} renders blank")
    images = np.stack(images)[..., None]
    labels = np.array(labels, np.int64)
    assign = han_assignment(labels, np.array([s in o["query_fonts"] for s in srcs]),
                            o["heldout_class_fraction"], o["test_fraction"])
    return names, glyphs.split_examples(names, images, labels, srcs, 0.0, 0.0, assign=assign)


def han_assignment(labels: np.ndarray, is_query: np.ndarray, heldout_class_fraction: float,
                   test_fraction: float) -> dict[str, np.ndarray]:
  """{split: sorted indices}: held-out classes -> "heldout" (all fonts); other classes: query
  fonts -> "query", database fonts -> "train" / "test" (by example, `split_assignment`)."""
  base = common.assign_examples(labels, heldout_class_fraction, 0.0)
  out = {"heldout": base.get("heldout", np.zeros(0, np.int64))}
  kept = base["train"]
  out["query"] = kept[is_query[kept]]
  database = kept[~is_query[kept]]
  db = common.assign_examples(labels[database], 0.0, test_fraction)
  out["train"] = np.sort(database[db["train"]])
  out["test"] = np.sort(database[db["test"]])
  return out  # empty splits are left out by SimJaxBuilder


def han_options(c) -> dict:
  """The build options of `data_config` `c` (faces and characters resolved, so the config hash
  names them)."""
  cps = glyphs.parse_charset(str(c.charset), HAN_BLOCKS, DEFAULT_CHARSET)
  fonts, chars = _cached_selection(str(c.fonts), tuple(cps), c.max_classes)
  return {"image_size": int(c.image_size or 32), "fonts": fonts,
          "query_fonts": query_font_list(str(c.query_fonts), fonts), "charset": str(c.charset),
          "characters": "".join(map(chr, chars)), "renders_per_font": int(c.renders_per_font),
          "max_classes": c.max_classes, "heldout_class_fraction": float(c.heldout_class_fraction),
          "test_fraction": float(c.test_fraction)}
