"""Glyph rendering with PIL: a character in a font -> a centred uint8 [S, S] image (ink = 255).

Rendering is deterministic: the same font file, text, size and jitter draw give the same bytes.
"""

from __future__ import annotations

import functools
import glob
import os

import matplotlib
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

FONT_EXTENSIONS = (".ttf", ".otf", ".ttc")
_REF_SIZE = 96  # points at which glyphs are drawn before being fitted into S x S


@functools.lru_cache(maxsize=256)
def load_font(path: str, size: int = _REF_SIZE) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=256)
def font_codepoints(path: str) -> frozenset[int]:
  """Code points the font's best cmap maps (fontTools); the first face of a collection."""
  font = TTFont(path, lazy=True, fontNumber=0) if path.endswith(".ttc") else TTFont(path, lazy=True)
  return frozenset(font.getBestCmap() or {})


def discover_fonts(spec: str, default_dirs: list[str], exclude: tuple[str, ...] = ()) -> list[str]:
  """Font files from a comma-separated list of files/directories, or `default_dirs` when empty.

  Directories are searched recursively for .ttf/.otf/.ttc; the result is sorted (so the build is
  reproducible). Raises ValueError naming a path that does not exist.
  """
  entries = [s.strip() for s in spec.split(",") if s.strip()] if spec else default_dirs
  fonts = []
  for entry in entries:
    if os.path.isdir(entry):
      for ext in FONT_EXTENSIONS:
        fonts += glob.glob(os.path.join(entry, "**", "*" + ext), recursive=True)
    elif os.path.isfile(entry):
      fonts.append(entry)
    else:
      raise ValueError(f"font path {entry!r} does not exist (data.fonts={spec!r})")
  return sorted({os.path.realpath(f) for f in fonts
                 if not any(x in os.path.basename(f) for x in exclude)})


def matplotlib_fonts() -> list[str]:
  """The TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern), minus LastResort."""
  return discover_fonts("", [os.path.join(matplotlib.get_data_path(), "fonts", "ttf")],
                        exclude=("LastResort",))


def ink_crop(font_path: str, text: str, stroke: int = 0) -> np.ndarray | None:
  """The glyph drawn at the reference size, cropped to its ink; None when nothing is drawn."""
  font = load_font(font_path)
  pad = _REF_SIZE // 2 + stroke
  left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
  w, h = right - left + 2 * pad, bottom - top + 2 * pad
  if w <= 2 * pad or h <= 2 * pad:
    return None
  canvas = Image.new("L", (w, h), 0)
  ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=255,
                              stroke_width=stroke, stroke_fill=255)
  box = canvas.getbbox()
  if box is None:
    return None
  return np.asarray(canvas.crop(box))


def fit(ink: np.ndarray, size: int, *, fill: float = 0.8, angle: float = 0.0,
        scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """Places an ink crop in a size x size canvas: longest side = fill*scale*size, then rotation
  by `angle` degrees and a shift by `shift` (fractions of size). uint8 [size, size]."""
  img = Image.fromarray(ink)
  if angle:
    img = img.rotate(angle, resample=Image.BILINEAR, expand=True)
  longest = max(img.size)
  target = max(1.0, fill * scale * size)
  w = max(1, int(round(img.size[0] * target / longest)))
  h = max(1, int(round(img.size[1] * target / longest)))
  img = img.resize((w, h), Image.LANCZOS)
  out = Image.new("L", (size, size), 0)
  x = int(round((size - w) / 2 + shift[0] * size))
  y = int(round((size - h) / 2 + shift[1] * size))
  out.paste(img, (x, y))
  return np.asarray(out)


def jitter_params(rng: np.random.Generator, strength: float = 1.0) -> dict:
  """Random small affine jitter: rotation +-8 deg, scale 0.75..1, shift +-6% (times strength)."""
  return {"angle": float(rng.uniform(-8, 8) * strength),
          "scale": float(1.0 - rng.uniform(0, 0.25) * strength),
          "shift": (float(rng.uniform(-0.06, 0.06) * strength),
                    float(rng.uniform(-0.06, 0.06) * strength))}


def render(font_path: str, text: str, size: int, rng: np.random.Generator | None = None,
           stroke: int = 0) -> np.ndarray | None:
  """uint8 [size, size] rendering (jittered when `rng` is given); None when the glyph is blank."""
  ink = ink_crop(font_path, text, stroke)
  if ink is None:
    return None
  params = jitter_params(rng) if rng is not None else {}
  return fit(ink, size, **params)
