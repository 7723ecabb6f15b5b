"""triplet (batch_hard / semi_hard / batch_all x euclidean / squared_euclidean / cosine x soft)
against explicit NumPy loops over triplets, hand-computed values and pytorch-metric-learning."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from tests.helpers import numeric_grad

MARGIN = 0.2
MININGS = ("batch_hard", "semi_hard", "batch_all")
DISTANCES = ("euclidean", "squared_euclidean", "cosine")
LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3], np.int32)  # class 2 has no positive


# ----------------------------------------------------------------------------- NumPy reference
def ref_distance(a, b, distance):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if distance == "cosine":
    na, nb = max(np.linalg.norm(a), 1e-12), max(np.linalg.norm(b), 1e-12)
    return 1.0 - float(a @ b) / (na * nb)
  sq = float(np.sum((a - b) ** 2))
  return sq if distance == "squared_euclidean" else np.sqrt(sq)


def ref_triplet(x, y, margin, mining, distance, soft):
  """Per-anchor (num, den) by explicit loops, following the definitions in the docstring."""
  n = len(y)
  d = [[ref_distance(x[i], x[j], distance) for j in range(n)] for i in range(n)]
  term = (lambda ap, an: np.logaddexp(0.0, ap - an)) if soft else \
         (lambda ap, an: max(ap - an + margin, 0.0))
  num, den = np.zeros(n), np.zeros(n)
  for a in range(n):
    positives = [p for p in range(n) if p != a and y[p] == y[a]]
    negatives = [k for k in range(n) if y[k] != y[a]]
    if not positives or not negatives:
      continue
    if mining == "batch_hard":
      num[a] = term(max(d[a][p] for p in positives), min(d[a][k] for k in negatives))
      den[a] = 1
    elif mining == "batch_all":
      for p in positives:
        for k in negatives:
          loss = term(d[a][p], d[a][k])
          num[a] += loss
          den[a] += 1 if (soft or loss > 0) else 0
    else:  # semi_hard, TF Addons
      for p in positives:
        farther = [d[a][k] for k in negatives if d[a][k] > d[a][p]]
        d_an = min(farther) if farther else max(d[a][k] for k in negatives)
        num[a] += term(d[a][p], d_an)
        den[a] += 1
  return num, den


def ref_mean(x, y, margin, mining, distance, soft):
  num, den = ref_triplet(x, y, margin, mining, distance, soft)
  return num.sum() / max(den.sum(), 1)


JITTED = jax.jit(losses.triplet, static_argnames=("mining", "distance", "soft", "block_size",
                                                  "mesh", "reduction"))


def _random(seed, n=8, d=3):
  return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("mining,distance,soft",
                         list(itertools.product(MININGS, DISTANCES, (False, True))))
def test_value_and_grad_match_loop_reference(mining, distance, soft):
  """Eager (no jit), float32, random embeddings: every mining x distance x soft combination."""
  x = _random(0)
  kw = dict(margin=MARGIN, mining=mining, distance=distance, soft=soft)
  value, grad = jax.value_and_grad(lambda e: losses.triplet(e, jnp.asarray(LABELS), **kw))(
      jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(value, ref_mean(x, LABELS, **kw), rtol=1e-4, atol=1e-5)
  expected = numeric_grad(lambda e: ref_mean(e, LABELS, **kw), x)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("x64", [False, True])
def test_jit_float32_and_float64(mining, x64):
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    tol = dict(rtol=1e-9, atol=1e-10) if x64 else dict(rtol=1e-4, atol=1e-5)
    # One distance per dtype keeps the number of compilations (the test cost) down; the eager
    # test above covers every distance.
    distance = "cosine" if x64 else "euclidean"
    x = _random(1)
    kw = dict(margin=MARGIN, mining=mining, distance=distance, soft=False)
    value, grad = jax.value_and_grad(lambda e, kw=kw: JITTED(e, jnp.asarray(LABELS), **kw))(
        jnp.asarray(x, dtype))
    assert value.dtype == dtype
    np.testing.assert_allclose(value, ref_mean(x, LABELS, **kw), **tol)
    gtol = dict(rtol=1e-6, atol=1e-8) if x64 else dict(rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(grad, numeric_grad(lambda e, kw=kw: ref_mean(e, LABELS, **kw), x),
                               **gtol)
    if not x64:
      num, den = ref_triplet(x, LABELS, **kw)
      np.testing.assert_allclose(JITTED(jnp.asarray(x, dtype), jnp.asarray(LABELS), **kw,
                                        reduction="none"), num / np.maximum(den, 1), **tol)
      np.testing.assert_allclose(JITTED(jnp.asarray(x, dtype), jnp.asarray(LABELS), **kw,
                                        reduction="sum"), num.sum(), **tol)


@pytest.mark.parametrize("mining", MININGS)
def test_check_grads_float64(mining):
  with jax.enable_x64(True):
    f = lambda e: JITTED(e, jnp.asarray(LABELS), margin=MARGIN, mining=mining, soft=True)
    check_grads(f, (jnp.asarray(_random(3)),), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mining", MININGS)
def test_vmap_over_leading_axis(mining):
  xs = np.stack([_random(s) for s in range(4, 7)])
  labels = np.stack([LABELS, LABELS[::-1], np.arange(8, dtype=np.int32) // 2])
  got = jax.vmap(lambda e, y: losses.triplet(e, y, MARGIN, mining))(jnp.asarray(xs, jnp.float32),
                                                                   labels)
  expected = [ref_mean(x, y, MARGIN, mining, "euclidean", False) for x, y in zip(xs, labels)]
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


# Hand-placed 1-D points: class 0 at 0 and 1, class 1 at 1.5 and 4 (worked out in the comments).
LINE = np.array([[0.0], [1.0], [1.5], [4.0]])
LINE_LABELS = np.array([0, 0, 1, 1], np.int32)


@pytest.mark.parametrize("mining,expected", [
    # hardest pos / hardest neg per anchor: [1-1.5+.2]+ = 0, [1-.5+.2] = .7,
    # [2.5-.5+.2] = 2.2, [2.5-3+.2]+ = 0 -> 2.9 / 4
    ("batch_hard", 2.9 / 4),
    # semi-hard negative (closest farther than the positive, else the farthest):
    # a0: 1.5 -> 0; a1: 3 -> 0; a2: none farther than 2.5 -> 1.5 -> 1.2; a3: 3 -> 0 -> 1.2 / 4
    ("semi_hard", 1.2 / 4),
    # active triplets .7, 1.2, 2.2 out of 8 -> mean over the active ones
    ("batch_all", (0.7 + 1.2 + 2.2) / 3),
])
def test_hand_placed_values(mining, expected):
  got = losses.triplet(jnp.asarray(LINE, jnp.float32), jnp.asarray(LINE_LABELS), MARGIN, mining)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(ref_mean(LINE, LINE_LABELS, MARGIN, mining, "euclidean", False),
                             expected, rtol=1e-12)


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("distance", DISTANCES)
def test_all_distances_equal_gives_the_margin(mining, distance):
  """One-hot embeddings: every pair at the same distance, so every hinge term is m."""
  x = jnp.eye(6)
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  got = JITTED(x, labels, margin=0.3, mining=mining, distance=distance)
  np.testing.assert_allclose(got, 0.3, rtol=1e-6)


def test_excluded_anchors_and_empty_batches():
  # N = 8 as everywhere in this file, so the eager op cache is reused (no new compiles).
  x = jnp.asarray(_random(7), jnp.float32)
  for mining in MININGS:
    for labels in (jnp.zeros(8, jnp.int32), jnp.arange(8)):   # single class / all unique
      loss = lambda e, y=labels, m=mining: losses.triplet(e, y, 0.2, m)
      value, grad = jax.value_and_grad(loss)(x)
      assert float(value) == 0.0 and np.all(np.isfinite(grad))
      np.testing.assert_array_equal(losses.triplet(x, labels, 0.2, mining, reduction="none"),
                                    np.zeros(8))
  # The singleton anchor (class 2) is excluded: its "none" entry is 0 and den is 0.
  num, den = losses.triplet_stats_dense(jnp.asarray(_random(8), jnp.float32), jnp.asarray(LABELS))
  assert float(den[5]) == 0.0 and float(num[5]) == 0.0


@pytest.mark.parametrize("distance", DISTANCES)
def test_robust_duplicates_zero_norm_identical(distance):
  x = _random(9)
  x[1] = x[0]
  x[4] = 0.0
  for e in (x, np.ones((8, 3))):
    for mining in MININGS:
      value, grad = jax.value_and_grad(lambda v, m=mining: losses.triplet(
          v, jnp.asarray(LABELS), MARGIN, m, distance))(jnp.asarray(e, jnp.float32))
      assert np.isfinite(value) and np.all(np.isfinite(grad)), (mining, distance)
      np.testing.assert_allclose(value, ref_mean(e, LABELS, MARGIN, mining, distance, False),
                                 rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_accumulate_in_float32():
  x = jnp.asarray(_random(10), jnp.bfloat16)
  for mining in MININGS:
    value, grad = jax.value_and_grad(lambda v, m=mining: losses.triplet(
        v, jnp.asarray(LABELS), MARGIN, m))(x)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    expected = ref_mean(np.asarray(x.astype(jnp.float32)), LABELS, MARGIN, mining, "euclidean",
                        False)
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_batch_all_matches_pytorch_metric_learning():
  torch = pytest.importorskip("torch")
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
  rng = np.random.default_rng(11)
  x = rng.normal(size=(12, 4))
  y = rng.integers(0, 3, size=12).astype(np.int32)
  tx, ty = torch.tensor(x), torch.tensor(y.astype(np.int64))
  cases = [  # (our distance, pml distance)
      ("euclidean", pml_distances.LpDistance(normalize_embeddings=False)),
      ("squared_euclidean", pml_distances.LpDistance(normalize_embeddings=False, power=2)),
      ("cosine", pml_distances.CosineSimilarity()),
  ]
  with jax.enable_x64(True):
    for distance, pml_distance in cases:
      ours = losses.triplet(jnp.asarray(x), jnp.asarray(y), 0.3, "batch_all", distance)
      theirs = pml_losses.TripletMarginLoss(margin=0.3, distance=pml_distance)(tx, ty).item()
      np.testing.assert_allclose(ours, theirs, rtol=1e-9, err_msg=distance)
    # Their smooth loss is softplus(d_ap - d_an + m); ours (Hermans) has no margin: m = 0 agrees.
    ours = losses.triplet(jnp.asarray(x), jnp.asarray(y), 0.0, "batch_all", soft=True)
    theirs = pml_losses.TripletMarginLoss(margin=0.0, smooth_loss=True, distance=cases[0][1])(
        tx, ty).item()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


@pytest.mark.parametrize("mining", MININGS)
def test_block_size_runs_the_streaming_core_with_the_reference_value_and_grad(mining):
  # Any block_size runs the streaming core (sim_jax.losses.triplet_streaming), even a single
  # block (N = 8 <= 64): its custom-VJP call must be in the program, with the loops' value and
  # gradient. The dense form has none.
  x = _random(12)
  labels = jnp.asarray(LABELS)
  kw = dict(margin=MARGIN, mining=mining, distance="euclidean", soft=False)
  xj = jnp.asarray(x, jnp.float32)
  for block_size in (3, 64):
    streamed = lambda e, b=block_size: losses.triplet(e, labels, block_size=b, **kw)
    assert "custom_vjp_call" in str(jax.make_jaxpr(streamed)(xj))
    value, grad = jax.jit(jax.value_and_grad(streamed))(xj)
    np.testing.assert_allclose(value, ref_mean(x, LABELS, **kw), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(lambda e: ref_mean(e, LABELS, **kw), x),
                               rtol=2e-3, atol=2e-4)
  assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda e: losses.triplet(e, labels, **kw))(xj))
