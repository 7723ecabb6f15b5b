"""Pair and tuple losses (sim_jax.losses.tuple_losses) against explicit NumPy loops over pairs /
triplets / centroids, pytorch-metric-learning (float64, value and gradient to 1e-9), the papers'
closed forms, and the streaming forms (equal to dense; XLA memory linear in N)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from sim_jax.losses import tuple_losses as T
from tests.helpers import numeric_grad

LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3], np.int32)  # label 2 has no positive


def _x(seed, n=8, d=3):
  return np.random.default_rng(seed).normal(size=(n, d))


# ----------------------------------------------------------------------------- NumPy loops
def unit(v):
  return v / max(np.linalg.norm(v), 1e-12)


def cos(a, b):
  return float(unit(a) @ unit(b))


def dist(a, b):
  return float(np.linalg.norm(unit(a) - unit(b)))


def lse(v):
  v = np.asarray(v, np.float64)
  m = v.max()
  return m + np.log(np.sum(np.exp(v - m)))


def sets(y, a):
  n = len(y)
  return ([p for p in range(n) if p != a and y[p] == y[a]], [k for k in range(n) if y[k] != y[a]])


def ref_ms(x, y, alpha=2.0, beta=50.0, base=0.5):
  num = den = 0.0
  for a in range(len(y)):
    P, N = sets(y, a)
    if not P and not N:
      continue
    num += (np.log1p(sum(np.exp(-alpha * (cos(x[a], x[p]) - base)) for p in P)) / alpha
            + np.log1p(sum(np.exp(beta * (cos(x[a], x[k]) - base)) for k in N)) / beta)
    den += 1
  return num / max(den, 1)


def ref_circle(x, y, m=0.4, gamma=80.0, frozen=None):
  """`frozen`: embeddings the weights a_p, a_n are computed from (no gradient through them)."""
  f = x if frozen is None else frozen
  num = den = 0.0
  for a in range(len(y)):
    P, N = sets(y, a)
    if not P or not N:
      continue
    lp = [-gamma * max(1 + m - cos(f[a], f[p]), 0) * (cos(x[a], x[p]) - (1 - m)) for p in P]
    ln = [gamma * max(cos(f[a], f[k]) + m, 0) * (cos(x[a], x[k]) - m) for k in N]
    num += np.logaddexp(0, lse(lp) + lse(ln))
    den += 1
  return num / max(den, 1)


def ref_gls(x, y, neg_margin=1.0, pos_margin=0.0):
  num = den = 0.0
  for a in range(len(y)):
    P, N = sets(y, a)
    if not P and not N:
      continue
    lp = lse([dist(x[a], x[p]) - pos_margin for p in P]) if P else 0.0
    ln = lse([neg_margin - dist(x[a], x[k]) for k in N]) if N else 0.0
    num += max(lp + ln, 0.0)
    den += 1
  return num / max(den, 1)


def ref_lifted(x, y, neg_margin=1.0, pos_margin=0.0):
  terms = []
  for a in range(len(y)):
    P, N = sets(y, a)
    for p in P:
      _, Np = sets(y, p)
      v = [neg_margin - dist(x[a], x[k]) for k in N] + [neg_margin - dist(x[p], x[k]) for k in Np]
      L = lse(v) if v else 0.0
      terms.append(max(L + dist(x[a], x[p]) - pos_margin, 0.0) ** 2 / 2)
  return np.mean(terms) if terms else 0.0


def ref_npairs(x, y):
  pairs = {}
  for i in range(len(y)):
    P, _ = sets(y, i)
    if P and y[i] not in pairs:
      pairs[y[i]] = (i, min(P))
  anchors = [a for a, _ in pairs.values()]
  positives = [p for _, p in pairs.values()]
  out = []
  for k, a in enumerate(anchors):
    logits = [float(x[a] @ x[p]) for p in positives]
    out.append(lse(logits) - logits[k])
  return np.mean(out)


def ref_tuplet(x, y, margin_degrees=5.73, scale=64.0):
  b = math.radians(margin_degrees)
  terms = []
  for a in range(len(y)):
    P, N = sets(y, a)
    for p in P:
      shifted = math.cos(math.acos(cos(x[a], x[p])) - b)
      terms.append(np.log1p(sum(np.exp(scale * (cos(x[a], x[k]) - shifted)) for k in N)))
  return np.mean(terms)


def ref_angular(x, y, alpha_degrees=40.0):
  t = math.tan(math.radians(alpha_degrees)) ** 2
  terms = []
  for a in range(len(y)):
    P, N = sets(y, a)
    xa = unit(x[a])
    for p in P:
      xp = unit(x[p])
      terms.append(np.log1p(sum(np.exp(4 * t * (xa + xp) @ unit(x[k]) - 2 * (1 + t) * xa @ xp)
                                for k in N)))
  return np.mean(terms)


def ref_nca(x, y, scale=1.0):
  out = []
  for a in range(len(y)):
    P, _ = sets(y, a)
    if not P:
      continue
    others = [j for j in range(len(y)) if j != a]
    out.append(-(lse([-scale * dist(x[a], x[p]) ** 2 for p in P])
                 - lse([-scale * dist(x[a], x[j]) ** 2 for j in others])))
  return np.mean(out)


def ref_instance(x, y, gamma=64.0):
  rank = {c: r for r, c in enumerate(sorted(set(y.tolist())))}
  out = []
  for i in range(len(y)):
    logits = [gamma * cos(x[i], x[j]) for j in range(len(y))]
    out.append(lse(logits) - logits[rank[int(y[i])]])
  return np.mean(out)


def _pairs(x, y):
  n = len(y)
  pos = [cos(x[a], x[p]) for a in range(n) for p in range(n) if p != a and y[p] == y[a]]
  neg = [cos(x[a], x[k]) for a in range(n) for k in range(n) if y[k] != y[a]]
  return pos, neg


def ref_ipv(x, y, pos_eps=0.01, neg_eps=0.01):
  pos, neg = _pairs(x, y)
  mp, mn = np.mean(pos), np.mean(neg)
  return (np.mean([max((1 - pos_eps) * mp - s, 0) ** 2 for s in pos])
          + np.mean([max(s - (1 + neg_eps) * mn, 0) ** 2 for s in neg]))


def ref_tcm(x, y, lp=1.0, ln=1.0, mp=0.9, mn=0.5):
  pos, neg = _pairs(x, y)
  a = [mp - s for s in pos if s <= mp]
  b = [s - mn for s in neg if s >= mn]
  return lp * (np.mean(a) if a else 0) + ln * (np.mean(b) if b else 0)


def ref_margin(x, y, margin=0.2, beta=1.2):
  total = count = 0.0
  for a in range(len(y)):
    P, N = sets(y, a)
    for p in P:
      for k in N:
        lp = max(dist(x[a], x[p]) - beta + margin, 0)
        ln = max(beta - dist(x[a], x[k]) + margin, 0)
        total += lp + ln
        count += (lp > 0) + (ln > 0)
  return total / count if count else 0.0


def ref_centroid(x, y, margin=0.2):
  out = []
  for a in range(len(y)):
    P, _ = sets(y, a)
    others = sorted(set(y.tolist()) - {int(y[a])})
    if not P or not others:
      continue
    d_p = np.linalg.norm(x[a] - np.mean(x[P], axis=0))
    d_n = min(np.linalg.norm(x[a] - np.mean(x[y == k], axis=0)) for k in others)
    out.append(max(d_p - d_n + margin, 0.0))
  return np.mean(out)


# name -> (sim_jax loss of (x, y), NumPy loop of (x, y))
CASES = {
  "multi_similarity": (T.multi_similarity, ref_ms),
  "circle": (lambda x, y: T.circle(x, y, gamma=8.0), lambda x, y: ref_circle(x, y, gamma=8.0)),
  "generalized_lifted_structure": (T.generalized_lifted_structure, ref_gls),
  "lifted_structure": (T.lifted_structure, ref_lifted),
  "npairs": (T.npairs, ref_npairs),
  "tuplet_margin": (lambda x, y: T.tuplet_margin(x, y, scale=8.0),
                    lambda x, y: ref_tuplet(x, y, scale=8.0)),
  "angular": (T.angular, ref_angular),
  "nca": (T.nca, ref_nca),
  "instance_loss": (lambda x, y: T.instance_loss(x, y, gamma=4.0),
                    lambda x, y: ref_instance(x, y, gamma=4.0)),
  "intra_pair_variance": (T.intra_pair_variance, ref_ipv),
  "threshold_consistent_margin": (lambda x, y: T.threshold_consistent_margin(x, y, 1.0, 1.0,
                                                                              0.5, 0.0),
                                  lambda x, y: ref_tcm(x, y, 1.0, 1.0, 0.5, 0.0)),
  "margin_loss": (T.margin_loss, ref_margin),
  "centroid_triplet": (T.centroid_triplet, ref_centroid),
}


def _grad_ref(name, x):
  if name == "circle":  # the weights a_p, a_n are constants of the gradient (stop_gradient)
    return numeric_grad(lambda e: ref_circle(e, LABELS, gamma=8.0, frozen=x), x)
  return numeric_grad(lambda e: CASES[name][1](e, LABELS), x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_grad_match_loops_float32_and_float64_jit(name):
  fn, ref = CASES[name]
  x = _x(0)
  expected_value, expected = ref(x, LABELS), _grad_ref(name, x)
  scale = np.max(np.abs(expected))
  # A fresh jit per precision: constants made while tracing take the precision of the trace.
  f = lambda: jax.jit(jax.value_and_grad(lambda e: fn(e, jnp.asarray(LABELS))))
  value, grad = f()(jnp.asarray(x, jnp.float32))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, expected_value, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-3 * scale)
  with jax.enable_x64(True):
    value, grad = f()(jnp.asarray(x))
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, expected_value, rtol=1e-10)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7 * scale)


@pytest.mark.parametrize("name", ["lifted_structure"])
def test_eager_value_and_grad_match_loops(name):
  fn, ref = CASES[name]
  x = _x(1)
  value, grad = jax.value_and_grad(lambda e: fn(e, jnp.asarray(LABELS)))(
    jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(value, ref(x, LABELS), rtol=1e-4, atol=1e-5)
  expected = _grad_ref(name, x)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-3 * np.max(np.abs(expected)))


@pytest.mark.parametrize("name", ["centroid_triplet"])
def test_check_grads_float64(name):
  fn = CASES[name][0]
  with jax.enable_x64(True):
    check_grads(jax.jit(lambda e: fn(e, jnp.asarray(LABELS))), (jnp.asarray(_x(3)),), order=1,
                modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["npairs", "centroid_triplet"])
def test_vmap_over_batches(name):
  fn, ref = CASES[name]
  xs = np.stack([_x(s) for s in range(4, 7)])
  ys = np.stack([LABELS, LABELS[::-1], np.arange(8, dtype=np.int32) // 2])
  got = jax.jit(jax.vmap(fn))(jnp.asarray(xs, jnp.float32), jnp.asarray(ys))
  np.testing.assert_allclose(got, [ref(x, y) for x, y in zip(xs, ys)], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- closed forms
def test_multi_similarity_closed_form_two_points():
  # One positive pair at s = 1 (the same direction), no negative:
  # l = 1/alpha log(1 + e^{-alpha (1 - base)}) for both anchors.
  x = jnp.asarray([[1.0, 0.0], [2.0, 0.0]])
  got = T.multi_similarity(x, jnp.asarray([0, 0]), alpha=2.0, beta=50.0, base=0.5)
  np.testing.assert_allclose(got, np.log1p(np.exp(-1.0)) / 2.0, rtol=1e-6)


def test_circle_closed_form_orthogonal_pair():
  # s_p = 0 (positive), s_n = 0 (negative): a_p = 1 + m, a_n = m and
  # l = softplus(-gamma (1 + m)(0 - (1 - m)) + gamma m (0 - m)) = softplus(gamma (1 - 2 m^2)).
  x = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  m, g = 0.25, 2.0
  got = T.circle(x, jnp.asarray([0, 0, 1]), m=m, gamma=g, reduction="none")
  np.testing.assert_allclose(got[0], np.logaddexp(0, g * (1 - 2 * m * m)), rtol=1e-6)


def test_nca_closed_form_and_lifted_margin():
  # Two classes at opposite poles: NCA's probability of the positive (distance 0) against the
  # negatives (distance 2) is 1 / (1 + 2 e^{-4 s}) for one positive and two negatives.
  x = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
  y = jnp.asarray([0, 0, 1, 1])
  np.testing.assert_allclose(T.nca(x, y, scale=0.5), np.log1p(2 * np.exp(-2.0)), rtol=1e-6)
  # Lifted structure: d_ap = 0, all four negative distances 2: [log(4 e^{m - 2})]_+^2 / 2.
  np.testing.assert_allclose(T.lifted_structure(x, y, neg_margin=3.0),
                             (np.log(4.0) + 1.0) ** 2 / 2, rtol=1e-6)


def test_margin_loss_closed_form():
  # d_ap = 0, d_an = 2: [0 - beta + m]_+ = 0 (beta > m) and [beta - 2 + m]_+ = 0 (beta < 1.8):
  # nothing active, the loss is 0; beta = 1.9: each triplet's negative term is 0.1.
  x = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
  y = jnp.asarray([0, 0, 1, 1])
  assert float(T.margin_loss(x, y, margin=0.2, beta=1.2)) == 0.0
  np.testing.assert_allclose(T.margin_loss(x, y, margin=0.2, beta=1.9), 0.1, rtol=1e-5)


def test_distance_weighted_sampling_draws_valid_negatives():
  x = _x(8, n=12, d=4)
  y = jnp.asarray(np.arange(12) % 3)
  chosen = np.asarray(T.distance_weighted_negatives(jax.random.PRNGKey(0), jnp.asarray(x), y))
  assert chosen.shape == (12, 12)
  assert np.all(np.asarray(y)[chosen] != np.asarray(y)[:, None])     # always a negative
  # Only one negative allowed by the mask: it is always the one drawn.
  mask = np.ones((12, 12), bool)
  mask[0, :] = False
  mask[0, 1] = True
  chosen = T.distance_weighted_negatives(jax.random.PRNGKey(1), jnp.asarray(x), y,
                                         nonzero_loss_cutoff=4.0, mask=jnp.asarray(mask))
  assert np.all(np.asarray(chosen)[0] == 1)
  value = T.margin_loss(jnp.asarray(x), y, sampling="distance_weighted",
                        key=jax.random.PRNGKey(2))
  assert np.isfinite(float(value))


def test_mask_restricts_pairs_like_dropping_them_from_the_loop():
  # A mask that keeps only the pairs among the first 6 samples equals the loss on those 6
  # (for the per-anchor mean: the last two anchors have no pair left and are not counted).
  x = _x(5)
  mask = np.zeros((8, 8), bool)
  mask[:6, :6] = True
  for name in ("multi_similarity", "generalized_lifted_structure"):
    fn, ref = CASES[name]
    got = T.multi_similarity(jnp.asarray(x), jnp.asarray(LABELS), mask=jnp.asarray(mask)) \
      if name == "multi_similarity" else \
      T.generalized_lifted_structure(jnp.asarray(x), jnp.asarray(LABELS), mask=jnp.asarray(mask))
    np.testing.assert_allclose(got, ref(x[:6], LABELS[:6]), rtol=1e-5)


def test_a_miners_pos_neg_weights_select_pairs_separately():
  # A PairMask-like (pos, neg) pair: every positive kept, no negative (weights 0): the
  # multi-similarity loss keeps only its positive term, as the loop without negatives.
  x = _x(6)
  pos_w = jnp.asarray((LABELS[:, None] == LABELS[None, :]) & ~np.eye(8, dtype=bool), jnp.float32)
  got = T.multi_similarity(jnp.asarray(x), jnp.asarray(LABELS), mask=(2.0 * pos_w,
                                                                      jnp.zeros((8, 8))))
  expected = []
  for a in range(8):
    P, _ = sets(LABELS, a)
    if P:
      expected.append(np.log1p(sum(np.exp(-2.0 * (cos(x[a], x[p]) - 0.5)) for p in P)) / 2.0)
  np.testing.assert_allclose(got, np.mean(expected), rtol=1e-5)


def test_bad_input_raises_naming_the_argument():
  x, y = jnp.zeros((4, 2)), jnp.asarray([0, 0, 1, 1])
  with pytest.raises(ValueError, match=r"mask must have shape \[4, 4\]"):
    T.multi_similarity(x, y, mask=jnp.ones((3, 3), bool))
  with pytest.raises(ValueError, match="mask must be a bool array"):
    T.circle(x, y, mask=jnp.ones((4, 4)))
  with pytest.raises(ValueError, match=r"mask must have shape \[4, 4\]"):
    T.circle(x, y, mask=(jnp.ones((4, 4)), jnp.ones((4, 3))))
  with pytest.raises(ValueError, match="alpha must be > 0, got -1"):
    T.multi_similarity(x, y, alpha=-1.0)
  with pytest.raises(ValueError, match="gamma must be > 0, got 0"):
    T.circle(x, y, gamma=0.0)
  with pytest.raises(ValueError, match="block_size must be None"):
    T.nca(x, y, block_size=0)
  with pytest.raises(ValueError, match="pass one of them, got both"):
    T.nca(x, y, block_size=2, mask=jnp.ones((4, 4), bool))
  with pytest.raises(ValueError, match="sampling must be one of"):
    T.margin_loss(x, y, sampling="hard")
  with pytest.raises(ValueError, match="pass a PRNG key as key="):
    T.margin_loss(x, y, sampling="distance_weighted")
  with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
    T.lifted_structure(x, jnp.asarray([0, 1]))
  with pytest.raises(ValueError, match="reduction must be one of"):
    T.npairs(x, y, reduction="max")


# ----------------------------------------------------------------------- pytorch-metric-learning
def _pml(name):
  pml = pytest.importorskip("pytorch_metric_learning.losses")
  dists = pytest.importorskip("pytorch_metric_learning.distances")
  return {
    "multi_similarity": (T.multi_similarity, pml.MultiSimilarityLoss()),
    "circle": (T.circle, pml.CircleLoss()),
    "generalized_lifted_structure": (T.generalized_lifted_structure,
                                     pml.GeneralizedLiftedStructureLoss()),
    "lifted_structure": (T.lifted_structure, pml.LiftedStructureLoss()),
    # Sohn's dot product on raw embeddings (pml's distances normalise by default).
    "npairs": (T.npairs, pml.NPairsLoss(
      distance=dists.DotProductSimilarity(normalize_embeddings=False))),
    "tuplet_margin": (T.tuplet_margin, pml.TupletMarginLoss()),
    "nca": (T.nca, pml.NCALoss()),
    "instance_loss": (T.instance_loss, pml.InstanceLoss()),
    "intra_pair_variance": (T.intra_pair_variance, pml.IntraPairVarianceLoss()),
    "threshold_consistent_margin": (T.threshold_consistent_margin,
                                    pml.ThresholdConsistentMarginLoss()),
    # pml stores beta as a float32 tensor: 1.25 is exact in float32, 1.2 is not.
    "margin_loss": (lambda x, y: T.margin_loss(x, y, beta=1.25), pml.MarginLoss(beta=1.25)),
    # pml normalises the anchor and positive but not the negatives: equal on unit inputs.
    "angular": (T.angular, pml.AngularLoss()),
  }[name]


def pml_value_and_grad(criterion, x, y):
  torch = pytest.importorskip("torch")
  t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  value = criterion(t, torch.tensor(y, dtype=torch.int64))
  value.backward()
  return value.item(), t.grad.numpy()


PML_NAMES = ["multi_similarity", "circle", "generalized_lifted_structure", "lifted_structure",
             "npairs", "tuplet_margin", "nca", "instance_loss", "intra_pair_variance",
             "threshold_consistent_margin", "margin_loss", "angular"]


@pytest.mark.parametrize("name", PML_NAMES)
def test_matches_pytorch_metric_learning_float64(name):
  fn, criterion = _pml(name)
  y = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 2], np.int32)
  x = _x(11, n=10, d=4)
  if name == "angular":
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
  expected_value, expected_grad = pml_value_and_grad(criterion, x, y)
  with jax.enable_x64(True):
    value, grad = jax.jit(jax.value_and_grad(lambda e: fn(e, jnp.asarray(y))))(jnp.asarray(x))
  np.testing.assert_allclose(value, expected_value, rtol=1e-9, atol=1e-12)
  if name == "angular":
    # pml's gradient skips the normalisation Jacobian of the negatives: on unit inputs only
    # the radial component differs, so compare the tangential parts g - (g . x) x.
    tangential = lambda g: g - np.sum(g * x, axis=1, keepdims=True) * x
    grad, expected_grad = tangential(np.asarray(grad)), tangential(expected_grad)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- streaming
STREAMING = {
  "lifted_structure": T.lifted_structure,
  "multi_similarity": T.multi_similarity,
  "circle": T.circle,
  "generalized_lifted_structure": T.generalized_lifted_structure,
  "nca": T.nca,
}


@pytest.mark.parametrize("name", sorted(STREAMING))
def test_streaming_equals_dense_float32(name):
  fn = STREAMING[name]
  x = jnp.asarray(_x(21, n=30, d=5), jnp.float32)
  y = jnp.asarray(np.random.default_rng(2).integers(0, 7, 30), jnp.int32)
  w = jnp.linspace(0.5, 1.5, 30)   # a non-uniform cotangent checks every anchor's gradient

  @jax.jit
  def both(e):
    # Per-anchor values under a non-uniform cotangent: every anchor's value and gradient (the
    # "mean" / "sum" reductions are sums of them).
    def f(e, b):
      return jnp.sum(fn(e, y, block_size=b, reduction="none") * w)
    return jax.value_and_grad(f)(e, None), jax.value_and_grad(f)(e, 8)  # 8 does not divide 30

  dense, streamed = both(x)
  np.testing.assert_allclose(streamed[0], dense[0], rtol=1e-5)
  np.testing.assert_allclose(streamed[1], dense[1], rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(dense[1]))))


def _temp_bytes(fn, n, d=16, block_size=None):
  f = jax.jit(jax.value_and_grad(lambda e, y: fn(e, y, block_size=block_size)))
  spec = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32))
  return f.lower(*spec).compile().memory_analysis().temp_size_in_bytes


def test_streaming_memory_is_linear_in_n():
  """XLA's compiled temp memory of value + gradient: streaming grows as N, far below one N x N
  float32 matrix. Checked on one-sweep (multi-similarity) and two-sweep (lifted structure) forms;
  the others share `tuple_streaming.stream_rows` with the first."""
  n = 16384
  for name in ("multi_similarity", "lifted_structure"):
    fn = STREAMING[name]
    small, large = _temp_bytes(fn, n, block_size=64), _temp_bytes(fn, 2 * n, block_size=64)
    assert large < 2.5 * small, (name, small, large)   # doubling N about doubles the memory
    assert large < 4 * (2 * n) ** 2 / 16, (name, large)  # 1/16 of one float32 N x N matrix


def test_public_names():
  for name in ("multi_similarity", "circle", "lifted_structure", "generalized_lifted_structure",
               "npairs", "tuplet_margin", "angular", "nca", "instance_loss",
               "intra_pair_variance", "threshold_consistent_margin", "margin_loss",
               "centroid_triplet"):
    assert getattr(losses, name) is getattr(T, name)
