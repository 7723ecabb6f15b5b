"""Tests of sim_jax.data.augment: shape/dtype/range, determinism per key, reference ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from sim_jax.data import augment
from sim_jax.data.config import augment_config


def images(c=3, b=4, s=16, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(b, s, s, c)), jnp.float32)


@pytest.mark.parametrize("name,channels", [(n, 3) for n in augment.NAMES] + [("glyph", 1),
                                                                              ("simclr", 1)])
def test_shape_dtype_range_and_determinism(name, channels):
  cfg = augment_config()
  cfg.name = name
  fn = jax.jit(augment.make_augment_fn(cfg))
  x = images(channels)
  a = fn(jax.random.key(0), x)
  b = fn(jax.random.key(0), x)
  c = fn(jax.random.key(1), x)
  assert a.shape == x.shape and a.dtype == jnp.float32
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  if name == "none":
    np.testing.assert_array_equal(np.asarray(a), np.asarray(x))
  else:
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # per-example keys: two equal images in one batch get different augmentations
    same = fn(jax.random.key(2), jnp.stack([x[0]] * len(x)))
    assert not np.array_equal(np.asarray(same[0]), np.asarray(same[1]))


def test_dilate_erode_match_scipy_grey_morphology():
  x = np.asarray(images(1, 1, 12))[0]
  np.testing.assert_allclose(augment.dilate(x)[..., 0],
                             ndimage.grey_dilation(x[..., 0], size=3, mode="nearest"))
  np.testing.assert_allclose(augment.erode(x)[..., 0],
                             ndimage.grey_erosion(x[..., 0], size=3, mode="nearest"))


def test_affine_rotation_by_90_degrees_matches_rot90():
  x = np.asarray(images(1, 1, 9))[0]
  out = np.asarray(augment._affine(jnp.asarray(x), angle=jnp.pi / 2))
  ref = [np.rot90(x, k, axes=(0, 1)) for k in (1, 3)]
  assert min(np.abs(out - r).max() for r in ref) < 1e-4


def test_gaussian_blur_matches_scipy_inside():
  x = np.asarray(images(1, 1, 20))[0]
  out = np.asarray(augment.gaussian_blur(jnp.asarray(x), 1.0))
  # same kernel: 2*radius+1 taps, truncate = radius / sigma
  ref = ndimage.gaussian_filter(x[..., 0], 1.0, mode="nearest", truncate=2.0)
  np.testing.assert_allclose(out[..., 0], ref, atol=1e-5)


def test_full_crop_is_identity():
  x = images(3, 1, 8)[0]
  cropped = augment.random_resized_crop(jax.random.key(0), x, min_scale=1.0)
  # area 1 with aspect != 1 is clipped to the full side: a crop of the whole image
  assert cropped.shape == x.shape


def test_hue_full_turn_and_saturation_zero():
  x = images(3, 1, 6)[0]
  np.testing.assert_allclose(augment.hue(x, 1.0), x, atol=1e-5)
  g = np.asarray(augment.saturation(x, 0.0))
  np.testing.assert_allclose(g[..., 0], g[..., 1], atol=1e-6)
  np.testing.assert_allclose(g[..., 0], np.asarray(x) @ [0.299, 0.587, 0.114], atol=1e-5)


@pytest.mark.parametrize("field,value", [("name", "augmix"), ("strength", -1.0),
                                         ("magnitude", 31)])
def test_bad_config(field, value):
  cfg = augment_config()
  cfg.name = "randaugment"
  cfg[field] = value
  with pytest.raises(ValueError, match=field if field != "magnitude" else "magnitude"):
    augment.make_augment_fn(cfg)
