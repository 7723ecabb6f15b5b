"""Proxy and classification-margin losses (sim_jax.losses.margin_softmax, .proxy) against
explicit float64 loops over anchors and classes, the papers' closed forms, and
pytorch-metric-learning; the class-blocked ProxyNCA / ProxyAnchor against the dense ones; each
loss wired into the trainer."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from configs import test as test_config
from sim_jax import losses, train
from sim_jax.losses import margin_softmax, objective
from tests.experiments_trace_test import CLASSES, synthetic_batch, trace_train_step

N, D, C, K = 7, 4, 3, 2
ATOL = 1e-6  # float32 closed forms near 0 (e.g. 4.6e-4) hold to 1e-6 absolute


# ------------------------------------------------------------------ loop references (float64)


def _unit(v):
  return v / max(math.sqrt(sum(a * a for a in v)), 1e-12)


def _dot(a, b):
  return sum(float(p) * float(q) for p, q in zip(a, b))


def _ce(row, y):
  m = max(row)
  return m + math.log(sum(math.exp(v - m) for v in row)) - row[y]


def _cos(x, w):
  return _dot(_unit(x), _unit(w))


def _arc_target(c, m):
  theta = math.acos(min(max(c, -1.0), 1.0))
  return math.cos(theta + m) if theta <= math.pi - m else c - m * math.sin(m)


def _psi(c, m):
  theta = math.acos(min(max(c, -1.0), 1.0))
  k = math.floor(theta * m / math.pi)
  return (-1) ** k * math.cos(m * theta) - 2 * k


def _norm(v):
  return math.sqrt(_dot(v, v))


def ref_margin(name, x, y, w, **kw):
  """Mean over anchors of the cross-entropy of the loss's logits, one class at a time."""
  out = []
  for i in range(len(x)):
    row = []
    for c in range(len(w)):
      if name == "subcenter_arcface":
        cos = max(_cos(x[i], wk) for wk in w[c])
      elif name != "soft_triple":
        cos = _cos(x[i], w[c])
      if name in ("arcface", "subcenter_arcface"):
        s = kw.get("scale", 64.0)
        row.append(s * (_arc_target(cos, kw.get("margin", 0.5)) if c == y[i] else cos))
      elif name == "cosface":
        s = kw.get("scale", 64.0)
        row.append(s * (cos - kw.get("margin", 0.35) if c == y[i] else cos))
      elif name in ("large_margin_softmax", "sphereface"):
        mag = kw.get("scale", 1.0) * _norm(x[i])
        if name == "large_margin_softmax":
          mag *= _norm(w[c])
        row.append(mag * (_psi(cos, kw.get("margin", 4)) if c == y[i] else cos))
      elif name == "normalized_softmax":
        row.append(cos / kw.get("temperature", 0.05))
      elif name == "proxy_nca":
        xi, pc = _unit(x[i]), _unit(w[c])
        row.append(-kw.get("scale", 1.0) * sum((a - b) ** 2 for a, b in zip(xi, pc)))
      elif name == "soft_triple":
        g = kw.get("gamma", 0.1)
        sims = [_cos(x[i], wk) for wk in w[c]]
        e = [math.exp(v / g) for v in sims]
        s_ic = sum(ei * v for ei, v in zip(e, sims)) / sum(e)
        row.append(kw.get("la", 20.0) * (s_ic - (kw.get("margin", 0.01) if c == y[i] else 0.0)))
    out.append(_ce(row, y[i]))
  loss = sum(out) / len(out)
  if name == "soft_triple" and kw.get("tau", 0.0):
    reg, kk = 0.0, len(w[0])
    for c in range(len(w)):
      for a in range(kk):
        for b in range(a + 1, kk):
          reg += math.sqrt(2 + 1e-5 - 2 * _cos(w[c][a], w[c][b]))
    loss += kw["tau"] * reg / (len(w) * kk * (kk - 1))
  return loss


def ref_proxy_anchor(x, y, p, margin=0.1, alpha=32.0):
  """Kim et al. eq. 4 as a loop over proxies, then over the anchors of and not of its class."""
  pos_sum, neg_sum, present = 0.0, 0.0, 0
  for c in range(len(p)):
    pos = [math.exp(-alpha * (_cos(x[i], p[c]) - margin)) for i in range(len(x)) if y[i] == c]
    neg = [math.exp(alpha * (_cos(x[i], p[c]) + margin)) for i in range(len(x)) if y[i] != c]
    if pos:
      present += 1
      pos_sum += math.log(1 + sum(pos))
    neg_sum += math.log(1 + sum(neg))
  return pos_sum / max(present, 1) + neg_sum / len(p)


