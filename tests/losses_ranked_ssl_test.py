"""Ranking / distribution losses (sim_jax.losses.ranked) and the self-supervised regularisers
(sim_jax.losses.ssl) against explicit NumPy loops, pytorch-metric-learning (float64), closed
forms, and, for VICReg / Barlow Twins, a 4-device sharded run equal to one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.losses import ranked as R
from sim_jax.losses import ssl
from tests.helpers import numeric_grad, run_python

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


def sets(y, a):
  n = len(y)
  return ([p for p in range(n) if p != a and y[p] == y[a]], [k for k in range(n) if y[k] != y[a]])


def tri(v, c, w):
  return max(1 - abs(v - c) / w, 0.0)


def ref_fast_ap(x, y, num_bins=10):
  centres = [4.0 * b / num_bins for b in range(num_bins + 1)]
  out = []
  for a in range(len(y)):
    P, N = sets(y, a)
    if not P:
      continue
    hp = [sum(tri(dist(x[a], x[p]) ** 2, c, 4 / num_bins) for p in P) for c in centres]
    hn = [sum(tri(dist(x[a], x[k]) ** 2, c, 4 / num_bins) for k in N) for c in centres]
    ap = cum_p = cum = 0.0
    for b in range(len(centres)):
      cum_p += hp[b]
      cum += hp[b] + hn[b]
      if hp[b] * cum_p > 0 and cum > 0:
        ap += hp[b] * cum_p / cum
    out.append(1 - ap / len(P))
  return np.mean(out)


def ref_histogram(x, y, num_bins=100):
  n = len(y)
  has_pos = [bool(sets(y, i)[0]) for i in range(n)]
  has_neg = [bool(sets(y, i)[1]) for i in range(n)]
  pos = [cos(x[i], x[j]) for i in range(n) for j in range(i + 1, n) if y[i] == y[j] and has_neg[i]]
  neg = [cos(x[i], x[j]) for i in range(n) for j in range(i + 1, n)
         if y[i] != y[j] and (has_pos[i] or has_pos[j])]
  nodes = [-1 + 2 * r / num_bins for r in range(num_bins + 1)]
  p_pos = [sum(tri(s, t, 2 / num_bins) for s in pos) / len(pos) for t in nodes]
  p_neg = [sum(tri(s, t, 2 / num_bins) for s in neg) / len(neg) for t in nodes]
  return sum(p_neg[r] * sum(p_pos[:r + 1]) for r in range(len(nodes)))


def ref_ranked_list(x, y, margin=0.4, t_neg=10.0, imbalance=0.5, t_pos=0.0, eps=1e-5):
  alpha, n, out = 1 + margin / 2, len(y), []
  for a in range(n):
    P, N = sets(y, a)
    wp = [(np.exp(t_pos * (dist(x[a], x[p]) - (alpha - margin))), dist(x[a], x[p]))
          for p in P if dist(x[a], x[p]) > alpha - margin]
    wn = [(np.exp(t_neg * (alpha - dist(x[a], x[k]))), dist(x[a], x[k]))
          for k in N if 0 < dist(x[a], x[k]) < alpha]
    lp = sum(w * (d - (alpha - margin)) for w, d in wp) / (sum(w for w, _ in wp) + n * eps)
    ln = sum(w * (alpha - d) for w, d in wn) / (sum(w for w, _ in wn) + n * eps)
    out.append((1 - imbalance) * lp + imbalance * ln)
  return np.mean(out)


def ref_pnp(x, y, variant="O", b=2.0, alpha=1.0, anneal=0.01):
  out = []
  for a in range(len(y)):
    P, N = sets(y, a)
    if not P:
      continue
    vals = []
    for j in P + [a]:
      r = sum(1 / (1 + np.exp(-np.clip((cos(x[a], x[k]) - cos(x[a], x[j])) / anneal, -50, 50)))
              for k in N)
      vals.append({"O": r, "Ds": np.log1p(r), "Dq": 1 / (1 + r) ** alpha,
                   "Iu": (1 + r) * np.log1p(r), "Ib": (b * r - np.log1p(b * r)) / b ** 2}[variant])
    out.append(np.mean(vals))
  return 1 - np.mean(out) if variant == "Dq" else np.mean(out)


def _triplet_xs(x, y):
  return [dist(x[a], x[p]) - dist(x[a], x[k]) for a in range(len(y))
          for p in sets(y, a)[0] for k in sets(y, a)[1]]


def ref_dsm(x, y, hist, min_val=-2.0, momentum=0.01, frozen=None):
  """Returns (loss, new hist); `frozen`: embeddings the CDF is computed from (no gradient)."""
  nb = len(hist)
  delta = 2 * abs(min_val) / nb
  xs, fx = _triplet_xs(x, y), _triplet_xs(x if frozen is None else frozen, y)
  batch = np.zeros(nb)
  for v in fx:
    u = (v - min_val) / delta
    i = int(np.floor(u))
    batch[min(i, nb - 1)] += 1 - (u - i)
    batch[min(i + 1, nb - 1)] += u - i
  mu = momentum if np.sum(hist) != 0 else 1.0
  new = (1 - mu) * np.asarray(hist) + mu * batch
  new = new / new.sum()
  cdf = np.cumsum(new)
  loss = np.mean([cdf[min(int(np.floor((f - min_val) / delta)), nb - 1)] * v
                  for v, f in zip(xs, fx)])
  return loss, new


def ref_p2sgrad(x, y, w):
  n, c = len(y), w.shape[1]
  return sum((cos(x[i], w[:, k]) - (k == y[i])) ** 2 for i in range(n) for k in range(c)) / (n * c)


def _cov(z):
  n, d = z.shape
  m = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
  return np.array([[sum((z[i, j] - m[j]) * (z[i, k] - m[k]) for i in range(n)) / (n - 1)
                    for k in range(d)] for j in range(d)])


def ref_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
  n, d = z1.shape
  total = lam * sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
  for z in (z1, z2):
    c = _cov(z)
    total += mu * sum(max(1 - np.sqrt(c[j, j] + eps), 0) for j in range(d)) / d / 2
    total += nu * sum(c[j, k] ** 2 for j in range(d) for k in range(d) if j != k) / d
  return total


def ref_barlow(z1, z2, lambd=0.0051, eps=1e-5):
  n, d = z1.shape
  def standard(z):
    m = z.mean(axis=0)
    return (z - m) / np.sqrt(((z - m) ** 2).mean(axis=0) + eps)
  a, b = standard(z1), standard(z2)
  c = [[sum(a[i, j] * b[i, k] for i in range(n)) / n for k in range(d)] for j in range(d)]
  return (sum((1 - c[j][j]) ** 2 for j in range(d))
          + lambd * sum(c[j][k] ** 2 for j in range(d) for k in range(d) if j != k))


W = np.random.default_rng(7).normal(size=(3, 5))
Z2 = np.random.default_rng(8).normal(size=(8, 3))
Y5 = np.array([0, 1, 2, 3, 4, 0, 1, 2], np.int32)
CASES = {
  "fast_ap": (R.fast_ap, ref_fast_ap),
  "histogram": (lambda x, y: R.histogram(x, y, num_bins=20),
                lambda x, y: ref_histogram(x, y, num_bins=20)),
  "ranked_list": (R.ranked_list, ref_ranked_list),
  "pnp_O": (lambda x, y: R.pnp(x, y, anneal=0.5), lambda x, y: ref_pnp(x, y, anneal=0.5)),
  "pnp_Dq": (lambda x, y: R.pnp(x, y, variant="Dq", anneal=0.5),
             lambda x, y: ref_pnp(x, y, "Dq", anneal=0.5)),
  "pnp_Ib": (lambda x, y: R.pnp(x, y, variant="Ib", anneal=0.5),
             lambda x, y: ref_pnp(x, y, "Ib", anneal=0.5)),
  "dynamic_soft_margin": (lambda x, y: R.dynamic_soft_margin(x, y, jnp.zeros(10))[0],
                          lambda x, y: ref_dsm(x, y, np.zeros(10))[0]),
  "p2sgrad": (lambda x, y: R.p2sgrad(x, Y5, jnp.asarray(W)), lambda x, y: ref_p2sgrad(x, Y5, W)),
  "vicreg": (lambda x, y: ssl.vicreg(x, jnp.asarray(Z2)), lambda x, y: ref_vicreg(x, Z2)),
  "barlow_twins": (lambda x, y: ssl.barlow_twins(x, jnp.asarray(Z2)),
                   lambda x, y: ref_barlow(x, Z2)),
}


def _grad_ref(name, x):
  if name == "dynamic_soft_margin":   # the CDF is a constant of the gradient
    return numeric_grad(lambda e: ref_dsm(e, LABELS, np.zeros(10), frozen=x)[0], x)
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


def test_eager_and_vmap():
  x = _x(2)
  np.testing.assert_allclose(R.fast_ap(jnp.asarray(x, jnp.float32), jnp.asarray(LABELS)),
                             ref_fast_ap(x, LABELS), rtol=1e-4)
  xs = np.stack([_x(s) for s in range(3)])
  got = jax.jit(jax.vmap(lambda a: ssl.vicreg(a, jnp.asarray(Z2))))(jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(got, [ref_vicreg(a, Z2) for a in xs], rtol=1e-4)


def test_dynamic_soft_margin_histogram_state_follows_the_momentum_rule():
  x = _x(4)
  hist0 = np.linspace(1.0, 2.0, 10) / np.sum(np.linspace(1.0, 2.0, 10))
  loss, new = R.dynamic_soft_margin(jnp.asarray(x), jnp.asarray(LABELS), jnp.asarray(hist0),
                                    momentum=0.3)
  ref_loss, ref_new = ref_dsm(x, LABELS, hist0, momentum=0.3)
  np.testing.assert_allclose(new, ref_new, rtol=1e-5)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


def test_closed_forms():
  # FastAP: positives at distance 0, negatives antipodal: a perfect ranking, AP = 1, loss 0.
  x = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
  y = jnp.asarray([0, 0, 1, 1])
  np.testing.assert_allclose(R.fast_ap(x, y), 0.0, atol=1e-6)
  # Histogram: positives at s = 1, negatives at s = -1: no negative above any positive.
  np.testing.assert_allclose(R.histogram(x, y), 0.0, atol=1e-6)
  # VICReg with z1 = z2 whose centred columns are orthogonal with unbiased variance 4/3 > 1:
  # no invariance, variance or covariance term. Barlow Twins: C = I / (1 + eps).
  z = jnp.asarray([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
  np.testing.assert_allclose(ssl.vicreg(z, z), 0.0, atol=1e-7)
  eps = 1e-5
  np.testing.assert_allclose(ssl.barlow_twins(z, z, eps=eps), 2 * (1 - 1 / (1 + eps)) ** 2,
                             rtol=1e-3, atol=1e-12)
  # P2SGrad: each x equal to its class weight and orthogonal to the others: loss 0.
  np.testing.assert_allclose(R.p2sgrad(jnp.eye(3), jnp.arange(3), jnp.eye(3)), 0.0, atol=1e-7)


def test_bad_input_raises_naming_the_argument():
  x, y = jnp.zeros((4, 2)), jnp.asarray([0, 0, 1, 1])
  with pytest.raises(ValueError, match="variant must be one of"):
    R.pnp(x, y, variant="X")
  with pytest.raises(ValueError, match="num_bins must be a positive int, got 0"):
    R.fast_ap(x, y, num_bins=0)
  with pytest.raises(ValueError, match="imbalance must be in"):
    R.ranked_list(x, y, imbalance=2.0)
  with pytest.raises(ValueError, match=r"histogram_state must have shape \[num_bins\]"):
    R.dynamic_soft_margin(x, y, jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"weights must have shape \[D=2, C\]"):
    R.p2sgrad(x, y, jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match="z1 and z2 must have the same shape"):
    ssl.vicreg(x, jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="at least 2 rows"):
    ssl.barlow_twins(x[:1], x[:1])


# ----------------------------------------------------------------------- pytorch-metric-learning
def _pml_value_and_grad(criterion, x, y, **kw):
  torch = pytest.importorskip("torch")
  t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  value = criterion(t, None if y is None else torch.tensor(y, dtype=torch.int64), **kw)
  value.backward()
  return value.item(), t.grad.numpy()


def test_matches_pytorch_metric_learning_float64():
  pml = pytest.importorskip("pytorch_metric_learning.losses")
  torch = pytest.importorskip("torch")
  y = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 2], np.int32)
  x = _x(11, n=10, d=4)
  z2 = _x(12, n=10, d=4)
  w = _x(13, n=4, d=5)
  w = w / np.linalg.norm(w, axis=0)
  p2s = pml.P2SGradLoss(4, 5)
  p2s.weight.data = torch.tensor(w)
  # (sim_jax, pml criterion, rtol): 1e-9 where the definitions coincide. Histogram: pml forms
  # its bin nodes r * delta as a float32 tensor (int64 tensor x Python float), ~1e-7 off.
  # P2SGrad: pml's in-place renorm leaves its columns at norm 1 / (1 + 1e-7) (torch.renorm's
  # epsilon), sim_jax uses unit columns. Dynamic soft margin: value only (pml differentiates
  # through the histogram's fractional bin weights; sim_jax holds the CDF constant).
  cases = [
    (R.fast_ap, pml.FastAPLoss(), 1e-9, True),
    (R.histogram, pml.HistogramLoss(), 1e-6, True),
    (lambda e, lab: R.ranked_list(e, lab, margin=0.4, t_neg=10.0),
     pml.RankedListLoss(margin=0.4, Tn=10.0), 1e-9, True),
    (lambda e, lab: R.dynamic_soft_margin(e, lab, jnp.zeros(10))[0], pml.DynamicSoftMarginLoss(),
     1e-9, False),
  ] + [(lambda e, lab, v=v: R.pnp(e, lab, variant=v), pml.PNPLoss(variant=v), 1e-9, True)
       for v in R.PNP_VARIANTS]
  with jax.enable_x64(True):
    for fn, criterion, rtol, with_grad in cases:
      expected_value, expected_grad = _pml_value_and_grad(criterion, x, y)
      value, grad = jax.jit(jax.value_and_grad(lambda e, fn=fn: fn(e, jnp.asarray(y))))(
        jnp.asarray(x))
      np.testing.assert_allclose(value, expected_value, rtol=rtol, err_msg=str(criterion))
      if with_grad:
        np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=rtol,
                                   err_msg=str(criterion))
    y5 = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4], np.int32)
    expected_value, expected_grad = _pml_value_and_grad(p2s, x, y5)
    value, grad = jax.value_and_grad(
      lambda e: R.p2sgrad(e, jnp.asarray(y5), jnp.asarray(w)))(jnp.asarray(x))
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-8)
    expected_value, expected_grad = _pml_value_and_grad(
      lambda t, _: pml.VICRegLoss()(t, ref_emb=torch.tensor(z2)), x, None)
    value, grad = jax.value_and_grad(lambda e: ssl.vicreg(e, jnp.asarray(z2)))(jnp.asarray(x))
    np.testing.assert_allclose(value, expected_value, rtol=1e-9)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- sharded
_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
from sim_jax.losses import ssl
jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 4
mesh = jax.make_mesh((4,), ("data",))
rng = np.random.default_rng(0)
z1, z2 = (jnp.asarray(rng.normal(size=(16, 6))) for _ in range(2))
for name, fn in (("vicreg", ssl.vicreg), ("barlow_twins", ssl.barlow_twins)):
  one = jax.jit(jax.value_and_grad(lambda a, b: fn(a, b), (0, 1)))(z1, z2)
  four = jax.jit(jax.value_and_grad(lambda a, b: fn(a, b, mesh=mesh), (0, 1)))(z1, z2)
  np.testing.assert_allclose(four[0], one[0], rtol=1e-12, err_msg=name)
  for g4, g1 in zip(four[1], one[1]):
    np.testing.assert_allclose(g4, g1, rtol=1e-10, atol=1e-13, err_msg=name)
  # A per-device (local) statistic would differ: the global one is what is computed.
  local = fn(z1[:4], z2[:4])
  assert abs(float(local) - float(one[0])) > 1e-3, name
  print("ok", name)
"""


def test_vicreg_and_barlow_twins_use_global_batch_statistics_on_4_devices():
  out = run_python(_SHARDED, num_devices=4).stdout
  assert "ok vicreg" in out and "ok barlow_twins" in out
