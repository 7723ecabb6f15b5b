"""Per-class adaptive margin contrastive loss: value and gradients vs NumPy loops, check_grads,
no collapse (the equilibrium margin in closed form), the objective table, bad input."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from sim_jax.losses import adaptive_margin, objective

B, D, C = 12, 5, 4


def data(seed=0):
  rng = np.random.default_rng(seed)
  a, b = rng.standard_normal((2, B, D)) * 0.4
  la, lb = rng.integers(0, C, (2, B))
  lb[:4] = la[:4]  # some positive pairs
  raw = rng.standard_normal(C)
  return a, b, (la == lb).astype(np.int32), la, lb, raw


def softplus(x):
  return np.log1p(np.exp(-abs(x))) + np.maximum(x, 0)


def reference(a, b, same, la, lb, raw, m_min, lam, squared, distance):
  """Per-pair losses [B] and d(mean loss)/d raw [C], pair by pair."""
  m = m_min + softplus(raw)
  sig = 1 / (1 + np.exp(-raw))  # softplus'
  losses_, grad_raw = [], np.zeros(C)
  for i in range(B):
    if distance == "euclidean":
      d = np.sqrt(np.sum((a[i] - b[i]) ** 2))
    else:
      d = 1 - a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i]))
    mi = 0.5 * (m[la[i]] + m[lb[i]])
    if same[i]:
      losses_.append(0.5 * d * d if squared else d)
      continue
    h = max(0.0, mi - d)
    losses_.append((0.5 * h * h if squared else h) - lam * mi)
    dl_dm = (h if squared else float(mi > d)) - lam
    for c in (la[i], lb[i]):
      grad_raw[c] += dl_dm * 0.5 * sig[c] / B
  return np.array(losses_), grad_raw


@pytest.mark.parametrize("squared,distance", [(True, "euclidean"), (False, "euclidean"),
                                              (True, "cosine")])
def test_value_and_margin_gradient_match_numpy_loop(squared, distance):
  a, b, same, la, lb, raw = data()
  kw = dict(min_margin=0.2, reward=0.15, squared=squared, distance=distance)
  fn = jax.jit(lambda r, **k: losses.adaptive_margin_contrastive(
      jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), same, la, lb, r, **kw, **k),
      static_argnames="reduction")
  want, want_grad = reference(a, b, same, la, lb, raw, 0.2, 0.15, squared, distance)
  r = jnp.asarray(raw, jnp.float32)
  np.testing.assert_allclose(fn(r, reduction="none"), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fn(r, reduction="mean"), want.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.grad(fn)(r), want_grad, rtol=1e-4, atol=1e-6)
  w = np.linspace(0, 1, B)
  got = losses.adaptive_margin_contrastive(a, b, same, la, lb, raw, weights=w, **kw)
  np.testing.assert_allclose(got, np.sum(w * want) / np.sum(w), rtol=1e-5, atol=1e-6)


def test_check_grads_float64():
  a, b, same, la, lb, raw = data(1)
  with jax.enable_x64(True):
    f = jax.jit(lambda x, y, r: adaptive_margin.adaptive_margin_contrastive(
        x, y, same, la, lb, r, min_margin=0.1, reward=0.1))
    check_grads(f, (jnp.asarray(a), jnp.asarray(b), jnp.asarray(raw)), order=1,
                modes=("rev",), atol=1e-5, rtol=1e-5)


def test_margins_settle_at_the_closed_form_equilibrium():
  # Every pair a negative of classes (0, 1) at distance 0.5; gradient descent on the raw margins
  # alone. With reward lambda the squared form settles where m - 0.5 = lambda. Without it (the
  # plain learnt margin) nothing holds the margin up: it falls until no negative is inside it,
  # to 0.5 here, and with the encoder pulling those apart it would keep falling.
  a = np.zeros((B, D), np.float32)
  b = np.zeros((B, D), np.float32)
  b[:, 0] = 0.5
  la, lb, same = np.zeros(B, np.int32), np.ones(B, np.int32), np.zeros(B, np.int32)
  start = adaptive_margin.raw_from_class_margin(1.0, 0.05, 2)
  for lam, want in ((0.1, 0.6), (0.3, 0.8), (0.0, 0.5)):
    loss = functools.partial(adaptive_margin.adaptive_margin_contrastive, a, b, same, la, lb,
                             min_margin=0.05, reward=lam)
    step = jax.jit(lambda r, loss=loss: r - 2.0 * jax.grad(loss)(r))
    r = start
    for _ in range(300):
      r = step(r)
    np.testing.assert_allclose(adaptive_margin.class_margins(r, 0.05), [want, want], atol=0.01)


def test_raw_from_class_margin_inverts_and_stats():
  raw = adaptive_margin.raw_from_class_margin(0.7, 0.2, 3)
  np.testing.assert_allclose(adaptive_margin.class_margins(raw, 0.2), [0.7] * 3, rtol=1e-6)
  big = adaptive_margin.raw_from_class_margin(60.0, 0.2, 1)  # no overflow
  np.testing.assert_allclose(adaptive_margin.class_margins(big, 0.2), [60.0], rtol=1e-6)
  stats = adaptive_margin.margin_stats(jnp.array([0.0, 1.0]), 0.1)
  np.testing.assert_allclose([stats["margin_min"], stats["margin_max"], stats["margin"]],
                             [0.1 + np.log(2), 0.1 + softplus(1.0),
                              0.1 + (np.log(2) + softplus(1.0)) / 2], rtol=1e-6)


def test_bad_input_names_the_argument():
  a, b, same, la, lb, raw = data()
  f = adaptive_margin.adaptive_margin_contrastive
  with pytest.raises(ValueError, match=r"labels_a must be class ids in \[0, 4\)"):
    f(a, b, same, la + 4, lb, raw)
  with pytest.raises(ValueError, match="labels_b must have shape"):
    f(a, b, same, la, lb[:3], raw)
  with pytest.raises(ValueError, match="margin_raw must be a 1-D float array"):
    f(a, b, same, la, lb, raw[None])
  with pytest.raises(ValueError, match="min_margin must be > 0"):
    f(a, b, same, la, lb, raw, min_margin=0.0)
  with pytest.raises(ValueError, match="reward must be >= 0"):
    f(a, b, same, la, lb, raw, reward=-0.1)
  with pytest.raises(ValueError, match="margin=0.1 must be larger than min_margin=0.2"):
    adaptive_margin.raw_from_class_margin(0.1, 0.2, 3)


def _config(**loss):
  c = ml_collections.ConfigDict({"loss": losses.default_config().to_dict(),
                                 "data": {"sampler": "pairs"}})
  c.loss.name = "adaptive_margin_contrastive"
  c.loss.update(loss)
  return c


def test_objective_table_entry():
  c = _config(margin=0.8, adaptive_margin_min=0.2, adaptive_margin_reward=0.05)
  objective.validate(c)
  assert objective.num_logits(c.loss, 7, "x") == 7
  params = {"loss": objective.init_params(c.loss, num_classes=7)}
  assert params["loss"]["class_margin_raw"].shape == (7,)
  np.testing.assert_allclose(objective.margin(c.loss, params), 0.8, rtol=1e-6)
  a, b, same, la, lb, raw = data()
  z = np.stack([a, b], 1).reshape(2 * B, D).astype(np.float32)  # rows a0, b0, a1, b1, ...
  labels = np.stack([la, lb], 1).reshape(-1)
  params["loss"]["class_margin_raw"] = jnp.asarray(np.r_[raw, 0.0, 0.0, 0.0], jnp.float32)
  got = objective.loss(c, params, z, labels, {"same": same})
  want, _ = reference(a, b, same, la, lb, np.r_[raw, 0.0, 0.0, 0.0][:C], 0.2, 0.05, True,
                      "euclidean")
  np.testing.assert_allclose(got, want.mean(), rtol=1e-5)
  # What the trainer logs: train/margin, train/margin_min, train/margin_max.
  m = 0.2 + softplus(np.r_[raw, 0.0, 0.0, 0.0])
  stats = objective.margin_metrics(c.loss, params)
  np.testing.assert_allclose([stats[k] for k in objective.MARGIN_METRICS],
                             [m.mean(), m.min(), m.max()], rtol=1e-5)
  one = objective.margin_metrics(_config(name="contrastive", margin=0.7).loss, {})
  assert {k: float(v) for k, v in one.items()} == dict.fromkeys(objective.MARGIN_METRICS, 0.7)
  with pytest.raises(ValueError, match="config.loss.margin=0.1 must be larger than"):
    objective.validate(_config(margin=0.1, adaptive_margin_min=0.1))
  with pytest.raises(ValueError, match="sampler='pairs'"):
    bad = _config()
    bad.data.sampler = "pk"
    objective.validate(bad)