def reference(name, x, y, w, **kw):
  if name == "proxy_anchor":
    return ref_proxy_anchor(x, y, w, **kw)
  return ref_margin(name, x, y, w, **kw)


def fd_grad(fn, arr, h=1e-6):
  """Central finite differences of a float64 scalar function of `arr`."""
  g = np.zeros_like(arr)
  for idx in np.ndindex(arr.shape):
    up, down = arr.copy(), arr.copy()
    up[idx] += h
    down[idx] -= h
    g[idx] = (fn(up) - fn(down)) / (2 * h)
  return g


# ------------------------------------------------------------------------------ the test cases

MULTI = ("subcenter_arcface", "soft_triple")  # weights [C, K, D]
NAMES = ("arcface", "subcenter_arcface", "cosface", "large_margin_softmax", "sphereface",
         "normalized_softmax", "proxy_nca", "proxy_anchor", "soft_triple")
# Hyper-parameters mild enough that float32 gradients keep 4 digits (the paper defaults, s = 64,
# are checked against pml in float64 below).
MILD = {"arcface": dict(scale=4.0, margin=0.5), "subcenter_arcface": dict(scale=4.0, margin=0.3),
        "cosface": dict(scale=4.0, margin=0.35), "large_margin_softmax": dict(margin=3),
        "sphereface": dict(margin=2, scale=1.5), "normalized_softmax": dict(temperature=0.5),
        "proxy_nca": dict(scale=2.0), "proxy_anchor": dict(margin=0.1, alpha=4.0),
        "soft_triple": dict(la=4.0, gamma=0.5, margin=0.1, tau=0.2)}


def _inputs(name, seed=0, n=N, c=C):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, D))
  y = np.resize(np.arange(c), n)
  rng.shuffle(y)
  w = rng.normal(size=(c, K, D) if name in MULTI else (c, D))
  return x, y.astype(np.int32), w


@pytest.mark.parametrize("name", NAMES)
def test_float32_eager_and_vmapped_jit_match_the_loop(name):
  """Eager value and gradients in float32 against the loop and its finite differences (mild
  hyper-parameters: float32 keeps 4 digits of the gradient); the jitted loss under vmap over two
  batches against the loop of each, not recompiled for new values."""
  x, y, w = _inputs(name)
  kw = MILD[name]
  f = getattr(losses, name)
  value, (gx, gw) = jax.value_and_grad(functools.partial(f, **kw), argnums=(0, 2))(
      jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(w, jnp.float32))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, reference(name, x, y, w, **kw), rtol=2e-5, atol=2e-5)
  gtol = dict(rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(gx, fd_grad(lambda a: reference(name, a, y, w, **kw), x), **gtol)
  np.testing.assert_allclose(gw, fd_grad(lambda a: reference(name, x, y, a, **kw), w), **gtol)
  xs = np.stack([x, _inputs(name, seed=2)[0]]).astype(np.float32)
  ys = np.stack([y, y[::-1]])
  batched = jax.jit(jax.vmap(lambda a, b: f(a, b, jnp.asarray(w, jnp.float32), **kw)))
  got = batched(xs, ys)
  want = [reference(name, xs[i].astype(np.float64), ys[i], w, **kw) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  size = batched._cache_size()
  assert np.all(np.isfinite(batched(xs * 3, ys[:, ::-1])))
  assert batched._cache_size() == size, "recompiled for new values of the same shapes"


# --------------------------------------------------------------------------- closed forms


def _aligned(c=4, d=4):
  """One anchor per class, each on its class's axis: cos(x_i, w_c) = [c = y_i]."""
  eye = np.eye(c, d)
  return jnp.asarray(eye * 3.0), jnp.arange(c), jnp.asarray(eye * 0.5)


def test_closed_forms_on_orthogonal_classes():
  """x_i on w_{y_i}, orthogonal to the others (C = 4): ArcFace log(1 + (C-1) e^{-s cos m}),
  CosFace the same with s(1 - m), NormalizedSoftmax with 1/t, ProxyNCA log(1 + (C-1) e^{-2s}),
  Proxy-Anchor log(1 + e^{-alpha(1 - delta)}) + log(1 + (C-1) e^{alpha delta}) (every proxy has
  one positive at cosine 1 and C-1 negatives at cosine 0); and an anchor opposite its centre
  (theta = pi > pi - m) gets ArcFace's s (cos theta - m sin m), with a finite gradient."""
  c, s, m, a, dlt = 4, 10.0, 0.5, 8.0, 0.1
  opposite_w = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])

  @jax.jit
  def values(x, y, w, xo):
    arc_grad = jax.grad(losses.arcface)(xo, jnp.asarray([0]), opposite_w, margin=m, scale=2.0)
    return (losses.arcface(x, y, w, margin=m, scale=s),
            losses.cosface(x, y, w, margin=0.35, scale=s),
            losses.normalized_softmax(x, y, w, temperature=0.25),
            losses.proxy_nca(x, y, w, scale=1.5),
            losses.proxy_anchor(x, y, w, margin=dlt, alpha=a),
            losses.arcface(xo, jnp.asarray([0]), opposite_w, margin=m, scale=2.0), arc_grad)

  *got, arc_grad = values(*_aligned(), jnp.asarray([[-2.0, 0.0]]))
  target = 2.0 * (-1.0 - m * math.sin(m))
  want = [math.log1p((c - 1) * math.exp(-s * math.cos(m))),
          math.log1p((c - 1) * math.exp(-s * 0.65)), math.log1p((c - 1) * math.exp(-4.0)),
          math.log1p((c - 1) * math.exp(-3.0)),
          math.log1p(math.exp(-a * (1 - dlt))) + math.log1p((c - 1) * math.exp(a * dlt)),
          math.log(math.exp(target) + 1.0) - target]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=ATOL)
  assert np.all(np.isfinite(arc_grad))


