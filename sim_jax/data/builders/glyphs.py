"""Glyph datasets: a class is a character (or icon concept), its examples are its renderings
in different fonts / styles plus deterministic jitter. `glyph_symbols` lives here; the icon and
Han builders reuse `glyph_examples`.
"""

from __future__ import annotations

import numpy as np

from sim_jax.data import samplers
from sim_jax.data.builders import common, render

# Unicode blocks of the default symbol set; every code point kept has >= MIN_FONTS renderings.
SYMBOL_BLOCKS = {
    "arrows": (0x2190, 0x21FF),
    "math": (0x2200, 0x22FF),
    "technical": (0x2300, 0x23FF),
    "geometric": (0x25A0, 0x25FF),
    "misc_symbols": (0x2600, 0x26FF),
    "dingbats": (0x2700, 0x27BF),
    "letterlike": (0x2100, 0x214F),
    "greek": (0x0391, 0x03C9),
}
DEFAULT_SYMBOLS = "arrows,geometric,misc_symbols,dingbats,math"
MIN_FONTS = 4
# Size variants (large operators) and the tiny "Display" fonts add near-duplicates, not styles.
_EXCLUDED_FONTS = ("LastResort", "STIXSiz", "Display")


def parse_charset(spec: str, blocks: dict[str, tuple[int, int]], default: str) -> list[int]:
  """Code points of a comma-separated charset: block names, `U+XXXX`, `U+XXXX-U+YYYY`, or
  literal characters. "default" means `default`. Sorted, unique; ValueError when empty."""
  spec = default if spec in ("", "default") else spec
  cps: set[int] = set()
  for token in (t.strip() for t in spec.split(",")):
    if not token:
      continue
    if token in blocks:
      a, b = blocks[token]
      cps.update(range(a, b + 1))
    elif token.upper().startswith("U+"):
      a, _, b = token.upper().partition("-")
      lo = int(a[2:], 16)
      hi = int(b[2:], 16) if b else lo
      cps.update(range(lo, hi + 1))
    else:
      cps.update(ord(ch) for ch in token)
  if not cps:
    raise ValueError(f"charset {spec!r} names no characters; use block names "
                     f"{sorted(blocks)}, U+XXXX ranges or literal characters")
  return sorted(cps)


def evenly_spaced(items: list, n: int | None) -> list:
  """`n` items spread over the list (all when n is None or >= len)."""
  if n is None or n >= len(items):
    return list(items)
  if n < 1:
    raise ValueError(f"max_classes must be >= 1, got {n}")
  return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def glyph_examples(classes: list[tuple[str, list[tuple[str, str]]]], size: int,
                   renders_per_font: int, min_renderings: int, seed_tag: int,
                   max_classes: int | None = None, styles=None):
  """Renders every class; returns (class_names, images uint8 [N,S,S,1], labels, sources).

  `classes`: (class name, [(font path, text), ...]) candidates. A class keeps its clean
  renderings plus `renders_per_font - 1` jittered ones per (font, text); blank glyphs are dropped
  and classes with fewer than `min_renderings` distinct (font, text) renderings are dropped
  before `max_classes` picks an evenly spaced subset. `styles(rng, image) -> image` optionally
  restyles jittered renderings. Jitter draws depend only on (seed_tag, class, font, j).
  """
  if renders_per_font < 1:
    raise ValueError(f"renders_per_font must be >= 1, got {renders_per_font}")
  kept = []
  for name, variants in classes:
    clean = [(f, t, render.render(f, t, size)) for f, t in variants]
    clean = [(f, t, img) for f, t, img in clean if img is not None and img.any()]
    if len(clean) >= min_renderings:
      kept.append((name, clean))
  kept = evenly_spaced(kept, max_classes)
  names, images, labels, srcs = [], [], [], []
  for label, (name, clean) in enumerate(kept):
    names.append(name)
    for v, (font, text, img) in enumerate(clean):
      images.append(img)
      labels.append(label)
      srcs.append(font)
      for j in range(1, renders_per_font):
        rng = samplers.rng_for(seed_tag, 11, label * 1000 + v, j)
        out = render.render(font, text, size, rng=rng)
        if styles is not None:
          out = styles(rng, out)
        images.append(out)
        labels.append(label)
        srcs.append(font)
  images = np.stack(images)[..., None] if images else np.zeros((0, size, size, 1), np.uint8)
  return names, images, np.array(labels, np.int64), srcs


def split_examples(names, images, labels, srcs, heldout_class_fraction, test_fraction,
                   assign=None):
  """{split: [(key, record)]} with `id` = position in the full rendering list."""
  if assign is None:
    assign = common.assign_examples(labels, heldout_class_fraction, test_fraction)
  return {split: [(int(i), {"image": images[i], "label": int(labels[i]), "id": int(i),
                            "class_name": names[labels[i]], "source": srcs[i]}) for i in idx]
          for split, idx in assign.items()}


class GlyphSymbols(common.SimJaxBuilder):
  """Unicode symbols rendered from every font matplotlib ships (DejaVu, STIX, Computer Modern).

  A class is a code point (name `U+XXXX`), kept when >= 4 fonts draw it; each font contributes
  one clean rendering and `renders_per_font - 1` jittered ones (rotation, scale, shift).
  Options: image_size, fonts, charset, renders_per_font, max_classes, heldout_class_fraction,
  test_fraction. Splits: train / test (by example) / heldout (by class, when requested).
  """

  def image_shape(self):
    s = self.builder_config.options["image_size"]
    return (s, s, 1)

  def make_splits(self):
    o = self.builder_config.options
    cps = parse_charset(o["charset"], SYMBOL_BLOCKS, DEFAULT_SYMBOLS)
    classes = [(f"U+{cp:04X}", [(f, chr(cp)) for f in o["fonts"]
                                 if cp in render.font_codepoints(f)]) for cp in cps]
    names, images, labels, srcs = glyph_examples(
        classes, o["image_size"], o["renders_per_font"], MIN_FONTS, seed_tag=0,
        max_classes=o["max_classes"])
    return names, split_examples(names, images, labels, srcs, o["heldout_class_fraction"],
                                 o["test_fraction"])


def symbol_fonts(spec: str) -> list[str]:
  """Fonts for glyph_symbols: matplotlib's own (minus size variants) unless `spec` names some."""
  if spec:
    return render.discover_fonts(spec, [])
  return [f for f in render.matplotlib_fonts() if not any(x in f for x in _EXCLUDED_FONTS)]
