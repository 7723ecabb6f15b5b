"""nt_xent / nt_xent_pairs / supcon against explicit NumPy loops, closed forms and
pytorch-metric-learning."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from tests.helpers import numeric_grad

T = 0.1
LABELS = np.array([0, 0, 1, 1, 1, 2, 3, 3], np.int32)  # class 2 has no positive


# ----------------------------------------------------------------------------- NumPy references
def _cos(x):
  z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return z @ z.T


def ref_nt_xent(x, y, t):
  """Per-anchor (num, den) by explicit loops over (anchor, positive) and negatives."""
  s = _cos(np.asarray(x, np.float64))
  n = len(y)
  num, den = np.zeros(n), np.zeros(n)
  for i in range(n):
    for p in range(n):
      if p == i or y[p] != y[i]:
        continue
      # -log(e^a / (e^a + sum e^b)) accumulated in log space (np.logaddexp), so t = 1e-3
      # does not overflow the reference.
      log_bottom = s[i, p] / t
      for k in range(n):
        if y[k] != y[i]:
          log_bottom = np.logaddexp(log_bottom, s[i, k] / t)
      num[i] += log_bottom - s[i, p] / t
      den[i] += 1
  return num, den


def ref_supcon(x, y, t):
  s = _cos(np.asarray(x, np.float64))
  n = len(y)
  num, den = np.zeros(n), np.zeros(n)
  for i in range(n):
    positives = [p for p in range(n) if p != i and y[p] == y[i]]
    if not positives:
      continue
    log_bottom = -np.inf
    for a in range(n):
      if a != i:
        log_bottom = np.logaddexp(log_bottom, s[i, a] / t)
    num[i] = -np.mean([s[i, p] / t - log_bottom for p in positives])
    den[i] = 1
  return num, den


def reduce_ref(num, den, reduction):
  if reduction == "mean":
    return num.sum() / max(den.sum(), 1)
  if reduction == "sum":
    return num.sum()
  return num / np.maximum(den, 1)


REFS = {"nt_xent": ref_nt_xent, "supcon": ref_supcon}
FNS = {"nt_xent": losses.nt_xent, "supcon": losses.supcon}
# Compiled once per (loss, reduction) and shared by every test in this file.
JITTED = {name: jax.jit(fn, static_argnames=("block_size", "mesh", "reduction"))
          for name, fn in FNS.items()}


def _random(seed, n=8, d=4):
  return np.random.default_rng(seed).normal(size=(n, d))


# Hand-placed: two tight pairs, an orthogonal singleton, an anti-parallel pair, a zero vector.
HAND = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.8, 0.3],
                 [0.2, 0.7, 0.1], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
# float32 eager and jitted, float64 jitted (eager float64 would only re-pay op compilation).
@pytest.mark.parametrize("use_jit,x64", [(False, False), (True, False), (True, True)])
def test_value_and_grad_match_loop_reference(name, use_jit, x64):
  fn = JITTED[name] if use_jit else FNS[name]
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    vtol = dict(rtol=1e-10, atol=1e-10) if x64 else dict(rtol=2e-5, atol=2e-5)
    gtol = dict(rtol=1e-6, atol=1e-7) if x64 else dict(rtol=2e-3, atol=2e-4)
    for x in (_random(0), HAND):
      got = fn(jnp.asarray(x, dtype), jnp.asarray(LABELS), T)
      assert got.dtype == dtype
      np.testing.assert_allclose(got, reduce_ref(*REFS[name](x, LABELS, T), "mean"), **vtol)
      grad = jax.grad(lambda e: fn(e, jnp.asarray(LABELS), T))(jnp.asarray(x, dtype))
      expected = numeric_grad(lambda e: reduce_ref(*REFS[name](e, LABELS, T), "mean"), x)
      assert np.all(np.isfinite(grad))
      # Normalisation is discontinuous at a zero vector (HAND[7]): central differences of
      # width h see a unit vector there, so only the other rows have a reference gradient.
      rows = np.linalg.norm(x, axis=1) > 0
      np.testing.assert_allclose(np.asarray(grad)[rows], expected[rows], **gtol)


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
def test_reductions_sum_and_none(name):
  num, den = REFS[name](HAND, LABELS, T)
  for reduction in ("sum", "none"):
    got = JITTED[name](jnp.asarray(HAND, jnp.float32), jnp.asarray(LABELS), T,
                       reduction=reduction)
    np.testing.assert_allclose(got, reduce_ref(num, den, reduction), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
def test_check_grads_float64(name):
  with jax.enable_x64(True):
    x = jnp.asarray(_random(1))
    check_grads(lambda e: JITTED[name](e, jnp.asarray(LABELS), T), (x,), order=2,
                modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
def test_vmap_over_leading_axis(name):
  xs = np.stack([_random(s) for s in range(3)])
  labels = np.stack([LABELS, LABELS[::-1], np.arange(8, dtype=np.int32) // 4])
  got = jax.vmap(lambda e, y: FNS[name](e, y, T))(jnp.asarray(xs, jnp.float32), labels)
  expected = [reduce_ref(*REFS[name](x, y, T), "mean") for x, y in zip(xs, labels)]
  np.testing.assert_allclose(got, expected, rtol=2e-5)


def test_temperature_is_differentiable():
  """A learnable temperature: d loss / d t matches central differences of the reference."""
  x = _random(2)
  got = jax.grad(lambda t: JITTED["nt_xent"](jnp.asarray(x, jnp.float32),
                                             jnp.asarray(LABELS), t))(0.3)
  f = lambda t: reduce_ref(*ref_nt_xent(x, LABELS, t), "mean")
  np.testing.assert_allclose(got, (f(0.3 + 1e-6) - f(0.3 - 1e-6)) / 2e-6, rtol=1e-3)


@pytest.mark.parametrize("n", [4])
def test_identical_views_give_log_2n_minus_1(n):
  z = jnp.ones((n, 4))                  # [2n, 4] = the shape used throughout: no new compiles
  np.testing.assert_allclose(losses.nt_xent_pairs(z, z, temperature=0.5), np.log(2 * n - 1),
                             rtol=1e-6, atol=1e-7)


def test_nt_xent_pairs_is_simclr_over_two_views():
  """SimCLR's loss written from the paper: l(i, j) over 2n anchors, all 2n-1 others below."""
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  z = np.concatenate([z1, z2])
  s = _cos(z)
  total = 0.0
  for i in range(8):
    j = (i + 4) % 8
    total += -np.log(np.exp(s[i, j] / T) / sum(np.exp(s[i, k] / T) for k in range(8) if k != i))
  got = losses.nt_xent_pairs(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), T)
  np.testing.assert_allclose(got, total / 8, rtol=1e-5)
  # With one positive per anchor SupCon's denominator is NT-Xent's: the two coincide.
  labels = np.concatenate([np.arange(4), np.arange(4)]).astype(np.int32)
  np.testing.assert_allclose(losses.supcon(jnp.asarray(z, jnp.float32), labels, T), total / 8,
                             rtol=1e-5)


