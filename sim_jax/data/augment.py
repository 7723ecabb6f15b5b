"""On-device image augmentations in jnp: `make_augment_fn(aug_config)(key, images) -> images`.

Images are float32 `[B, H, W, C]` in `[0, 1]`; the output has the same shape, dtype and range.
Each example gets its own key (`jax.random.split(key, B)`) and the per-image function is
vmapped, so the result is a pure function of (key, images): jit-safe and deterministic per key.

Families (`aug_config.name`):
- `none`: identity.
- `simclr` (Chen et al. 2020, appendix A): random resized crop (area in [min_scale, 1], aspect
  in [3/4, 4/3]), horizontal flip (p=0.5), colour jitter (p=0.8; brightness, contrast,
  saturation 0.8*s, hue 0.2*s), grayscale (p=0.2), Gaussian blur (p=0.5, sigma in [0.1, 2] px
  at 32 px, scaled with H), with s = `strength`.
- `randaugment` (Cubuk et al. 2020): `num_ops` ops drawn uniformly, each at `magnitude`/30.
- `trivialaugment` (Mueller & Hutter 2021): one op, magnitude uniform in [0, 1].
- `autoaugment` (Cubuk et al. 2019): the ImageNet policy, one of 25 fixed sub-policies of two
  ops, on 8-bit levels as PIL computes them (`sim_jax.data.autoaugment`; `strength` unused).
- `glyph`: affine jitter (rotation, scale, shift), stroke thickness (3x3 max / min pooling =
  dilation / erosion, each p=1/3) and additive Gaussian background noise (sigma 0.08*s).
Geometric ops resample bilinearly (`jax.scipy.ndimage.map_coordinates`) and fill outside the
image with 0 (black: glyphs are white ink on black). `strength` scales every magnitude.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from sim_jax.data import autoaugment

NAMES = ("none", "simclr", "randaugment", "trivialaugment", "glyph", "autoaugment")


def _warp(img: jax.Array, inv: jax.Array) -> jax.Array:
  """Resamples img at `inv @ [y, x, 1]` (a 2x3 affine map from output to input pixel centres)."""
  h, w, c = img.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  coords = jnp.stack([yy, xx, jnp.ones_like(yy)], 0).reshape(3, -1)
  src = inv @ coords
  sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src[0], src[1]], order=1,
                                                        mode="constant", cval=0.0)
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(img).reshape(h, w, c)


def _affine(img, angle=0.0, scale=1.0, shear_x=0.0, shear_y=0.0, tx=0.0, ty=0.0):
  """Rotation (radians) / scale / shear / translation (fractions of size) about the centre."""
  h, w, _ = img.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  fwd = jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[1.0, shear_y], [shear_x, 1.0]]) * scale
  inv = jnp.linalg.inv(fwd)
  centre = jnp.array([cy, cx])
  offset = centre - inv @ (centre + jnp.array([ty * h, tx * w]))
  return _warp(img, jnp.concatenate([inv, offset[:, None]], 1))


def _gray(img):
  if img.shape[-1] == 1:
    return img
  return jnp.sum(img * jnp.array([0.299, 0.587, 0.114]), -1, keepdims=True)


def _blend(a, b, factor):
  return jnp.clip(b + factor * (a - b), 0.0, 1.0)


def brightness(img, f):
  return jnp.clip(img * f, 0.0, 1.0)


def contrast(img, f):
  return _blend(img, jnp.mean(_gray(img)), f)


def saturation(img, f):
  return _blend(img, _gray(img), f) if img.shape[-1] == 3 else img


def hue(img, delta):
  """Rotates hue by `delta` turns in YIQ space (identity for gray images)."""
  if img.shape[-1] != 3:
    return img
  to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
  yiq = img @ to_yiq.T
  t = 2 * jnp.pi * delta
  rot = jnp.array([[1, 0, 0], [0, jnp.cos(t), -jnp.sin(t)], [0, jnp.sin(t), jnp.cos(t)]])
  return jnp.clip(yiq @ rot.T @ jnp.linalg.inv(to_yiq).T, 0.0, 1.0)


def gaussian_blur(img, sigma):
  """Separable Gaussian blur with a fixed 2*ceil(0.1*H)+1 tap kernel (shape static for jit)."""
  radius = max(1, int(0.1 * img.shape[0] + 0.999))
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (x / jnp.maximum(sigma, 1e-3)) ** 2)
  k = k / k.sum()
  pad = jnp.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
  rows = sum(k[i] * pad[i:i + img.shape[0]] for i in range(2 * radius + 1))
  return sum(k[i] * rows[:, i:i + img.shape[1]] for i in range(2 * radius + 1))


def _pool(img, fn):
  pad = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w, _ = img.shape
  return functools.reduce(fn, [pad[i:i + h, j:j + w] for i in range(3) for j in range(3)])


def dilate(img):
  return _pool(img, jnp.maximum)


def erode(img):
  return _pool(img, jnp.minimum)


def random_resized_crop(key, img, min_scale):
  """Crop of area in [min_scale, 1] x image, aspect ratio in [3/4, 4/3] (log-uniform), resized
  back to H x W (bilinear)."""
  h, w, _ = img.shape
  k1, k2, k3, k4 = jax.random.split(key, 4)
  area = jax.random.uniform(k1, minval=min_scale, maxval=1.0)
  log_ratio = jax.random.uniform(k2, minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3))
  ratio = jnp.exp(log_ratio)
  ch = jnp.clip(jnp.sqrt(area / ratio), 0.05, 1.0) * h
  cw = jnp.clip(jnp.sqrt(area * ratio), 0.05, 1.0) * w
  y0 = jax.random.uniform(k3) * (h - ch)
  x0 = jax.random.uniform(k4) * (w - cw)
  inv = jnp.array([[ch / h, 0.0, y0 + 0.5 * ch / h - 0.5], [0.0, cw / w, x0 + 0.5 * cw / w - 0.5]])
  return _warp(img, inv)


def simclr(key, img, strength, min_scale):
  ks = jax.random.split(key, 10)
  s = strength
  img = random_resized_crop(ks[0], img, min_scale)
  img = jnp.where(jax.random.bernoulli(ks[1]), img[:, ::-1], img)
  u = lambda k, m: jax.random.uniform(k, minval=1 - m, maxval=1 + m)
  jittered = brightness(img, u(ks[2], 0.8 * s))
  jittered = contrast(jittered, u(ks[3], 0.8 * s))
  jittered = saturation(jittered, u(ks[4], 0.8 * s))
  jittered = hue(jittered, jax.random.uniform(ks[5], minval=-0.2 * s, maxval=0.2 * s))
  img = jnp.where(jax.random.bernoulli(ks[6], 0.8), jittered, img)
  img = jnp.where(jax.random.bernoulli(ks[7], 0.2), jnp.broadcast_to(_gray(img), img.shape), img)
  sigma = jax.random.uniform(ks[8], minval=0.1, maxval=2.0) * img.shape[0] / 32.0 * s
  img = jnp.where(jax.random.bernoulli(ks[9], 0.5 * (s > 0)), gaussian_blur(img, sigma), img)
  return jnp.clip(img, 0.0, 1.0)


def _signed(key, m):
  return jnp.where(jax.random.bernoulli(key), m, -m)


# RandAugment / TrivialAugment ops: (key, img, m in [0, 1]) -> img (ranges of Cubuk et al.).
_OPS = (
    lambda k, x, m: x,  # identity
    lambda k, x, m: _blend(x, (x - x.min()) / jnp.maximum(x.max() - x.min(), 1e-6), 1.0),
    lambda k, x, m: _affine(x, angle=_signed(k, m * jnp.deg2rad(30.0))),  # rotate
    lambda k, x, m: jnp.where(x >= 1.0 - m, 1.0 - x, x),  # solarize (threshold 1 - m)
    lambda k, x, m: saturation(x, 1.0 + _signed(k, 0.9 * m)),  # color
    lambda k, x, m: jnp.floor(x * 2 ** (8 - jnp.round(4 * m))) / 2 ** (8 - jnp.round(4 * m)),
    lambda k, x, m: contrast(x, 1.0 + _signed(k, 0.9 * m)),
    lambda k, x, m: brightness(x, 1.0 + _signed(k, 0.9 * m)),
    lambda k, x, m: _blend(x, gaussian_blur(x, 1.0), 1.0 + _signed(k, 0.9 * m)),  # sharpness
    lambda k, x, m: _affine(x, shear_x=_signed(k, 0.3 * m)),
    lambda k, x, m: _affine(x, shear_y=_signed(k, 0.3 * m)),
    lambda k, x, m: _affine(x, tx=_signed(k, 0.3 * m)),
    lambda k, x, m: _affine(x, ty=_signed(k, 0.3 * m)),
)


def _apply_op(key, img, m):
  k1, k2 = jax.random.split(key)
  op = jax.random.randint(k1, (), 0, len(_OPS))
  return jnp.clip(jax.lax.switch(op, _OPS, k2, img, m), 0.0, 1.0)


def randaugment(key, img, num_ops, magnitude):
  for k in jax.random.split(key, num_ops):
    img = _apply_op(k, img, magnitude)
  return img


def trivialaugment(key, img, strength):
  k1, k2 = jax.random.split(key)
  return _apply_op(k2, img, jax.random.uniform(k1) * strength)


def glyph(key, img, strength):
  ks = jax.random.split(key, 7)
  s = strength
  u = lambda k, lo, hi: jax.random.uniform(k, minval=lo, maxval=hi)
  img = _affine(img, angle=u(ks[0], -1.0, 1.0) * jnp.deg2rad(10.0) * s,
                scale=1.0 + u(ks[1], -0.15, 0.1) * s, tx=u(ks[2], -0.08, 0.08) * s,
                ty=u(ks[3], -0.08, 0.08) * s)
  which = jax.random.randint(ks[4], (), 0, 3) * (s > 0)
  img = jax.lax.switch(which, (lambda x: x, dilate, erode), img)
  noise = jax.random.normal(ks[5], img.shape) * 0.08 * s * jax.random.uniform(ks[6])
  return jnp.clip(img + noise, 0.0, 1.0)


def make_augment_fn(aug_config: ml_collections.ConfigDict):
  """Returns `fn(key, images f32 [B, H, W, C] in [0, 1]) -> same shape/dtype/range`.

  Raises ValueError for an unknown `aug_config.name` or a negative strength.
  """
  name = str(aug_config.name)
  if name not in NAMES:
    raise ValueError(f"augment.name={name!r} is not one of {NAMES}")
  strength = float(aug_config.strength)
  if strength < 0:
    raise ValueError(f"augment.strength must be >= 0, got {strength}")
  if name == "none":
    return lambda key, images: images
  if name == "simclr":
    if not 0.0 < float(aug_config.min_scale) <= 1.0:
      raise ValueError(f"augment.min_scale must be in (0, 1], got {aug_config.min_scale}")
    one = functools.partial(simclr, strength=strength, min_scale=float(aug_config.min_scale))
  elif name == "randaugment":
    if int(aug_config.num_ops) < 1 or not 0 <= aug_config.magnitude <= 30:
      raise ValueError(f"randaugment needs num_ops >= 1 and magnitude in [0, 30], got "
                       f"{aug_config.num_ops}, {aug_config.magnitude}")
    one = functools.partial(randaugment, num_ops=int(aug_config.num_ops),
                            magnitude=min(1.0, float(aug_config.magnitude) / 30.0 * strength))
  elif name == "trivialaugment":
    one = functools.partial(trivialaugment, strength=min(1.0, strength))
  elif name == "autoaugment":
    one = autoaugment.autoaugment
  else:
    one = functools.partial(glyph, strength=strength)

  def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    keys = jax.random.split(key, images.shape[0])
    out = jax.vmap(one)(keys, images.astype(jnp.float32))
    return jnp.clip(out, 0.0, 1.0).astype(images.dtype)

  return augment
