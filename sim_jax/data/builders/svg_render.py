"""Icon files -> RGB pixels: SVG through librsvg (in process, via ctypes), PNG through PIL.

Why librsvg: it is the renderer GNOME, Xfce and MATE draw these very themes with (so the pixels are
what the designers checked), it implements the SVG features the themes use (filters such as the
Gaussian-blur shadows of Faenza and Oxygen, masks, gzip-compressed `.svgz`), and it is maintained
by GNOME. Debian ships it as `librsvg2-2` (with `libcairo2`); calling its C API through ctypes
renders in the builder's own process (about 3 ms for a 64 px icon; spawning `rsvg-convert` per file
costs several times that) and adds no PyPI dependency. cairosvg, the alternative, has no filter
support, so shadows and blurs would be lost.

Pixels (`render_svg` / `load_png`): the icon is drawn into a `size` x `size` transparent canvas
(SVG: librsvg fits the document's viewBox into the canvas keeping its aspect ratio, centred; PNG:
padded to a square, then resized with PIL's Lanczos filter), then alpha-composited onto the
constant `background` colour:  rgb = premultiplied_rgb + (255 - alpha) * background / 255.
Compositing first is exact for a constant background (resampling and compositing are both linear
in premultiplied space). Both paths are deterministic: the same file and library versions give the
same bytes.
"""

from __future__ import annotations

import ctypes
import functools
import gzip

import numpy as np
from PIL import Image

# Shared objects (sonames) of Debian's packages: librsvg2-2, libcairo2, libglib2.0-0.
LIBRARIES = {"rsvg": ("librsvg-2.so.2", "librsvg2-2"), "cairo": ("libcairo.so.2", "libcairo2"),
             "gobject": ("libgobject-2.0.so.0", "libglib2.0-0"),
             "glib": ("libglib-2.0.so.0", "libglib2.0-0")}
CAIRO_FORMAT_ARGB32 = 0
VECTOR_EXTENSIONS = (".svg", ".svgz")
RASTER_EXTENSIONS = (".png",)


class _Rect(ctypes.Structure):
  _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("width", ctypes.c_double),
              ("height", ctypes.c_double)]


class _GError(ctypes.Structure):
  _fields_ = [("domain", ctypes.c_uint32), ("code", ctypes.c_int), ("message", ctypes.c_char_p)]


def missing_libraries() -> list[str]:
  """Debian packages whose shared library cannot be loaded (empty when SVG rendering works)."""
  missing = []
  for soname, package in LIBRARIES.values():
    try:
      ctypes.CDLL(soname)
    except OSError:
      missing.append(package)
  return sorted(set(missing))


@functools.lru_cache(maxsize=1)
def _libs():
  """The four C libraries with the signatures used here (loaded once per process)."""
  missing = missing_libraries()
  if missing:
    raise ValueError(f"rendering SVG icons needs librsvg and cairo; install the Debian "
                     f"packages: apt-get install {' '.join(missing)}")
  rsvg, cairo, gobject, glib = (ctypes.CDLL(LIBRARIES[k][0])
                                for k in ("rsvg", "cairo", "gobject", "glib"))
  err_p = ctypes.POINTER(ctypes.POINTER(_GError))
  rsvg.rsvg_handle_new_from_data.restype = ctypes.c_void_p
  rsvg.rsvg_handle_new_from_data.argtypes = [ctypes.c_char_p, ctypes.c_size_t, err_p]
  rsvg.rsvg_handle_render_document.restype = ctypes.c_int
  rsvg.rsvg_handle_render_document.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.POINTER(_Rect), err_p]
  cairo.cairo_image_surface_create.restype = ctypes.c_void_p
  cairo.cairo_image_surface_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  cairo.cairo_create.restype = ctypes.c_void_p
  cairo.cairo_create.argtypes = [ctypes.c_void_p]
  cairo.cairo_image_surface_get_data.restype = ctypes.POINTER(ctypes.c_ubyte)
  cairo.cairo_image_surface_get_data.argtypes = [ctypes.c_void_p]
  cairo.cairo_image_surface_get_stride.argtypes = [ctypes.c_void_p]
  for fn in ("cairo_surface_flush", "cairo_destroy", "cairo_surface_destroy"):
    getattr(cairo, fn).argtypes = [ctypes.c_void_p]
  gobject.g_object_unref.argtypes = [ctypes.c_void_p]
  glib.g_error_free.argtypes = [ctypes.POINTER(_GError)]
  return rsvg, cairo, gobject, glib