def test_psi_closed_form_and_degenerate_margins():
  """psi(0) = 1, psi(pi/m) = -1, psi(pi) = 1 - 2m, monotone decreasing (Liu et al. 2016);
  m = 1 is the plain softmax of x W^T; zero margins reduce ArcFace / CosFace to the normalized
  softmax with t = 1/s; K = 1 reduces sub-center ArcFace to ArcFace and SoftTriple to CosFace
  with s = lambda, m = delta."""

  @jax.jit
  def psis(c):
    return [margin_softmax.psi(c, m) for m in (1, 2, 3, 4)]

  ends = np.cos([[0.0, np.pi / m, np.pi] for m in (1, 2, 3, 4)])
  for m, got in zip((1, 2, 3, 4), psis(jnp.asarray(ends))):
    np.testing.assert_allclose(got[m - 1], [1.0, -1.0, 1.0 - 2 * m], atol=1e-5)
  for grid in psis(jnp.cos(jnp.linspace(0.0, np.pi, 200))):
    assert np.all(np.diff(np.asarray(grid)) < 1e-6)

  @jax.jit
  def pairs(x, y, w):
    nsm = losses.normalized_softmax(x, y, w, temperature=0.25)
    return [(losses.large_margin_softmax(x, y, w, margin=1), losses.softmax_ce(x @ w.T, y)),
            (losses.arcface(x, y, w, margin=0.0, scale=4.0), nsm),
            (losses.cosface(x, y, w, margin=0.0, scale=4.0), nsm),
            (losses.subcenter_arcface(x, y, w[:, None], margin=0.3, scale=4.0),
             losses.arcface(x, y, w, margin=0.3, scale=4.0)),
            (losses.soft_triple(x, y, w[:, None], la=5.0, margin=0.2),
             losses.cosface(x, y, w, margin=0.2, scale=5.0))]

  x, y, w = _inputs("arcface", seed=3)
  for got, want in pairs(x.astype(np.float32), y, w.astype(np.float32)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=ATOL)


# ------------------------------------------------------------------------- class blocks