def test_edges_no_positive_and_single_class():
  x = jnp.asarray(_random(4), jnp.float32)
  unique = jnp.arange(8)
  for fn in (losses.nt_xent, losses.supcon):
    assert float(fn(x, unique)) == 0.0                      # nothing to average: 0, not NaN
    np.testing.assert_array_equal(fn(x, unique, reduction="none"), np.zeros(8))
    assert np.all(np.isfinite(jax.grad(lambda e, f=fn: f(e, unique))(x)))
  one_class = jnp.zeros(8, jnp.int32)
  assert float(losses.nt_xent(x, one_class)) == 0.0         # no negatives: -log(1) per pair
  np.testing.assert_allclose(losses.supcon(x, one_class),
                             reduce_ref(*ref_supcon(np.asarray(x), np.zeros(8, int), T), "mean"),
                             rtol=1e-5)


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
def test_robust_tiny_temperature_duplicates_zero_norm(name):
  x = _random(5)
  x[1] = x[0]                 # duplicate
  x[7] = 0.0                  # zero-norm embedding
  e = jnp.asarray(x, jnp.float32)
  value, grad = jax.value_and_grad(lambda v: JITTED[name](v, jnp.asarray(LABELS), 1e-3))(e)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  expected = reduce_ref(*REFS[name](x, LABELS, 1e-3), "mean")
  np.testing.assert_allclose(value, expected, rtol=1e-4)


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
def test_bfloat16_inputs_accumulate_in_float32(name):
  x = jnp.asarray(_random(6), jnp.bfloat16)
  value, grad = jax.value_and_grad(lambda v: FNS[name](v, jnp.asarray(LABELS), T))(x)
  assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  # Reference on the bf16-rounded inputs: only the input rounding differs, not the accumulation.
  expected = reduce_ref(*REFS[name](np.asarray(x.astype(jnp.float32)), LABELS, T), "mean")
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_matches_pytorch_metric_learning():
  torch = pytest.importorskip("torch")
  pml = pytest.importorskip("pytorch_metric_learning.losses")
  rng = np.random.default_rng(7)
  x = rng.normal(size=(10, 6))
  y = rng.integers(0, 3, size=10).astype(np.int32)
  tx, ty = torch.tensor(x), torch.tensor(y.astype(np.int64))
  with jax.enable_x64(True):
    ours = losses.nt_xent(jnp.asarray(x), jnp.asarray(y), 0.07)
    theirs = pml.NTXentLoss(temperature=0.07)(tx, ty).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    ours = losses.supcon(jnp.asarray(x), jnp.asarray(y), 0.2)
    theirs = pml.SupConLoss(temperature=0.2)(tx, ty).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def _runs_custom_vjp(fn, x) -> bool:
  """Whether `fn`'s program holds a custom-VJP call: the streaming cores' sweep, never dense."""
  return "custom_vjp_call" in str(jax.make_jaxpr(fn)(x))


