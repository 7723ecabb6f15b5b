"""sim_jax.data.autoaugment: every op of AutoAugment's ImageNet policy against PIL itself."""

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from sim_jax.data import augment
from sim_jax.data import autoaugment as aa

RNG = np.random.default_rng(0)
# 32 x 28: over 255 pixels, so PIL's equalize step is not 0 (it is the identity below that).
GRAY = RNG.integers(0, 256, (1, 32, 28, 1)).astype(np.uint8)
# Smooth-ish colour images: a gradient plus noise, so equalize / autocontrast have structure.
RGB = np.clip(np.linspace(20, 200, 32 * 28 * 3).reshape(32, 28, 3)[None]
              + RNG.normal(0, 25, (2, 32, 28, 3)), 0, 255).astype(np.uint8)
IMAGES = [GRAY[0], RGB[0], RGB[1]]


def pil(img):
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def back(p, channels):
  a = np.asarray(p)
  return a[..., None] if channels == 1 else a


def ours(fn, img, *args):
  return np.asarray(jax.jit(fn)(np.float32(img), *args)).astype(np.int64)


def assert_close(got, want, max_diff=0, max_frac=0.0):
  """Levels equal, or (for resampling ops) at most max_frac of pixels off by <= max_diff."""
  diff = np.abs(got - want.astype(np.int64))
  assert got.shape == want.shape
  if max_frac == 0.0:
    assert diff.max() <= max_diff, (np.argwhere(diff > max_diff)[:5], got.ravel()[:8],
                                    want.ravel()[:8])
  else:
    assert (diff > max_diff).mean() <= max_frac, (diff > max_diff).mean()


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_posterize(img, bits):
  want = back(ImageOps.posterize(pil(img), bits), img.shape[-1])
  assert_close(ours(aa.posterize, img, bits), want)


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("threshold", [float(np.float32(255.0 * (1 - b / 9))) for b in (3, 5, 8)])
def test_solarize(img, threshold):
  """Thresholds as float32 holds them (the policy's table is float32: 170.00000000000003 is 170)."""
  want = back(ImageOps.solarize(pil(img), threshold), img.shape[-1])
  assert_close(ours(aa.solarize, img, threshold), want)


@pytest.mark.parametrize("img", IMAGES + [np.full((5, 5, 1), 77, np.uint8)])
@pytest.mark.parametrize("name", ["autocontrast", "equalize", "invert"])
def test_parameterless_ops(img, name):
  want = back(getattr(ImageOps, name)(pil(img)), img.shape[-1])
  # autocontrast: ours is the exact floor((v - lo) * 255 / (hi - lo)); PIL's float64
  # `v * s + (-lo * s)` can land just under an exact integer and truncate one level lower.
  assert_close(ours(getattr(aa, name), img), want, max_diff=int(name == "autocontrast"))


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("name", ["Color", "Contrast", "Sharpness"])
@pytest.mark.parametrize("factor", [0.1, 1.0, 1.9])
def test_enhance(img, name, factor):
  want = back(getattr(ImageEnhance, name)(pil(img)).enhance(factor), img.shape[-1])
  # PIL blends in float32 and truncates: a product landing on an integer may round either way.
  assert_close(ours(getattr(aa, name.lower()), img, factor), want, max_diff=1)


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("degrees", [-30.0, 6.6, 26.7])
def test_rotate(img, degrees):
  want = back(pil(img).rotate(degrees, resample=Image.NEAREST, fillcolor=0), img.shape[-1])
  # PIL samples in 16.16 fixed point: a pixel centre on a boundary may pick the neighbour.
  assert_close(ours(aa.rotate, img, degrees), want, max_frac=0.03)


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("m", [-0.3, 0.167])
def test_shear_x(img, m):
  h, w = img.shape[:2]
  want = back(pil(img).transform((w, h), Image.AFFINE, (1.0, m, 0.0, 0.0, 1.0, 0.0),
                                 resample=Image.NEAREST, fillcolor=0), img.shape[-1])
  assert_close(ours(aa.shear_x, img, m), want, max_frac=0.03)


def test_policy_table_and_magnitudes():
  """25 sub-policies of two ops; torchvision's 10-bin magnitudes (closed forms)."""
  assert len(aa.IMAGENET_POLICY) == 25
  assert all(len(sub) == 2 for sub in aa.IMAGENET_POLICY)
  assert {o for sub in aa.IMAGENET_POLICY for o, _, _ in sub} == set(aa.OPS)
  assert [aa.magnitude("Posterize", b) for b in (5, 6, 7, 8)] == [6.0, 5.0, 5.0, 4.0]
  assert aa.magnitude("Rotate", 9) == pytest.approx(30.0)
  assert aa.magnitude("Solarize", 5) == pytest.approx(255.0 * 4 / 9)
  assert aa.magnitude("ShearX", 5) == pytest.approx(0.3 * 5 / 9)


def test_augment_family_shapes_range_and_identity_rate():
  """Through make_augment_fn: same shape / range, 8-bit levels, and about the policy's
  probability that an image is left unchanged: no op applied, Color at bin 0 (factor 1) being
  the only no-op."""
  cfg = ml_collections.ConfigDict({"name": "autoaugment", "strength": 1.0, "num_ops": 2,
                                   "magnitude": 9, "min_scale": 0.2})
  fn = jax.jit(augment.make_augment_fn(cfg))
  images = np.float32(np.tile(RGB[:1], (256, 1, 1, 1))) / 255.0
  out = np.asarray(fn(jax.random.PRNGKey(0), images))
  assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
  np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-3)
  # P(neither op applied) averaged over the 25 sub-policies (Color at bin 0 is an identity too).
  p_none = np.mean([np.prod([1 - p * (b != 0) for _, p, b in sub])
                    for sub in aa.IMAGENET_POLICY])
  unchanged = np.mean(np.all(np.abs(out - images) < 1e-6, axis=(1, 2, 3)))
  assert abs(unchanged - p_none) < 0.08, (unchanged, p_none)