@pytest.mark.parametrize("name", ["proxy_nca", "proxy_anchor"])
def test_class_blocks_equal_dense(name):
  x, y, w = (jnp.asarray(a) for a in _inputs(name, seed=4, n=12, c=7))
  y = y.astype(jnp.int32)
  kw = MILD[name]
  fn = getattr(losses, name)

  @jax.jit
  def all_blocks(a, b):  # dense, one class a block, a block that does not divide C = 7
    return [jax.value_and_grad(lambda u, v, bs=bs: fn(u, y, v, block_size=bs, **kw),
                               argnums=(0, 1))(a, b) for bs in (None, 1, 3)]

  (dense, (gx, gw)), *blocked = all_blocks(x.astype(jnp.float32), w.astype(jnp.float32))
  for value, (bx, bw) in blocked:
    np.testing.assert_allclose(value, dense, rtol=1e-5)
    np.testing.assert_allclose(bx, gx, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(bw, gw, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("name", ["proxy_nca", "proxy_anchor"])
def test_class_blocks_hold_o_of_n_block_memory(name):
  """XLA's temp memory of value and gradient at N = C = 4096: dense holds [N, C] (64 MiB in
  float32); blocks of 128 classes stay under 8 [N, 128] arrays."""
  n = c = 4096
  x = jax.ShapeDtypeStruct((n, 16), jnp.float32)
  w = jax.ShapeDtypeStruct((c, 16), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)
  fn = getattr(losses, name)

  def temp(block):
    g = jax.jit(jax.grad(lambda a, lab, b: fn(a, lab, b, block_size=block), argnums=(0, 2)))
    return g.lower(x, y, w).compile().memory_analysis().temp_size_in_bytes

  dense, blocked = temp(None), temp(128)
  assert dense >= n * c * 4, dense
  assert blocked < 8 * n * 128 * 4, (blocked, dense)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("call, needle", [
    (lambda x, y, w: losses.arcface(x, y, w[:, :3]), r"weights must have shape \[C, D\] with D=4"),
    (lambda x, y, w: losses.arcface(x, y + 5, w), r"class ids in \[0, 3\).*\[5, 7\]"),
    (lambda x, y, w: losses.cosface(x, y, w, margin=-0.1), r"margin must be >= 0, got -0.1"),
    (lambda x, y, w: losses.arcface(x, y, w, scale=0.0), r"scale must be > 0, got 0.0"),
    (lambda x, y, w: losses.sphereface(x, y, w, margin=1.5), r"positive int.*got 1.5"),
    (lambda x, y, w: losses.large_margin_softmax(x, y, w, margin=0), r"positive int.*got 0"),
    (lambda x, y, w: losses.normalized_softmax(x, y, w, temperature=-1.0),
     r"temperature must be > 0, got -1.0"),
    (lambda x, y, w: losses.subcenter_arcface(x, y, w), r"weights must have shape \[C, K, D\]"),
    (lambda x, y, w: losses.soft_triple(x, y, w[:, None], tau=0.2, reduction="none"),
     r"tau=0.2"),
    (lambda x, y, w: losses.soft_triple(x, y, w[:, None], gamma=0.0), r"gamma must be > 0"),
    (lambda x, y, w: losses.proxy_nca(x, y, w, block_size=0), r"block_size .*got 0"),
    (lambda x, y, w: losses.proxy_anchor(x, y, w, alpha=-2.0), r"alpha must be > 0, got -2.0"),
    (lambda x, y, w: losses.proxy_nca(x, y, w, reduction="avg"), r"reduction .*got 'avg'"),
    (lambda x, y, w: losses.proxy_anchor(x, y.astype(jnp.float32), w), r"integer array"),
    (lambda x, y, w: losses.arcface(x, y, w.astype(jnp.int32)), r"floating-point.*int32"),
])
def test_bad_input_names_the_argument_and_value(call, needle):
  x, y, w = (jnp.asarray(a) for a in _inputs("arcface", seed=5))
  with pytest.raises(ValueError, match=needle):
    call(x.astype(jnp.float32), y.astype(jnp.int32), w.astype(jnp.float32))


# -------------------------------------------------------------- pytorch-metric-learning


def _pml_case(name, x, y, w):
  """pml's loss object for `name` with sim_jax's defaults, its weight attribute, and the map
  from pml's layout of that weight to sim_jax's."""
  pml = pytest.importorskip("pytorch_metric_learning.losses")
  c, d = len(w), x.shape[1]
  k = w.shape[1] if w.ndim == 3 else 1
  flat_t = w.reshape(c * k, d).T.copy()  # pml's W / fc [D, C*K], column c*K + k
  to_ours = (lambda a: a.T.reshape(c, k, d)) if w.ndim == 3 else (lambda a: a.T)
  table = {
      "arcface": (pml.ArcFaceLoss(c, d, margin=math.degrees(0.5), scale=64), "W", flat_t),
      "subcenter_arcface": (pml.SubCenterArcFaceLoss(
          num_classes=c, embedding_size=d, margin=math.degrees(0.5), scale=64, sub_centers=k),
          "W", flat_t),
      "cosface": (pml.CosFaceLoss(c, d, margin=0.35, scale=64), "W", flat_t),
      "large_margin_softmax": (pml.LargeMarginSoftmaxLoss(c, d, margin=4, scale=1), "W", flat_t),
      "sphereface": (pml.SphereFaceLoss(c, d, margin=4, scale=1), "W", flat_t),
      "normalized_softmax": (pml.NormalizedSoftmaxLoss(c, d, temperature=0.05), "W", flat_t),
      "proxy_nca": (pml.ProxyNCALoss(c, d, softmax_scale=1), "proxies", w.copy()),
      "proxy_anchor": (pml.ProxyAnchorLoss(c, d, margin=0.1, alpha=32), "proxies", w.copy()),
      "soft_triple": (pml.SoftTripleLoss(c, d, centers_per_class=k, la=20, gamma=0.1,
                                         margin=0.01), "fc", flat_t),
  }
  loss, attr, theirs = table[name]
  return loss, attr, theirs, (to_ours if attr != "proxies" else (lambda a: a))


@pytest.mark.parametrize("name", NAMES)
def test_float64_jit_matches_the_loop_and_pytorch_metric_learning(name):
  """float64, jitted, pml's default hyper-parameters (ArcFace's margin given to pml in degrees),
  the same inputs: the value and the gradients for the embeddings and the class weights equal
  the loop (finite differences for the gradients) and pml (to 1e-9); `check_grads` passes."""
  torch = pytest.importorskip("torch")
  x, y, w = _inputs(name, seed=6)
  loss, attr, theirs, to_ours = _pml_case(name, x, y, w)
  loss = loss.double()
  getattr(loss, attr).data = torch.tensor(theirs)
  xt = torch.tensor(x, requires_grad=True)
  value = loss(xt, torch.tensor(y, dtype=torch.long))
  value.backward()
  fn = getattr(losses, name)
  with jax.enable_x64(True):
    ours = jax.jit(lambda a, b: fn(a, jnp.asarray(y), to_ours(b)))
    got, (gx, gw) = jax.value_and_grad(ours, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(theirs))
    check_grads(ours, (jnp.asarray(x), jnp.asarray(theirs)), order=1, modes=["rev"])
  np.testing.assert_allclose(got, value.item(), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(gw, getattr(loss, attr).grad.numpy(), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(got, reference(name, x, y, w), rtol=1e-10)
  ref_gx = fd_grad(lambda a: reference(name, a, y, w), x)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-6 * np.abs(ref_gx).max())


def test_proxy_nca_keeps_anchors_whose_probability_underflows():
  """Pinned rule: pml drops an anchor whose softmax probability of its own proxy underflows to
  0 (exp of a gap > ~745 in float64); sim_jax works in log space and counts it with its loss
  lse_c(2 s c_ic) - 2 s c_iy (here 2 s (1 - (-1)) = 4 s for the anchor opposite its proxy)."""
  p = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
  x = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])
  y = jnp.asarray([0, 1])
  with jax.enable_x64(True):
    got = losses.proxy_nca(x.astype(jnp.float64), y, p.astype(jnp.float64), scale=500.0,
                           reduction="none")
  np.testing.assert_allclose(got, [0.0, 2000.0], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ the trainer


# The argument each objective.CLASS_DEFAULTS key feeds, where it is not the key's own name.
ARGUMENT = {("proxy_anchor", "scale"): "alpha", ("soft_triple", "scale"): "la"}


def test_defaults_of_the_table_are_the_functions_defaults():
  """objective.CLASS_DEFAULTS (config None -> paper value) agrees with each function's own
  defaults (K has no function default: it is the weights' shape)."""
  for name, defaults in objective.CLASS_DEFAULTS.items():
    params = inspect.signature(getattr(losses, name)).parameters
    for key, value in defaults.items():
      if key != "centers":
        assert params[ARGUMENT.get((name, key), key)].default == value, (name, key)


@pytest.mark.parametrize("name", NAMES)
def test_one_train_step_with_each_loss(name):
  """make_setup builds the proxies [C, D] / [C, K, D] in params["loss"], and the trainer's step
  traces (`jax.eval_shape`) with them on a P x K batch of the synthetic split's classes."""
  cfg = test_config.get_config()
  cfg.loss.name = name
  cfg.data.sampler = "pk"
  if name in ("proxy_nca", "proxy_anchor"):
    cfg.loss.block_size = 4
  state, after = trace_train_step(cfg, synthetic_batch(cfg), num_classes=CLASSES)
  shape = state.params["loss"]["proxies"].shape
  k = objective.CLASS_DEFAULTS[name].get("centers")
  assert shape == ((CLASSES, k, 16) if k else (CLASSES, 16))
  assert after.params["loss"]["proxies"].shape == shape


def test_config_errors_name_the_field():
  cfg = test_config.get_config()
  cfg.loss.name = "arcface"
  cfg.loss.class_scale = -1.0
  with pytest.raises(ValueError, match=r"config.loss.class_scale=-1.0"):
    train.validate_config(cfg)
  cfg.loss.class_scale = None
  cfg.loss.margin = 0.3  # the contrastive margin: arcface reads class_margin
  with pytest.raises(ValueError, match=r"config.loss.margin=0.3 is not read"):
    train.validate_config(cfg)
  cfg.loss.margin = 1.0
  cfg.data.sampler = "views"
  with pytest.raises(ValueError, match=r"view_labels='class'"):
    train.validate_config(cfg)