@pytest.mark.parametrize("name", ["nt_xent", "supcon"])
def test_block_size_runs_the_streaming_core_with_the_reference_value_and_grad(name):
  # block_size = 3 < N = 8: the streaming core (sim_jax.losses.infonce_streaming) must run, and
  # give the loops' value and gradient; N <= block_size on one device is the dense core.
  x = _random(8)
  labels = jnp.asarray(LABELS)
  streamed = lambda e: FNS[name](e, labels, T, block_size=3)
  xj = jnp.asarray(x, jnp.float32)
  assert _runs_custom_vjp(streamed, xj)
  assert not _runs_custom_vjp(lambda e: FNS[name](e, labels, T, block_size=8), xj)
  assert not _runs_custom_vjp(lambda e: FNS[name](e, labels, T), xj)
  value, grad = jax.jit(jax.value_and_grad(streamed))(xj)
  np.testing.assert_allclose(value, reduce_ref(*REFS[name](x, LABELS, T), "mean"), rtol=2e-5)
  expected = numeric_grad(lambda e: reduce_ref(*REFS[name](e, LABELS, T), "mean"), x)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


def test_dense_stats_are_the_documented_per_anchor_arrays():
  x = _random(9)
  for core, ref in ((losses.nt_xent_stats_dense, ref_nt_xent),
                    (losses.supcon_stats_dense, ref_supcon)):
    num, den = core(jnp.asarray(x, jnp.float32), jnp.asarray(LABELS), T)
    ref_num, ref_den = ref(x, LABELS, T)
    np.testing.assert_allclose(num, ref_num, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(den, ref_den)


