"""AutoAugment's ImageNet policy (Cubuk et al. 2019) in jnp, op for op as PIL computes it.

`autoaugment(key, img) -> img` on one float32 `[H, W, C]` image in `[0, 1]`: one of the 25
sub-policies of `IMAGENET_POLICY` is drawn uniformly; each of its two operations is applied with
its probability, at its magnitude bin (0..9), with a random sign for the signed ops. The policy,
the magnitude bins and the signs are those of torchvision's `AutoAugment(IMAGENET)` (10 bins):

  Rotate     30 * b / 9 degrees (signed)         ShearX   0.3 * b / 9 (signed)
  Color, Contrast, Sharpness: factor 1 + 0.9 * b / 9 (signed)
  Posterize  8 - round(b / 2.25) bits            Solarize threshold 255 * (1 - b / 9)
  AutoContrast, Equalize, Invert: no magnitude

Every op works on 8-bit levels `v = round(255 x)` and reproduces PIL's integer arithmetic
(`ImageOps.posterize/solarize/autocontrast/equalize/invert`, `ImageEnhance.Color/Contrast/
Sharpness`, `Image.rotate` / `Image.transform(AFFINE)` with NEAREST resampling and fill 0,
as torchvision calls them); tests/data_autoaugment_test.py compares each with PIL. The ops are
pure functions of (key, image): jit- and vmap-safe, so the policy runs on device like the other
families of `sim_jax.data.augment`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, bin).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
NUM_BINS = 10
SIGNED = ("Rotate", "ShearX", "Color", "Contrast", "Sharpness")


# ------------------------------------------------------------- ops on 8-bit levels (float32 0..255)


def posterize(v, bits):
  """Keeps the `bits` high bits of each level (PIL ImageOps.posterize)."""
  q = 2.0 ** (8 - bits)
  return jnp.floor(v / q) * q


def solarize(v, threshold):
  """Inverts the levels >= threshold (PIL ImageOps.solarize)."""
  return jnp.where(v < threshold, v, 255.0 - v)


def invert(v):
  return 255.0 - v


def autocontrast(v):
  """Per channel: maps [lo, hi] = [min, max] to [0, 255], floor((v - lo) * 255 / (hi - lo)) in
  exact integers (PIL ImageOps.autocontrast, cutoff 0, computes it in float64 and may land one
  level lower where the value is an exact integer); a constant channel is left as is."""
  lo = jnp.min(v, axis=(0, 1), keepdims=True)
  hi = jnp.max(v, axis=(0, 1), keepdims=True)
  num = ((v - lo) * 255.0).astype(jnp.int32)
  out = (num // jnp.maximum(hi - lo, 1.0).astype(jnp.int32)).astype(v.dtype)
  return jnp.where(hi > lo, out, v)


def _equalize_channel(c):
  """PIL ImageOps.equalize of one channel [H, W]: h = histogram, step = (N - h[last]) // 255
  (last = highest level present), lut[i] = (step // 2 + sum(h[:i])) // step; identity when
  step is 0 or a single level is present."""
  levels = c.astype(jnp.int32).reshape(-1)
  h = jnp.zeros(256, jnp.int32).at[levels].add(1)
  last = h[jnp.max(levels)]
  step = (levels.size - last) // 255
  before = jnp.cumsum(h) - h
  lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
  return jnp.where(step > 0, lut[levels].reshape(c.shape).astype(c.dtype), c)


def equalize(v):
  return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(v)


def _blend(degenerate, v, factor):
  """PIL Image.blend(degenerate, image, factor): truncates `d + factor * (v - d)` to 0..255."""
  return jnp.clip(jnp.floor(degenerate + jnp.float32(factor) * (v - degenerate)), 0.0, 255.0)


def _luma(v):
  """PIL's convert("L") of 8-bit RGB: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
  if v.shape[-1] == 1:
    return v
  w = jnp.array([19595.0, 38470.0, 7471.0])
  return jnp.floor((jnp.sum(v * w, -1, keepdims=True) + 32768.0) / 65536.0)


def color(v, factor):
  """PIL ImageEnhance.Color: blend with the image's luma (identity for one channel)."""
  if v.shape[-1] == 1:
    return v
  return _blend(jnp.broadcast_to(_luma(v), v.shape), v, factor)


def contrast(v, factor):
  """PIL ImageEnhance.Contrast: blend with the constant int(mean luma + 0.5)."""
  mean = jnp.floor(jnp.mean(_luma(v)) + 0.5)
  return _blend(jnp.full_like(v, mean), v, factor)


def sharpness(v, factor):
  """PIL ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (3x3 kernel [1 1 1; 1 5 1; 1 1 1]
  / 13, rounded; the border rows and columns keep their levels)."""
  h, w, _ = v.shape
  pad = jnp.pad(v, ((1, 1), (1, 1), (0, 0)), mode="edge")
  s = sum(pad[i:i + h, j:j + w] for i in range(3) for j in range(3)) + 4.0 * v
  smooth = jnp.clip(jnp.floor(s / 13.0 + 0.5), 0.0, 255.0)
  inner = jnp.zeros((h, w, 1), bool).at[1:-1, 1:-1].set(True)
  return _blend(jnp.where(inner, smooth, v), v, factor)


def affine_nearest(v, matrix):
  """PIL Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST, fill 0): output pixel (x, y)
  reads input pixel (floor(a x' + b y' + c), floor(d x' + e y' + f)), x' = x + 0.5,
  y' = y + 0.5; outside the image reads 0."""
  h, w, _ = v.shape
  a, b, c, d, e, f = (jnp.float32(m) for m in matrix)
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
  xi = jnp.floor(a * xx + b * yy + c).astype(jnp.int32)
  yi = jnp.floor(d * xx + e * yy + f).astype(jnp.int32)
  inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  out = v[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
  return jnp.where(inside[..., None], out, 0.0)


def rotate(v, degrees):
  """PIL Image.rotate(degrees, NEAREST, fillcolor=0): counter-clockwise about (W/2, H/2)."""
  h, w, _ = v.shape
  t = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(t), jnp.sin(t)
  cx, cy = w / 2.0, h / 2.0
  return affine_nearest(v, (cos, sin, cx - cos * cx - sin * cy,
                            -sin, cos, cy + sin * cx - cos * cy))


def shear_x(v, m):
  """torchvision's ShearX on PIL: affine about the top-left corner, x_in = x + m * y."""
  return affine_nearest(v, (1.0, m, 0.0, 0.0, 1.0, 0.0))


# ---------------------------------------------------------------------------------------- policy

OPS = ("Posterize", "Rotate", "Solarize", "AutoContrast", "Equalize", "Color", "Contrast",
       "Sharpness", "ShearX", "Invert")


def magnitude(op: str, bin_: int | None) -> float:
  """torchvision's magnitude of bin `bin_` (unsigned) for `op`; 0.0 for the ops without one."""
  if bin_ is None:
    return 0.0
  b = float(bin_)
  return {"Rotate": 30.0 * b / 9, "ShearX": 0.3 * b / 9, "Color": 0.9 * b / 9,
          "Contrast": 0.9 * b / 9, "Sharpness": 0.9 * b / 9,
          "Posterize": float(8 - int(np.round(b / 2.25))),
          "Solarize": 255.0 * (1.0 - b / 9)}[op]


_BRANCHES = (
    lambda v, m: posterize(v, m),
    rotate,
    solarize,
    lambda v, m: autocontrast(v),
    lambda v, m: equalize(v),
    lambda v, m: color(v, 1.0 + m),
    lambda v, m: contrast(v, 1.0 + m),
    lambda v, m: sharpness(v, 1.0 + m),
    shear_x,
    lambda v, m: invert(v),
)


def _tables():
  op = np.array([[OPS.index(o) for o, _, _ in sub] for sub in IMAGENET_POLICY], np.int32)
  prob = np.array([[p for _, p, _ in sub] for sub in IMAGENET_POLICY], np.float32)
  mag = np.array([[magnitude(o, b) for o, _, b in sub] for sub in IMAGENET_POLICY], np.float32)
  signed = np.array([[o in SIGNED for o, _, _ in sub] for sub in IMAGENET_POLICY])
  return op, prob, mag, signed


_OP, _PROB, _MAG, _SIGNED_TABLE = _tables()


def apply_op(v, op: int, m):
  """Op `OPS[op]` at signed magnitude `m` on 8-bit levels (traceable `op`)."""
  return jax.lax.switch(op, _BRANCHES, v, m)


def autoaugment(key, img):
  """One image, float32 [H, W, C] in [0, 1] -> same; see the module docstring."""
  k_sub, k_apply, k_sign = jax.random.split(key, 3)
  sub = jax.random.randint(k_sub, (), 0, len(IMAGENET_POLICY))
  apply = jax.random.uniform(k_apply, (2,)) < jnp.asarray(_PROB)[sub]
  flip = jax.random.bernoulli(k_sign, 0.5, (2,)) & jnp.asarray(_SIGNED_TABLE)[sub]
  v = jnp.round(jnp.clip(img, 0.0, 1.0) * 255.0)
  for j in range(2):
    m = jnp.where(flip[j], -1.0, 1.0) * jnp.asarray(_MAG)[sub, j]
    v = jnp.where(apply[j], apply_op(v, jnp.asarray(_OP)[sub, j], m), v)
  return v / 255.0