def _raise_gerror(glib, err, path: str):
  message = err.contents.message.decode("utf-8", "replace") if err else "unknown error"
  if err:
    glib.g_error_free(err)
  raise ValueError(f"librsvg cannot render {path}: {message}")


def rsvg_rgba(data: bytes, size: int, path: str = "<data>") -> np.ndarray:
  """uint8 [size, size, 4] premultiplied RGBA of an SVG document (gzip accepted)."""
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  rsvg, cairo, gobject, glib = _libs()
  err = ctypes.POINTER(_GError)()
  handle = rsvg.rsvg_handle_new_from_data(data, len(data), ctypes.byref(err))
  if not handle:
    _raise_gerror(glib, err, path)
  surface = cairo.cairo_image_surface_create(CAIRO_FORMAT_ARGB32, size, size)
  cr = cairo.cairo_create(surface)
  try:
    ok = rsvg.rsvg_handle_render_document(handle, cr, ctypes.byref(_Rect(0, 0, size, size)),
                                          ctypes.byref(err))
    cairo.cairo_surface_flush(surface)
    stride = cairo.cairo_image_surface_get_stride(surface)
    buf = np.ctypeslib.as_array(cairo.cairo_image_surface_get_data(surface),
                                shape=(size * stride,)).copy()
  finally:
    cairo.cairo_destroy(cr)
    cairo.cairo_surface_destroy(surface)
    gobject.g_object_unref(handle)
  if not ok:
    _raise_gerror(glib, err, path)
  # Cairo's ARGB32 is a native-endian 32-bit word: bytes B, G, R, A on little-endian machines.
  bgra = buf.reshape(size, stride)[:, :size * 4].reshape(size, size, 4)
  order = [2, 1, 0, 3] if np.little_endian else [1, 2, 3, 0]
  return bgra[..., order]


def composite(premultiplied_rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
  """uint8 [..., 3]: rgb + (255 - a) * background / 255, rounded (premultiplied input)."""
  x = premultiplied_rgba.astype(np.int32)
  bg = np.asarray(background, np.int32)
  out = x[..., :3] + ((255 - x[..., 3:]) * bg + 127) // 255
  return np.clip(out, 0, 255).astype(np.uint8)


def render_svg(path: str, size: int, background: tuple[int, int, int]) -> np.ndarray:
  """uint8 [size, size, 3]: the SVG/SVGZ file drawn by librsvg on `background`."""
  with open(path, "rb") as f:
    data = f.read()
  return composite(rsvg_rgba(data, size, path), background)


def load_png(path: str, size: int, background: tuple[int, int, int]) -> np.ndarray:
  """uint8 [size, size, 3]: the PNG centred on a transparent square, composited on `background`,
  then resized to `size` (Lanczos)."""
  with Image.open(path) as im:
    rgba = im.convert("RGBA")
  w, h = rgba.size
  side = max(w, h)
  canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
  canvas.paste(rgba, ((side - w) // 2, (side - h) // 2))
  flat = Image.alpha_composite(Image.new("RGBA", (side, side), (*background, 255)), canvas)
  flat = flat.convert("RGB")
  if side != size:
    flat = flat.resize((size, size), Image.Resampling.LANCZOS)
  return np.asarray(flat, np.uint8)


def render_file(path: str, size: int, background: tuple[int, int, int]) -> np.ndarray:
  """uint8 [size, size, 3] of an icon file (.svg, .svgz or .png); ValueError if unreadable."""
  lower = path.lower()
  if lower.endswith(VECTOR_EXTENSIONS):
    return render_svg(path, size, background)
  if lower.endswith(RASTER_EXTENSIONS):
    try:
      return load_png(path, size, background)
    except OSError as e:
      raise ValueError(f"PIL cannot read {path}: {e}") from e
  raise ValueError(f"not an icon file (.svg, .svgz, .png): {path}")
