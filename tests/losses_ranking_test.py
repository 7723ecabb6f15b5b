"""snr_contrastive and recall_at_k_surrogate against NumPy loops and pytorch-metric-learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from tests.helpers import numeric_grad

LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3], np.int32)


def _random(seed, n=8, d=4):
  return np.random.default_rng(seed).normal(size=(n, d))


# ------------------------------------------------------------------------------------ SNR
def ref_snr(x, y, pos_margin, neg_margin, reg, normalize=True):
  """Loops over ordered pairs; pml's AvgNonZeroReducer per sub-loss; Yuan's zero-mean term."""
  raw = np.asarray(x, np.float64)
  x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12) if normalize else raw
  n = len(y)
  pos, neg = [], []
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      d = np.var(x[j] - x[i]) / np.var(x[i])
      if y[i] == y[j]:
        pos.append(max(d - pos_margin, 0.0))
      else:
        neg.append(max(neg_margin - d, 0.0))
  avg = lambda v: sum(v) / max(sum(1 for t in v if t > 0), 1)
  return avg(pos) + avg(neg) + reg * np.mean([abs(np.sum(r)) for r in raw])


@pytest.mark.parametrize("use_jit", [False, True])
def test_snr_matches_loop_reference(use_jit):
  x = _random(0)
  fn = jax.jit(losses.snr_contrastive, static_argnames=("normalize", "reduction")) if use_jit \
      else losses.snr_contrastive
  normalize = use_jit   # both paths, at no extra compilation
  kw = dict(pos_margin=0.2, neg_margin=1.5, regularization=0.1, normalize=normalize)
  value, grad = jax.value_and_grad(lambda e: fn(e, jnp.asarray(LABELS), **kw))(
      jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(value, ref_snr(x, LABELS, 0.2, 1.5, 0.1, normalize), rtol=1e-5)
  expected = numeric_grad(lambda e: ref_snr(e, LABELS, 0.2, 1.5, 0.1, normalize), x)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


def test_snr_float64_check_grads_vmap_and_reductions():
  x = _random(1)
  with jax.enable_x64(True):
    f = jax.jit(lambda e: losses.snr_contrastive(e, jnp.asarray(LABELS), 0.1, 1.2))
    np.testing.assert_allclose(f(jnp.asarray(x)), ref_snr(x, LABELS, 0.1, 1.2, 0.0), rtol=1e-12)
    check_grads(f, (jnp.asarray(x),), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)
  pairs = np.asarray(losses.snr_contrastive(jnp.asarray(x, jnp.float32), jnp.asarray(LABELS),
                                            normalize=False, reduction="none"))
  for i in range(8):
    for j in range(8):
      d = np.var(x[j] - x[i]) / np.var(x[i])
      expected = 0.0 if i == j else (d if LABELS[i] == LABELS[j] else max(1.0 - d, 0.0))
      np.testing.assert_allclose(pairs[i, j], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.snr_contrastive(jnp.asarray(x, jnp.float32),
                                                    jnp.asarray(LABELS), normalize=False,
                                                    reduction="sum"),
                             pairs.sum(), rtol=1e-5)
  xs = np.stack([_random(s) for s in range(2, 4)])
  got = jax.vmap(lambda e: losses.snr_contrastive(e, jnp.asarray(LABELS)))(jnp.asarray(xs))
  np.testing.assert_allclose(got, [ref_snr(e, LABELS, 0.0, 1.0, 0.0) for e in xs], rtol=1e-5)


def test_snr_matches_pytorch_metric_learning():
  torch = pytest.importorskip("torch")
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  pml_reg = pytest.importorskip("pytorch_metric_learning.regularizers")
  rng = np.random.default_rng(4)
  x = rng.normal(size=(10, 5))
  y = rng.integers(0, 3, size=10).astype(np.int32)
  loss_fn = pml_losses.SignalToNoiseRatioContrastiveLoss(
      pos_margin=0.1, neg_margin=1.3, embedding_regularizer=pml_reg.ZeroMeanRegularizer(),
      embedding_reg_weight=0.05)
  theirs = loss_fn(torch.tensor(x), torch.tensor(y.astype(np.int64))).item()
  with jax.enable_x64(True):
    ours = losses.snr_contrastive(jnp.asarray(x), jnp.asarray(y), 0.1, 1.3, 0.05)
  np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_snr_robust_constant_duplicate_and_bfloat16():
  x = _random(5)
  x[1] = x[0]
  x[7] = 0.0                                     # zero variance: clamped, finite
  value, grad = jax.value_and_grad(lambda e: losses.snr_contrastive(e, jnp.asarray(LABELS)))(
      jnp.asarray(x, jnp.float32))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  xb = jnp.asarray(_random(6), jnp.bfloat16)
  value = losses.snr_contrastive(xb, jnp.asarray(LABELS))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, ref_snr(np.asarray(xb, np.float32), LABELS, 0.0, 1.0, 0.0),
                             rtol=1e-4)


# ------------------------------------------------------------------------------- Recall@k
def ref_recall_loss(x, y, ks, tau2, tau1):
  """Per-query loss by loops over queries, positives and the rest of the batch (float64)."""
  x = np.asarray(x, np.float64)
  z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  n = len(y)
  sig = lambda u, t: 1.0 / (1.0 + np.exp(-u / t))
  num, den = np.zeros(n), np.zeros(n)
  for q in range(n):
    positives = [p for p in range(n) if p != q and y[p] == y[q]]
    if not positives:
      continue
    ranks = {}
    for p in positives:
      ranks[p] = 1.0 + sum(sig(z[q] @ z[o] - z[q] @ z[p], tau2)
                           for o in range(n) if o not in (q, p))
    recall = 0.0
    for k in ks:
      m_k = min(k, len(positives))
      recall += min(sum(sig(k - ranks[p], tau1) for p in positives), m_k) / m_k
    num[q] = 1.0 - recall / len(ks)
    den[q] = 1
  return num, den


@pytest.mark.parametrize("use_jit", [False, True])
def test_recall_at_k_matches_loop_reference(use_jit):
  x = _random(7)
  ks, tau2, tau1 = (1, 2, 4), 0.1, 1.0          # tau2 = 0.1 keeps finite differences smooth
  fn = jax.jit(losses.recall_at_k_surrogate, static_argnames=("k_values", "reduction")) \
      if use_jit else losses.recall_at_k_surrogate
  loss = lambda e, r="mean": fn(e, jnp.asarray(LABELS), ks, tau2, tau1, reduction=r)
  value, grad = jax.value_and_grad(loss)(jnp.asarray(x, jnp.float32))
  num, den = ref_recall_loss(x, LABELS, ks, tau2, tau1)
  np.testing.assert_allclose(value, num.sum() / den.sum(), rtol=1e-5)
  np.testing.assert_allclose(loss(jnp.asarray(x, jnp.float32), "none"), num, rtol=1e-5,
                             atol=1e-6)
  expected = numeric_grad(lambda e: (lambda nd: nd[0].sum() / nd[1].sum())(
      ref_recall_loss(e, LABELS, ks, tau2, tau1)), x)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


def test_recall_at_k_float64_default_temperatures_and_vmap():
  x = _random(8)
  with jax.enable_x64(True):
    f = jax.jit(lambda e: losses.recall_at_k_surrogate(e, jnp.asarray(LABELS)))
    num, den = ref_recall_loss(x, LABELS, (1, 2, 4, 8, 16), 0.01, 1.0)
    np.testing.assert_allclose(f(jnp.asarray(x)), num.sum() / den.sum(), rtol=1e-10)
    # Jitted: the finite differences then reuse one compiled program instead of eager ops.
    smooth = jax.jit(lambda e: losses.recall_at_k_surrogate(e, jnp.asarray(LABELS), (1, 2), 0.5))
    check_grads(smooth, (jnp.asarray(x),), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)
  xs = np.stack([_random(s) for s in (9, 10)])
  got = jax.vmap(lambda e: losses.recall_at_k_surrogate(e, jnp.asarray(LABELS)))(jnp.asarray(xs))
  expected = [(lambda nd: nd[0].sum() / nd[1].sum())(
      ref_recall_loss(e, LABELS, (1, 2, 4, 8, 16), 0.01, 1.0)) for e in xs]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_recall_at_k_edges():
  # Well-separated similarities and sharp sigmoids: the smooth ranks are the exact ranks, and
  # sigmoid((k - r) / tau1) is 1 for r < k, 0.5 for r = k (the paper's and official code's
  # choice), 0 for r > k. Class 0 queries (positives ranked 1, 2): R_1 = 0.5 / 1,
  # R_2 = 1.5 / 2 -> loss 0.375; class 1 queries (one positive, rank 1): R_1 = 0.5, R_2 = 1
  # -> 0.25; classes 2, 3, 4 have no positive. Mean over 5 queries = (3 * .375 + 2 * .25) / 5.
  x = np.array([[1.0, 0, 0], [0.95, 0.3, 0], [0.85, 0, 0.5], [0, 1.0, 0], [0, 0.9, 0.4],
                [0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
  y = np.array([0, 0, 0, 1, 1, 2, 3, 4], np.int32)
  got = losses.recall_at_k_surrogate(jnp.asarray(x, jnp.float32), jnp.asarray(y), (1, 2), 1e-3,
                                     1e-3)
  np.testing.assert_allclose(got, (3 * 0.375 + 2 * 0.25) / 5, atol=1e-5)
  # No query has a positive: 0, not NaN.
  got = losses.recall_at_k_surrogate(jnp.asarray(x, jnp.float32), jnp.arange(8))
  assert float(got) == 0.0
  value, grad = jax.value_and_grad(
      lambda e: losses.recall_at_k_surrogate(e, jnp.asarray(y)))(jnp.asarray(x, jnp.bfloat16))
  assert value.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_recall_at_k_max_positives_matches_loop_reference():
  # LABELS: at most 2 positives per query, so max_positives=2 (and 5 > 2) must give the loop
  # reference's value and the dense form's gradient; max_positives=1 drops a positive of the
  # class-0 queries, which must surface as NaN rather than as a different number.
  x = jnp.asarray(_random(11), jnp.float32)
  ks, tau2, tau1 = (1, 2, 4), 0.1, 1.0
  f = jax.jit(lambda e, m: losses.recall_at_k_surrogate(e, jnp.asarray(LABELS), ks, tau2, tau1,
                                                        max_positives=m), static_argnums=1)
  num, den = ref_recall_loss(np.asarray(x), LABELS, ks, tau2, tau1)
  dense_grad = jax.grad(lambda e: f(e, None))(x)
  for m in (2, 5):
    value, grad = jax.value_and_grad(lambda e, m=m: f(e, m))(x)
    np.testing.assert_allclose(value, num.sum() / den.sum(), rtol=1e-5)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-5, atol=1e-7)
  assert np.isnan(float(f(x, 1)))
  with pytest.raises(ValueError, match="max_positives"):
    losses.recall_at_k_surrogate(x, jnp.asarray(LABELS), max_positives=0)
