"""`glyph_han` (seed 001): CJK characters rendered from every installed CJK font.

Seed 001 retrieves Sino-Nom characters (a query image -> a ranked database, MRR@5) and trains on
characters "drawn with different fonts, stroke levels and noisy backgrounds" (47 fonts, 7500
characters). Here:
- Fonts: `data.fonts` ("" = every CJK font installed: `fc-list :lang=zh file` plus the font files
  of the Debian packages in `PACKAGES` under /usr/share/fonts), one face per file (the first of a
  .ttc collection). A font that draws fewer than half of the requested characters (e.g.
  HanaMinB, which holds Extension B) is left out.
- Classes: the characters of `charset` (default: CJK Unified Ideographs U+4E00-U+9FFF) drawn by
  *every* kept font, so each class has the same renderings; `max_classes` (default
  `DEFAULT_MAX_CLASSES`) keeps an evenly spaced subset of them (sorted by code point).
- Renderings per (character, font): one clean + `renders_per_font - 1` styled ones. A styled one
  draws the glyph with a stroke weight from `STROKES` (PIL stroke width at the 96 pt reference
  size; -1 = eroded by a 3x3 min filter: thinner strokes), applies the affine
  jitter of `render.jitter_params`, then puts it on a noisy background
  (`noisy_background`). All draws come from a Generator seeded by (class, font, j).
- Splits (seed 001's query vs database): renderings in the query fonts (`query_fonts`; "" = the
  fonts whose file name contains "kai", a brush-written style unlike the printed database fonts,
  else the last font) form the "query" split of the non-held-out classes; the other fonts'
  renderings form the database: "train" and, by example, "test". Held-out classes
  (`heldout_class_fraction`) go entirely to "heldout". So a query never shares a font with the
  database it is searched against.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
from PIL import Image, ImageFilter

from sim_jax.data import samplers
from sim_jax.data.builders import common, glyphs, render

PACKAGES = ("fonts-noto-cjk", "fonts-arphic-ukai", "fonts-arphic-uming", "fonts-babelstone-han",
            "fonts-hanazono")
# Font files those packages install (searched under /usr/share/fonts when fc-list is missing).
PACKAGE_FONTS = ("NotoSansCJK-Regular.ttc", "NotoSansCJK-Bold.ttc", "NotoSerifCJK-Regular.ttc",
                 "NotoSerifCJK-Bold.ttc", "ukai.ttc", "uming.ttc", "BabelStoneHan.ttf",
                 "HanaMinA.ttf", "HanaMinB.ttf")
HAN_BLOCKS = {"cjk": (0x4E00, 0x9FFF), "cjk_ext_a": (0x3400, 0x4DBF)}
DEFAULT_CHARSET = "cjk"
DEFAULT_MAX_CLASSES = 100
MIN_FONTS = 2
MIN_COVERAGE = 0.5  # a font must draw this fraction of the charset to be used
STROKES = (-1, 0, 2, 4)  # stroke widths of styled renderings (-1: eroded by a 3x3 min filter)


def installed_cjk_fonts() -> list[str]:
  """Every CJK font file fontconfig knows (`fc-list :lang=zh file`) plus the Debian packages'."""
  found = set()
  if shutil.which("fc-list"):
    out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True,
                         check=False).stdout
    found.update(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
  for root, subdirs, files in os.walk("/usr/share/fonts"):
    subdirs.sort()
    found.update(os.path.join(root, f) for f in files if f in PACKAGE_FONTS)
  return sorted({os.path.realpath(f) for f in found
                 if f.lower().endswith(render.FONT_EXTENSIONS) and os.path.isfile(f)})


def han_fonts(spec: str, codepoints: list[int]) -> list[str]:
  """Fonts for glyph_han: `spec` (files / directories) or the installed CJK fonts, keeping those
  that draw >= MIN_COVERAGE of `codepoints`. ValueError naming the packages when < MIN_FONTS."""
  fonts = render.discover_fonts(spec, []) if spec else installed_cjk_fonts()
  wanted = set(codepoints)
  kept = [f for f in fonts if len(wanted & render.font_codepoints(f)) >= MIN_COVERAGE * len(wanted)]
  if len(kept) < MIN_FONTS:
    raise ValueError(
        f"glyph_han needs >= {MIN_FONTS} CJK fonts drawing the charset, found {kept} "
        f"(data.fonts={spec!r}); install the Debian packages: apt-get install "
        f"{' '.join(PACKAGES)} (or point data.fonts at CJK font files or directories)")
  return kept


def query_font_list(spec: str, fonts: list[str]) -> list[str]:
  """The query fonts: `spec` (comma-separated paths or base names, each one of `fonts`), or
  "" = the fonts whose base name contains "kai", else the last font. At least one font must be
  left for the database."""
  if spec:
    chosen = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
      match = [f for f in fonts if os.path.realpath(token) == f or os.path.basename(f) == token]
      if not match:
        raise ValueError(f"data.query_fonts entry {token!r} is not one of the fonts in use: "
                         f"{[os.path.basename(f) for f in fonts]}")
      chosen += match
  else:
    chosen = [f for f in fonts if "kai" in os.path.basename(f).lower()] or fonts[-1:]
  chosen = sorted(set(chosen))
  if len(chosen) >= len(fonts):
    raise ValueError(f"data.query_fonts={spec!r} takes every font {fonts}; keep at least one "
                     "for the database")
  return chosen


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
  renders_per_font, max_classes, heldout_class_fraction, test_fraction.
  """

  def image_shape(self):
    s = self.builder_config.options["image_size"]
    return (s, s, 1)

  def make_splits(self):
    o = self.builder_config.options
    fonts, size, per = o["fonts"], o["image_size"], o["renders_per_font"]
    if per < 1:
      raise ValueError(f"renders_per_font must be >= 1, got {per}")
    cps = glyphs.parse_charset(o["charset"], HAN_BLOCKS, DEFAULT_CHARSET)
    common_cps = sorted(set(cps).intersection(*(render.font_codepoints(f) for f in fonts)))
    if not common_cps:
      raise ValueError(f"glyph_han: no character of charset {o['charset']!r} is drawn by every "
                       f"font {fonts} (empty class list)")
    max_classes = DEFAULT_MAX_CLASSES if o["max_classes"] is None else o["max_classes"]
    names, images, labels, srcs = [], [], [], []
    for cp in glyphs.evenly_spaced(common_cps, max_classes):
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
  """The build options of `data_config` `c` (fonts resolved, so the config hash names them)."""
  cps = glyphs.parse_charset(str(c.charset), HAN_BLOCKS, DEFAULT_CHARSET)
  fonts = han_fonts(str(c.fonts), cps)
  return {"image_size": int(c.image_size or 32), "fonts": fonts,
          "query_fonts": query_font_list(str(c.query_fonts), fonts), "charset": str(c.charset),
          "renders_per_font": int(c.renders_per_font), "max_classes": c.max_classes,
          "heldout_class_fraction": float(c.heldout_class_fraction),
          "test_fraction": float(c.test_fraction)}
