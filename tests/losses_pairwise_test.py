"""contrastive / learnable_margin_contrastive / pair_bce / sigmoid_contrastive against per-pair
NumPy loops, closed forms, torch and pytorch-metric-learning."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from tests.helpers import numeric_grad

SAME = np.array([1, 0, 1, 0, 0, 1, 0, 1], np.int32)


def ref_contrastive(a, b, same, margin, squared, distance):
  """Per-pair losses by an explicit loop (float64)."""
  out = []
  for i in range(len(same)):
    u, v = np.asarray(a[i], np.float64), np.asarray(b[i], np.float64)
    if distance == "cosine":
      d = 1.0 - u @ v / (max(np.linalg.norm(u), 1e-12) * max(np.linalg.norm(v), 1e-12))
    else:
      d = np.sqrt(np.sum((u - v) ** 2))
    if same[i]:
      out.append(0.5 * d * d if squared else d)
    else:
      h = max(margin - d, 0.0)
      out.append(0.5 * h * h if squared else h)
  return np.array(out)


def _pairs(seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(8, 3)) * 0.5, rng.normal(size=(8, 3)) * 0.5


JITTED = jax.jit(losses.contrastive, static_argnames=("squared", "distance", "reduction"))


@pytest.mark.parametrize("squared,distance",
                         list(itertools.product((True, False), ("euclidean", "cosine"))))
@pytest.mark.parametrize("use_jit", [False, True])
def test_contrastive_matches_loop_reference(squared, distance, use_jit):
  fn = JITTED if use_jit else losses.contrastive
  a, b = _pairs(0)
  margin = 1.0
  ref = ref_contrastive(a, b, SAME, margin, squared, distance)
  assert 0 < np.sum(ref[SAME == 0] > 0) < 4   # some negatives inside the margin, some outside
  kw = dict(margin=margin, squared=squared, distance=distance)
  for reduction, expected in (("mean", ref.mean()), ("sum", ref.sum()), ("none", ref)):
    got = fn(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), SAME, **kw,
             reduction=reduction)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  grad_a = jax.grad(lambda u: fn(u, jnp.asarray(b, jnp.float32), SAME, **kw))(
      jnp.asarray(a, jnp.float32))
  expected = numeric_grad(lambda u: ref_contrastive(u, b, SAME, margin, squared, distance).mean(),
                          a)
  np.testing.assert_allclose(grad_a, expected, rtol=2e-3, atol=1e-5)


def test_contrastive_float64_and_check_grads():
  a, b = _pairs(1)
  with jax.enable_x64(True):
    got = JITTED(jnp.asarray(a), jnp.asarray(b), SAME)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref_contrastive(a, b, SAME, 1.0, True, "euclidean").mean(),
                               rtol=1e-12)
    check_grads(lambda u, v: JITTED(u, v, SAME, squared=False), (jnp.asarray(a), jnp.asarray(b)),
                order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_contrastive_vmap():
  pairs = [_pairs(s) for s in range(2, 5)]
  a = jnp.asarray(np.stack([p[0] for p in pairs]), jnp.float32)
  b = jnp.asarray(np.stack([p[1] for p in pairs]), jnp.float32)
  got = jax.vmap(lambda u, v: losses.contrastive(u, v, SAME))(a, b)
  expected = [ref_contrastive(u, v, SAME, 1.0, True, "euclidean").mean() for u, v in pairs]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("squared,expected", [(True, 0.5 * 1.5 ** 2), (False, 1.5)])
def test_zero_distance_negative_pair_closed_form(squared, expected):
  x = jnp.asarray([[0.3, -0.2, 0.1]])
  value, grad = jax.value_and_grad(lambda u: losses.contrastive(u, x, jnp.array([0]), margin=1.5,
                                                                squared=squared))(x)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert np.all(np.isfinite(grad))        # d = 0: safe sqrt, no NaN
  # and a positive pair at d = 0 costs nothing
  assert float(losses.contrastive(x, x, jnp.array([1]), squared=squared)) == 0.0


def test_robust_zero_norm_duplicates_bfloat16():
  a, b = _pairs(5)
  a[0] = 0.0
  b[0] = 0.0
  b[1] = a[1]
  for distance in ("euclidean", "cosine"):
    loss = lambda u, v, d=distance: losses.contrastive(u, v, SAME, distance=d)
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(a, jnp.bfloat16),
                                                            jnp.asarray(b, jnp.bfloat16))
    assert value.dtype == jnp.float32
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
    expected = ref_contrastive(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32),
                               np.asarray(jnp.asarray(b, jnp.bfloat16), np.float32), SAME, 1.0,
                               True, distance).mean()
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_hinge_form_matches_pytorch_metric_learning_per_pair():
  """pml's ContrastiveLoss(pos_margin=0, neg_margin=m) on our pairs equals our hinge losses
  averaged with its AvgNonZeroReducer (positives and negatives separately, then added)."""
  torch = pytest.importorskip("torch")
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
  a, b = _pairs(6)
  n = len(SAME)
  idx = np.arange(n)
  tuple_ = tuple(torch.tensor(v) for v in (idx[SAME == 1], n + idx[SAME == 1],
                                            idx[SAME == 0], n + idx[SAME == 0]))
  loss_fn = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0,
                                       distance=pml_distances.LpDistance(normalize_embeddings=False))
  theirs = loss_fn(torch.tensor(np.concatenate([a, b])), indices_tuple=tuple_).item()
  with jax.enable_x64(True):
    per_pair = np.asarray(losses.contrastive(jnp.asarray(a), jnp.asarray(b), SAME, margin=1.0,
                                             squared=False, reduction="none"))
  pos, neg = per_pair[SAME == 1], per_pair[SAME == 0]
  ours = pos.sum() / max((pos > 0).sum(), 1) + neg.sum() / max((neg > 0).sum(), 1)
  np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_learnable_margin_gradient_and_softplus_mapping():
  a, b = _pairs(7)
  m0 = 1.2
  raw = losses.raw_from_margin(m0)
  np.testing.assert_allclose(raw, np.log(np.expm1(m0)), rtol=1e-6)
  np.testing.assert_allclose(losses.margin_from_raw(raw), m0, rtol=1e-6)
  np.testing.assert_allclose(losses.raw_from_margin(50.0), 50.0, rtol=1e-6)  # no overflow

  def loss(r):
    return losses.learnable_margin_contrastive(jnp.asarray(a, jnp.float32),
                                               jnp.asarray(b, jnp.float32), SAME,
                                               margin=losses.margin_from_raw(r))

  value, grad = jax.jit(jax.value_and_grad(loss))(raw)
  ref = lambda m: ref_contrastive(a, b, SAME, m, True, "euclidean").mean()
  np.testing.assert_allclose(value, ref(m0), rtol=1e-5)
  dm_draw = 1.0 / (1.0 + np.exp(-float(raw)))           # softplus' = sigmoid
  np.testing.assert_allclose(grad, (ref(m0 + 1e-6) - ref(m0 - 1e-6)) / 2e-6 * dm_draw, rtol=1e-3)


def test_margin_reward_subtracts_lambda_m_and_shifts_the_margin_gradient():
  """loss = seed formula (NumPy loop) - lambda m; dL/dm = mean_i (1 - y_i) max(0, m - d_i)
  - lambda (closed form, squared form), for every reduction."""
  a, b = _pairs(11)
  lam, m = 0.07, 1.1
  fa, fb = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  per_pair = ref_contrastive(a, b, SAME, m, True, "euclidean")
  got = losses.learnable_margin_contrastive(fa, fb, SAME, jnp.asarray(m), margin_reward=lam)
  np.testing.assert_allclose(got, per_pair.mean() - lam * m, rtol=1e-5)
  got = losses.learnable_margin_contrastive(fa, fb, SAME, jnp.asarray(m), margin_reward=lam,
                                            reduction="sum")
  np.testing.assert_allclose(got, per_pair.sum() - 8 * lam * m, rtol=1e-5)
  got = losses.learnable_margin_contrastive(fa, fb, SAME, jnp.asarray(m), margin_reward=lam,
                                            reduction="none")
  np.testing.assert_allclose(got, per_pair - lam * m, rtol=1e-5, atol=1e-7)
  grad = jax.grad(lambda mm: losses.learnable_margin_contrastive(
      fa, fb, SAME, mm, margin_reward=lam))(jnp.asarray(m, jnp.float32))
  d = np.sqrt(np.sum((a - b) ** 2, axis=1))
  want = np.mean([(1 - y) * max(m - di, 0.0) for y, di in zip(SAME, d)]) - lam
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="margin_reward must be >= 0, got -0.1"):
    losses.learnable_margin_contrastive(fa, fb, SAME, jnp.asarray(m), margin_reward=-0.1)


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_learnt_margin_collapses_without_the_reward_and_settles_with_it(lam):
  """Gradient descent on raw (m = softplus(raw)) with the embeddings fixed: without the reward m
  only falls, until no negative is inside it (the negative term is then 0 and trains nothing;
  with the encoder moving too, this goes on to m -> 0); with it m converges to the root of
  mean_i (1 - y_i) max(0, m - d_i) = lambda, found here by bisection in NumPy."""
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(64, 4)), rng.normal(size=(64, 4))
  same = (np.arange(64) % 2).astype(np.int32)
  fa, fb = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  loss = lambda r: losses.learnable_margin_contrastive(  # noqa: E731
      fa, fb, same, losses.margin_from_raw(r), margin_reward=lam)
  step = jax.jit(lambda r: r - 0.5 * jax.grad(loss)(r))
  raw = losses.raw_from_margin(2.0)
  for _ in range(3000):
    raw = step(raw)
  m = float(losses.margin_from_raw(raw))
  d = np.sqrt(np.sum((a - b) ** 2, axis=1))[same == 0]
  if lam == 0.0:
    assert m < 2.0 and m <= d.min() + 1e-3  # fell from 2, and no negative is inside it
    return
  excess = lambda mm: np.sum(np.maximum(mm - d, 0.0)) / 64 - lam  # noqa: E731
  lo, hi = 0.0, 10.0
  for _ in range(60):
    lo, hi = ((lo + hi) / 2, hi) if excess((lo + hi) / 2) < 0 else (lo, (lo + hi) / 2)
  assert m > d.min()  # the reward keeps the margin above the closest negative
  np.testing.assert_allclose(m, lo, rtol=1e-3)


def ref_bce(x, y):
  p = 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
  return np.array([-(yi * np.log(pi) + (1 - yi) * np.log(1 - pi)) for pi, yi in zip(p, y)])


def test_pair_bce_matches_formula_torch_and_is_stable():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(8).normal(size=8) * 3
  for logits in (x, x[:, None]):
    got = losses.pair_bce(jnp.asarray(logits, jnp.float32), SAME, reduction="none")
    np.testing.assert_allclose(got, ref_bce(x, SAME), rtol=1e-5)
  theirs = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(x), torch.tensor(SAME, dtype=torch.float64)).item()
  np.testing.assert_allclose(losses.pair_bce(jnp.asarray(x, jnp.float32), SAME), theirs,
                             rtol=1e-5)
  grad = jax.grad(lambda v: losses.pair_bce(v, SAME))(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(grad, (1 / (1 + np.exp(-x)) - SAME) / 8, rtol=1e-5, atol=1e-7)
  huge = jnp.array([1e4, 1e4, 1e4, -1e4, 0.0, 0.0, 0.0, 0.0])  # pair 1: y = 0, x = 1e4
  value, grad = jax.value_and_grad(lambda v: losses.pair_bce(v, SAME, reduction="sum"))(huge)
  np.testing.assert_allclose(value, 1e4 + 4 * np.log(2), rtol=1e-6)
  assert np.all(np.isfinite(grad))
  got = jax.vmap(lambda v: losses.pair_bce(v, SAME))(jnp.asarray(np.stack([x, -x]), jnp.float32))
  np.testing.assert_allclose(got, [ref_bce(x, SAME).mean(), ref_bce(-x, SAME).mean()], rtol=1e-5)


def ref_sigmoid_contrastive(x, y, margin):
  """Seed 002 / the Keras example, pair by pair: y max(m - s, 0)^2 + (1 - y) s^2 (float64)."""
  out = []
  for xi, yi in zip(np.asarray(x, np.float64), y):
    s = 1.0 / (1.0 + np.exp(-xi))
    out.append(max(margin - s, 0.0) ** 2 if yi == 1 else s * s)
  return np.array(out)


@pytest.mark.parametrize("margin", [1.0, 0.7])
def test_sigmoid_contrastive_matches_loop_and_gradient(margin):
  x = np.random.default_rng(9).normal(size=8) * 2
  fn = jax.jit(losses.sigmoid_contrastive, static_argnames=("reduction",))
  for logits in (x, x[:, None]):
    got = fn(jnp.asarray(logits, jnp.float32), SAME, margin, reduction="none")
    np.testing.assert_allclose(got, ref_sigmoid_contrastive(x, SAME, margin), rtol=1e-5)
  np.testing.assert_allclose(fn(jnp.asarray(x, jnp.float32), SAME, margin),
                             ref_sigmoid_contrastive(x, SAME, margin).mean(), rtol=1e-5)
  # d/dx of the mean: s' = s (1 - s); same pairs -2 (m - s)+ s', different pairs 2 s s'.
  s = 1 / (1 + np.exp(-x))
  want = np.where(SAME == 1, -2 * np.maximum(margin - s, 0), 2 * s) * s * (1 - s) / 8
  grad = jax.grad(lambda v: losses.sigmoid_contrastive(v, SAME, margin))(jnp.asarray(x))
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)
  got = jax.vmap(lambda v: losses.sigmoid_contrastive(v, SAME, margin))(
      jnp.asarray(np.stack([x, -x]), jnp.float32))
  np.testing.assert_allclose(got, [ref_sigmoid_contrastive(v, SAME, margin).mean()
                                   for v in (x, -x)], rtol=1e-5)


def test_sigmoid_contrastive_margin_one_is_the_squared_error_and_refuses_bad_input():
  x = np.array([-30.0, 30.0, 0.0, 0.0, 2.0, -2.0, 1e4, -1e4])
  s = 0.5 * (1 + np.tanh(x / 2))  # sigmoid without exp overflow
  np.testing.assert_allclose(losses.sigmoid_contrastive(jnp.asarray(x), SAME, 1.0,
                                                        reduction="none"),
                             (s - SAME) ** 2, rtol=1e-6, atol=1e-12)
  assert np.all(np.isfinite(jax.grad(lambda v: losses.sigmoid_contrastive(v, SAME))(
      jnp.asarray(x, jnp.float32))))
  with pytest.raises(ValueError, match="margin"):
    losses.sigmoid_contrastive(jnp.asarray(x), SAME, margin=0.0)
  with pytest.raises(ValueError, match=r"shape \[B\] or \[B, 1\]"):
    losses.sigmoid_contrastive(jnp.zeros((8, 2)), SAME)
  with pytest.raises(ValueError, match="floating"):
    losses.sigmoid_contrastive(jnp.arange(8), SAME)
