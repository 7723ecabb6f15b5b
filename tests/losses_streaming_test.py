"""Streaming losses (infonce_streaming, triplet_streaming, two_tower, gradcache) against
independent references.

Values are checked against hand-written NumPy loops over pairs / triplets in float64; gradients
against the dense cores of sim_jax.losses (a second implementation, differentiated by autodiff)
and against central finite differences of the NumPy loops along random directions.
"""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.losses import distributed, gradcache, infonce, infonce_streaming, sweep, two_tower

triplet_mod = importlib.import_module("sim_jax.losses.triplet")

N, D = 24, 8


def _data(seed=0, n=N, d=D, classes=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = rng.integers(0, classes, size=n)
  return x, y


# ---------------------------------------------------------------- NumPy loop references (float64)

def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ref_nt_xent(x, y, t):
  z = _unit(x)
  num, den = np.zeros(len(x)), np.zeros(len(x))
  for i in range(len(x)):
    negs = [math.exp(z[i] @ z[n] / t) for n in range(len(x)) if y[n] != y[i]]
    for p in range(len(x)):
      if p != i and y[p] == y[i]:
        e = math.exp(z[i] @ z[p] / t)
        num[i] += -math.log(e / (e + sum(negs)))
        den[i] += 1
  return num, den


def ref_supcon(x, y, t):
  z = _unit(x)
  num, den = np.zeros(len(x)), np.zeros(len(x))
  for i in range(len(x)):
    pos = [p for p in range(len(x)) if p != i and y[p] == y[i]]
    if not pos:
      continue
    total = sum(math.exp(z[i] @ z[a] / t) for a in range(len(x)) if a != i)
    num[i] = -np.mean([math.log(math.exp(z[i] @ z[p] / t) / total) for p in pos])
    den[i] = 1
  return num, den


def _ref_dist(x, distance):
  n, z = len(x), _unit(x)
  d = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if distance == "cosine":
        d[i, j] = 1 - z[i] @ z[j]
      else:
        sq = np.sum((x[i] - x[j]) ** 2)
        d[i, j] = sq if distance == "squared_euclidean" else math.sqrt(sq)
  return d


def _term(z, margin, soft):
  return math.log1p(math.exp(z)) if soft else max(z + margin, 0.0)


def ref_triplet(x, y, margin, mining, distance, soft):
  d = _ref_dist(x, distance)
  n = len(x)
  num, den = np.zeros(n), np.zeros(n)
  for a in range(n):
    pos = [p for p in range(n) if p != a and y[p] == y[a]]
    neg = [q for q in range(n) if y[q] != y[a]]
    if not pos or not neg:
      continue
    if mining == "batch_hard":
      num[a] = _term(max(d[a, p] for p in pos) - min(d[a, q] for q in neg), margin, soft)
      den[a] = 1
    elif mining == "batch_all":
      for p in pos:
        for q in neg:
          loss = _term(d[a, p] - d[a, q], margin, soft)
          num[a] += loss
          den[a] += 1 if (soft or loss > 0) else 0
    else:  # semi_hard, TF Addons
      for p in pos:
        farther = [d[a, q] for q in neg if d[a, q] > d[a, p]]
        d_an = min(farther) if farther else max(d[a, q] for q in neg)
        num[a] += _term(d[a, p] - d_an, margin, soft)
        den[a] += 1
  return num, den


def _mean(num, den):
  return np.sum(num) / max(np.sum(den), 1)


def _directional_fd(f, x, directions, eps=1e-5):
  return np.array([(f(x + eps * v) - f(x - eps * v)) / (2 * eps) for v in directions])


# ---------------------------------------------------------------- helpers

def _stream_value_and_grad(stats_fn, x):
  """Mean reduction of a stats function, value and gradient, jitted."""
  def loss(x):
    num, den = stats_fn(x)
    return jnp.sum(num) / jnp.maximum(jnp.sum(den), 1), (num, den)
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x, jnp.float32))


def _dense_grad(stats_fn, x):
  loss = lambda x: (lambda nd: jnp.sum(nd[0]) / jnp.maximum(jnp.sum(nd[1]), 1))(stats_fn(x))
  return jax.jit(jax.grad(loss))(jnp.asarray(x, jnp.float32))


def _check_all(stream_fn, dense_fn, ref_fn, x, seed=0):
  (value, (num, den)), grad = _stream_value_and_grad(stream_fn, x)
  ref_num, ref_den = ref_fn(x)
  np.testing.assert_allclose(den, ref_den)
  np.testing.assert_allclose(num, ref_num, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(value, _mean(ref_num, ref_den), rtol=1e-5)
  dense = _dense_grad(dense_fn, x)
  scale = np.max(np.abs(dense))
  np.testing.assert_allclose(grad, dense, rtol=1e-5, atol=1e-5 * scale)
  directions = np.random.default_rng(seed + 1).normal(size=(2,) + x.shape)
  fd = _directional_fd(lambda x: _mean(*ref_fn(x)), x, directions)
  np.testing.assert_allclose(np.einsum("knd,nd->k", directions, grad), fd, rtol=2e-3,
                             atol=1e-4 * scale)


# ---------------------------------------------------------------- InfoNCE family

@pytest.mark.parametrize("temperature,block_size", [(0.01, 7), (1.0, 8), (0.1, 64)])
def test_nt_xent_matches_loops_dense_and_finite_differences(temperature, block_size):
  x, y = _data(1)
  _check_all(
    lambda x: infonce.nt_xent_stats(x, y, temperature=temperature, block_size=block_size),
    lambda x: infonce.nt_xent_stats_dense(x, y, temperature), lambda x: ref_nt_xent(x, y,
                                                                                   temperature), x)


@pytest.mark.parametrize("temperature,block_size", [(0.01, 6), (0.5, 7), (1.0, 24)])
def test_supcon_matches_loops_dense_and_finite_differences(temperature, block_size):
  x, y = _data(2, classes=6)
  y[0] = 99  # an anchor without positives: excluded (den 0), never counted as zero
  _check_all(
    lambda x: infonce.supcon_stats(x, y, temperature=temperature, block_size=block_size),
    lambda x: infonce.supcon_stats_dense(x, y, temperature),
    lambda x: ref_supcon(x, y, temperature), x)


def test_simclr_identical_views_give_log_2n_minus_1():
  # Closed form: all similarities equal, so each term is log(2n - 1) (pinned contract).
  n = 5
  x = np.ones((2 * n, 4))
  y = np.concatenate([np.arange(n), np.arange(n)])
  num, den = jax.jit(lambda x: infonce.nt_xent_stats(x, jnp.asarray(y), temperature=0.3,
                                                     block_size=3))(jnp.asarray(x))
  np.testing.assert_allclose(num / den, np.log(2 * n - 1), rtol=1e-6)


def test_learnable_temperature_gradient_matches_dense():
  x, y = _data(3)
  f_s = lambda t: jnp.sum(infonce.nt_xent_stats(jnp.asarray(x, jnp.float32), y, temperature=t,
                                                block_size=5)[0])
  f_d = lambda t: jnp.sum(infonce.nt_xent_stats_dense(jnp.asarray(x, jnp.float32), y, t)[0])
  np.testing.assert_allclose(jax.jit(jax.grad(f_s))(0.2), jax.jit(jax.grad(f_d))(0.2), rtol=1e-5)
  g_s = lambda t: jnp.sum(infonce.supcon_stats(jnp.asarray(x, jnp.float32), y, temperature=t,
                                               block_size=5)[0])
  g_d = lambda t: jnp.sum(infonce.supcon_stats_dense(jnp.asarray(x, jnp.float32), y, t)[0])
  np.testing.assert_allclose(jax.jit(jax.grad(g_s))(0.2), jax.jit(jax.grad(g_d))(0.2), rtol=1e-5)


def test_single_class_and_zero_vector_are_finite():
  x, _ = _data(4, n=10)
  x[3] = 0.0  # zero embedding: cosine similarity 0, finite gradient
  y = np.zeros(10, np.int32)
  for fn in (infonce.nt_xent_stats, infonce.supcon_stats):
    (value, (num, den)), grad = _stream_value_and_grad(
      lambda x, fn=fn: fn(x, y, temperature=0.1, block_size=4), x)
    assert np.all(np.isfinite(grad)) and np.isfinite(value)
  # NT-Xent without negatives: every l_ip = 0, den = #positives.
  num, den = jax.jit(lambda x: infonce.nt_xent_stats(x, y, temperature=0.1,
                                                     block_size=4))(jnp.asarray(x))
  np.testing.assert_allclose(num, 0.0)
  np.testing.assert_allclose(den, 9.0)


# ---------------------------------------------------------------- triplet

@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
@pytest.mark.parametrize("distance,soft,block_size", [
  ("euclidean", False, 7), ("squared_euclidean", True, 8), ("cosine", False, 5)])
def test_triplet_matches_loops_dense_and_finite_differences(mining, distance, soft, block_size):
  x, y = _data(5, classes=4)
  x = x * 0.5  # distances of order 1, so a 0.2 margin makes some triplets active, some not
  y[-1] = 50   # an anchor without positives: excluded
  margin = 0.2 if distance != "squared_euclidean" else 1.0
  _check_all(
    lambda x: triplet_mod.triplet_stats(x, y, margin=margin, mining=mining, distance=distance,
                                        soft=soft, block_size=block_size),
    lambda x: triplet_mod.triplet_stats_dense(x, y, margin, mining, distance, soft),
    lambda x: ref_triplet(x, y, margin, mining, distance, soft), x)


def test_triplet_margin_gradient_counts_active_terms():
  # d loss_sum / d margin = number of active (hinge > 0) terms: compare with the NumPy loops.
  x, y = _data(6, classes=3)
  xj = jnp.asarray(x * 0.5, jnp.float32)
  for mining in ("batch_hard", "semi_hard", "batch_all"):
    f = lambda m, mining=mining: jnp.sum(triplet_mod.triplet_stats(
      xj, y, margin=m, mining=mining, distance="euclidean", soft=False, block_size=5)[0])
    eps = 1e-6
    fd = (np.sum(ref_triplet(x * 0.5, y, 0.3 + eps, mining, "euclidean", False)[0])
          - np.sum(ref_triplet(x * 0.5, y, 0.3 - eps, mining, "euclidean", False)[0])) / (2 * eps)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(0.3), fd, rtol=1e-4)


# ---------------------------------------------------------------- memory and input checks

def test_streaming_never_materialises_the_n_by_n_matrix():
  n, d, block = 2048, 16, 128
  x = jax.ShapeDtypeStruct((n, d), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)

  def temp_bytes(block_size):
    fn = jax.value_and_grad(lambda x, y: jnp.sum(infonce.nt_xent_stats(
      x, y, temperature=0.1, block_size=block_size)[0]))
    return jax.jit(fn).lower(x, y).compile().memory_analysis().temp_size_in_bytes

  dense = jax.jit(jax.value_and_grad(lambda x, y: jnp.sum(
    infonce.nt_xent_stats_dense(x, y, 0.1)[0]))).lower(x, y).compile()
  assert dense.memory_analysis().temp_size_in_bytes >= n * n * 4  # the dense form holds N x N
  assert temp_bytes(block) < n * n * 4 / 8


def test_invalid_inputs_raise_value_error_naming_the_argument():
  x, y = jnp.ones((6, 3)), jnp.arange(6)
  with pytest.raises(ValueError, match="block_size"):
    infonce.nt_xent_stats(x, y, temperature=0.1, block_size=0)
  with pytest.raises(ValueError, match="temperature"):
    infonce.supcon_stats(x, y, temperature=-1.0, block_size=2)
  with pytest.raises(ValueError, match="labels"):
    infonce.nt_xent_stats(x, y[:5], temperature=0.1, block_size=2)
  with pytest.raises(ValueError, match="mining"):
    triplet_mod.triplet_stats(x, y, margin=0.2, mining="hardest", distance="euclidean", soft=False,
                              block_size=2)
  with pytest.raises(ValueError, match="margin"):
    triplet_mod.triplet_stats(x, y, margin=-0.1, mining="batch_hard", distance="euclidean",
                              soft=False, block_size=2)
  with pytest.raises(ValueError, match="txt_emb"):
    two_tower.clip_infonce(x, jnp.ones((5, 3)), 0.1)
  with pytest.raises(ValueError, match="num_chunks"):
    gradcache.gradcache_value_and_grad(lambda p, b: b * p, jnp.sum, 1.0, x, num_chunks=0)
  with pytest.raises(ValueError, match="divisible"):
    gradcache.gradcache_value_and_grad(lambda p, b: b * p, jnp.sum, 1.0, x, num_chunks=4)


def test_bfloat16_inputs_give_float32_stats_and_bfloat16_gradient():
  x, y = _data(7)
  xb = jnp.asarray(x, jnp.bfloat16)
  (value, (num, _)), grad = _stream_value_and_grad(
    lambda x: infonce.nt_xent_stats(x.astype(jnp.bfloat16), y, temperature=0.1, block_size=5),
    xb.astype(jnp.float32))
  assert num.dtype == jnp.float32
  ref = _mean(*ref_nt_xent(np.asarray(xb.astype(jnp.float32), np.float64), y, 0.1))
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  g = jax.jit(jax.grad(lambda x: jnp.sum(infonce.nt_xent_stats(x, y, temperature=0.1,
                                                               block_size=5)[0])))(xb)
  assert g.dtype == jnp.bfloat16


# ---------------------------------------------------------------- two-tower

def ref_clip(a, b, t):
  a, b = _unit(a), _unit(b)
  n = len(a)
  i2t = [-math.log(math.exp(a[i] @ b[i] / t) / sum(math.exp(a[i] @ b[j] / t) for j in range(n)))
         for i in range(n)]
  t2i = [-math.log(math.exp(a[j] @ b[j] / t) / sum(math.exp(a[i] @ b[j] / t) for i in range(n)))
         for j in range(n)]
  return 0.5 * (np.mean(i2t) + np.mean(t2i))


def ref_siglip(a, b, log_t, bias):
  a, b = _unit(a), _unit(b)
  n = len(a)
  total = 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      logit = a[i] @ b[j] * math.exp(log_t) + bias
      total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
  return total / n


@pytest.mark.parametrize("block_size", [None, 7])
def test_clip_and_siglip_match_loops_and_dense_gradients(block_size):
  rng = np.random.default_rng(8)
  a, b = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
  aj, bj = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  clip = lambda a, b, t, bs: two_tower.clip_infonce(a, b, t, block_size=bs)
  sig = lambda a, b, lt, c, bs: two_tower.siglip(a, b, lt, c, block_size=bs)
  v, g = jax.jit(jax.value_and_grad(lambda *args: clip(*args, block_size), argnums=(0, 1, 2)))(
    aj, bj, 0.05)
  np.testing.assert_allclose(v, ref_clip(a, b, 0.05), rtol=1e-5)
  v2, g2 = jax.jit(jax.value_and_grad(lambda *a_: sig(*a_, block_size), argnums=(0, 1, 2, 3)))(
    aj, bj, math.log(10.0), -10.0)
  np.testing.assert_allclose(v2, ref_siglip(a, b, math.log(10.0), -10.0), rtol=1e-5)
  directions = rng.normal(size=(2,) + a.shape)
  fd = _directional_fd(lambda a_: ref_clip(a_, b, 0.05), a, directions)
  np.testing.assert_allclose(np.einsum("knd,nd->k", directions, g[0]), fd, rtol=2e-3, atol=1e-5)
  fd_t = (ref_clip(a, b, 0.05 + 1e-6) - ref_clip(a, b, 0.05 - 1e-6)) / 2e-6
  np.testing.assert_allclose(g[2], fd_t, rtol=1e-3)
  fd_b = (ref_siglip(a, b, math.log(10.0), -10.0 + 1e-6)
          - ref_siglip(a, b, math.log(10.0), -10.0 - 1e-6)) / 2e-6
  np.testing.assert_allclose(g2[3], fd_b, rtol=1e-3)
  fd_s = _directional_fd(lambda b_: ref_siglip(a, b_, math.log(10.0), -10.0), b, directions)
  np.testing.assert_allclose(np.einsum("knd,nd->k", directions, g2[1]), fd_s, rtol=2e-3,
                             atol=1e-5)


# ---------------------------------------------------------------- GradCache

def test_gradcache_equals_plain_value_and_grad():
  rng = np.random.default_rng(9)
  params = {"w1": jnp.asarray(rng.normal(size=(6, 16)) * 0.3, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(16, 8)) * 0.3, jnp.float32)}
  images = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=32))
  embed = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
  loss_fn = lambda e: jnp.sum(infonce.supcon_stats_dense(e, labels, 0.2)[0]) / 32
  want_loss, want = jax.jit(jax.value_and_grad(lambda p: loss_fn(embed(p, images))))(params)
  loss, grads = jax.jit(lambda p: gradcache.gradcache_value_and_grad(
    embed, loss_fn, p, images, num_chunks=4))(params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for k in params:
    np.testing.assert_allclose(grads[k], want[k], rtol=1e-5, atol=1e-7)


def test_gradcache_threads_state_per_chunk():
  # A batch-norm-like encoder: centres each chunk with its own mean and counts updates in state.
  rng = np.random.default_rng(10)
  w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  images = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)

  def embed(p, state, x):
    h = x @ p
    return h - jnp.mean(h, axis=0), {"updates": state["updates"] + 1,
                                     "mean": state["mean"] + jnp.mean(h, axis=0)}

  loss_fn = lambda e: two_tower.clip_infonce(e[:6], e[6:], 0.5)

  def chunked(p):  # the same per-chunk model written out by hand
    chunks = [embed(p, {"updates": 0, "mean": 0.0}, images[i:i + 4])[0]
              for i in range(0, 12, 4)]
    return loss_fn(jnp.concatenate(chunks))

  want_loss, want = jax.jit(jax.value_and_grad(chunked))(w)
  state = {"updates": jnp.zeros((), jnp.int32), "mean": jnp.zeros(4)}
  loss, grads, new_state = jax.jit(lambda w, s: gradcache.gradcache_value_and_grad(
    embed, loss_fn, w, images, num_chunks=3, state=s))(w, state)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(grads, want, rtol=1e-5, atol=1e-7)
  assert int(new_state["updates"]) == 3
  np.testing.assert_allclose(new_state["mean"], sum(jnp.mean(images[i:i + 4] @ w, axis=0)
                                                    for i in range(0, 12, 4)), rtol=1e-5)


# ---------------------------------------------------------------- single-device fast paths

def _band_labels():
  """Labels that stress the label-sorted band sweep of the single-device NT-Xent.

  A class of 15 (wider than a block of 6), singletons (anchors without a positive), pairs whose
  sorted positions straddle block borders, and labels given unsorted and non-contiguous.
  """
  y = np.array([7] * 15 + [3, 3] + [100, 101, 102] + [5, 5, 5] + [-2, -2, 9, 9, 9, 9]
               + [11, 12, 11, 12])
  return np.random.default_rng(11).permutation(y)


# The single-device NT-Xent / SupCon forms share the label-sorted sweep.
INFONCE = {"nt_xent": (infonce.nt_xent_stats, infonce.nt_xent_stats_dense, ref_nt_xent),
           "supcon": (infonce.supcon_stats, infonce.supcon_stats_dense, ref_supcon)}


def _check_infonce(loss, x, y, temperature, block_size):
  stream, dense, ref = INFONCE[loss]
  _check_all(lambda x: stream(x, y, temperature=temperature, block_size=block_size),
             lambda x: dense(x, y, temperature), lambda x: ref(x, y, temperature), x)


@pytest.mark.parametrize("loss", ["nt_xent", "supcon"])
@pytest.mark.parametrize("temperature,block_size", [(0.05, 6), (0.5, 5), (1.0, 34)])
def test_infonce_sorted_sweep_classes_across_blocks(loss, temperature, block_size):
  y = _band_labels()
  x, _ = _data(12, n=len(y), d=6)
  _check_infonce(loss, x, y, temperature, block_size)


@pytest.mark.parametrize("loss", ["nt_xent", "supcon"])
def test_infonce_fixed_shift_underflow_falls_back_to_exact_lse(loss):
  # Nearly orthogonal rows: every pair has |cos| < 0.05, so at t = 0.01 the terms exp(l - |q|)
  # are about e^-100, below float32's normal range: the one-pass fixed-shift sum loses them (0 or
  # a few denormal digits), while the loss, softplus(L_i - l_ip) with L_i - l_ip = O(1), needs
  # them to full precision. The exact two-pass log-sum-exp must take over.
  rng = np.random.default_rng(13)
  y = np.repeat(np.arange(4), 5)
  x = np.linalg.qr(rng.normal(size=(32, 32)))[0][:20] + 0.005 * rng.normal(size=(20, 32))
  _check_infonce(loss, x, y, 0.01, 6)


def test_single_block_matches_loops_and_infonce_dispatches_to_the_dense_core():
  # N <= block_size: one block (NT-Xent, SupCon: the dense core itself, same memory bound).
  x, y = _data(14)
  xj = jnp.asarray(x, jnp.float32)
  cases = [
    (lambda x: infonce.nt_xent_stats(x, y, temperature=0.1, block_size=N),
     lambda x: ref_nt_xent(x, y, 0.1)),
    (lambda x: infonce.supcon_stats(x, y, temperature=0.1, block_size=N + 5),
     lambda x: ref_supcon(x, y, 0.1)),
    (lambda x: triplet_mod.triplet_stats(x, y, margin=0.2, mining="batch_hard",
                                         distance="euclidean", soft=False, block_size=64),
     lambda x: ref_triplet(x, y, 0.2, "batch_hard", "euclidean", False)),
  ]
  for fn, ref in cases:
    num, den = jax.jit(fn)(xj)
    ref_num, ref_den = ref(x)
    np.testing.assert_allclose(den, ref_den)
    np.testing.assert_allclose(num, ref_num, rtol=1e-5, atol=1e-6)
  # NT-Xent and SupCon dispatch to the dense core (no scan, no custom VJP); batch-hard keeps its
  # one-block sweep, which measured faster than the dense core.
  for fn, _ in cases[:2]:
    hlo = jax.jit(fn).lower(xj).as_text()
    assert "custom_vjp" not in hlo and "while" not in hlo


def _ref_batch_hard_grad(x, y, margin):
  """NumPy float64 gradient of the mean batch-hard euclidean loss; ties go to the first index."""
  n = len(x)
  d = _ref_dist(x, "euclidean")
  grad, count = np.zeros_like(x), 0
  for a in range(n):
    pos = [p for p in range(n) if p != a and y[p] == y[a]]
    neg = [q for q in range(n) if y[q] != y[a]]
    if not pos or not neg:
      continue
    count += 1
    p = pos[int(np.argmax([d[a, j] for j in pos]))]   # np.argmax / argmin: first of the ties
    q = neg[int(np.argmin([d[a, j] for j in neg]))]
    if d[a, p] - d[a, q] + margin <= 0:
      continue
    for b, sign in ((p, 1.0), (q, -1.0)):
      unit = (x[a] - x[b]) / d[a, b]
      grad[a] += sign * unit
      grad[b] -= sign * unit
  return grad / max(count, 1)


@pytest.mark.parametrize("block_size", [4, 5, 64])
def test_batch_hard_ties_pick_the_first_column_like_argmax(block_size):
  # Exact duplicates make the hardest positive and the hardest negative tied between two columns
  # (in different blocks for block_size 4 / 5): the whole gradient goes to the first of them.
  rng = np.random.default_rng(15)
  x = rng.normal(size=(16, 5))
  y = np.repeat(np.arange(4), 4)
  x[2] = x[3] = x[1] + 3.0     # class 0: the farthest positive of anchors 0 and 1, tied
  x[9] = x[10] = x[0] + 0.05   # class 2: the nearest negative of anchor 0, tied
  xj = jnp.asarray(x, jnp.float32)
  fn = lambda x: triplet_mod.triplet_stats(x, y, margin=0.5, mining="batch_hard",
                                           distance="euclidean", soft=False, block_size=block_size)
  (value, (num, den)), grad = _stream_value_and_grad(fn, xj)
  ref_num, ref_den = ref_triplet(x, y, 0.5, "batch_hard", "euclidean", False)
  np.testing.assert_allclose(den, ref_den)
  np.testing.assert_allclose(num, ref_num, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, _ref_batch_hard_grad(x, y, 0.5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["nt_xent", "supcon"])
def test_infonce_backward_with_a_wide_spread_of_log_sum_exps(loss):
  # t = 0.01 and the angles below give L (the negatives' log-sum-exp) ~ 1.4 for the anchors of
  # class 2 and ~ 100 for classes 0 / 1, a spread > 40: the column-side softmax exp(l - L_i)
  # of a class-2 column is ~ 0.25 where the row-side exp(l - L_j) of a class-0 row is e^-100
  # (flushed), so it cannot be derived from the row side: the two-exp backward must be used.
  angles = np.deg2rad([180.0, 0.0, 90.0, 91.0, 92.0, 93.0, 271.0, 272.0])
  x = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.linspace(1.0, 2.0, 8)[:, None]
  y = np.array([2, 2, 0, 0, 1, 1, 3, 3])
  _check_infonce(loss, x, y, 0.01, 3)


@pytest.mark.parametrize("loss", ["nt_xent", "supcon"])
def test_infonce_band_tiles_smaller_than_the_block(loss):
  # block_size 256 sweeps with 256-blocks but visits the positives' band in 128-tiles: a class
  # of 150 (wider than a tile), pairs straddling tile borders, singletons, padding (N = 300).
  rng = np.random.default_rng(16)
  y = np.concatenate([np.full(150, 4), np.repeat(np.arange(10, 70), 2), np.arange(100, 130)])
  y = rng.permutation(y)
  x = rng.normal(size=(300, 4))
  _check_infonce(loss, x, y, 0.2, 256)


def _tight_classes(n=600, d=32, classes=3, noise=0.05, seed=0):
  """A nearly converged batch: n samples in `classes` tight clusters around random centres."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  return rng.normal(size=(classes, d))[y] + noise * rng.normal(size=(n, d)), y


@pytest.mark.parametrize("loss,temperature,tol,seed",
                         [("supcon", 0.1, 1.5e-4, 0), ("nt_xent", 0.01, 0.1, 1)])
def test_tight_classes_gradient_stays_as_accurate_as_dense(loss, temperature, tol, seed):
  # Conditioning, not formula. For tight classes SupCon's gradient is a small difference of the
  # softmax-weighted mean and the class mean: an O(N D) class-sum form, which accumulates the two
  # apart, measured 3.5e-4 of max |g| away from dense here. NT-Xent at t = 0.01 has per-anchor
  # losses ~1e-35 and gradients ~1e-33, at the edge of float32's normal range (dense itself is
  # 3e-2 off float64 here): unscaled, the column-side products fall into flushed denormals and
  # the streaming gradient was 0.25 of max |g| away from dense.
  x, y = _tight_classes(seed=seed)
  xj = jnp.asarray(x, jnp.float32)
  stats = {"nt_xent": (infonce.nt_xent_stats, infonce.nt_xent_stats_dense),
           "supcon": (infonce.supcon_stats, infonce.supcon_stats_dense)}[loss]
  g_s = jax.grad(lambda e: jnp.sum(stats[0](e, y, temperature=temperature, block_size=64)[0]))(xj)
  g_d = jax.grad(lambda e: jnp.sum(stats[1](e, y, temperature)[0]))(xj)
  err = float(jnp.max(jnp.abs(g_s - g_d)) / jnp.max(jnp.abs(g_d)))
  assert err < tol, f"{loss}: streaming gradient off by {err:.2e} of max |g| (tolerance {tol})"


# ---------------------------------------------------------------- the dense-or-streaming decision

MESH = object()   # `sweep.streams` only asks whether a mesh is given


@pytest.mark.parametrize("n,block_size,mesh,one_block,expected", [
  (24, None, None, True, False),    # no block_size: dense
  (24, None, MESH, True, False),    # a mesh alone does not stream (jit sees the global batch)
  (24, 8, None, True, True),        # N > block_size on one device: streaming
  (24, 24, None, True, False),      # N <= block_size: one block, the dense core
  (24, 24, None, False, True),      # ... unless the loss keeps its one-block sweep (triplet)
  (24, 64, MESH, True, True),       # a mesh and a block_size: streaming across devices
])
def test_streams_is_the_documented_decision(n, block_size, mesh, one_block, expected):
  assert sweep.streams(n, block_size, mesh, dense_at_one_block=one_block) is expected


@pytest.mark.parametrize("loss", ["nt_xent", "supcon"])
def test_streaming_cores_stream_even_at_one_block(loss):
  # The *_stats_streaming functions never fall back to dense: at N <= block_size the sorted
  # (NT-Xent) or blockwise (SupCon) sweep runs as one block and still equals the loops.
  stream = {"nt_xent": infonce_streaming.nt_xent_stats_streaming,
            "supcon": infonce_streaming.supcon_stats_streaming}[loss]
  _, dense, ref = INFONCE[loss]
  x, y = _data(17)
  fn = lambda x: stream(x, y, temperature=0.2, block_size=N + 3)
  assert "custom_vjp_call" in str(jax.make_jaxpr(fn)(jnp.asarray(x, jnp.float32)))
  _check_all(fn, lambda x: dense(x, y, 0.2), lambda x: ref(x, y, 0.2), x)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
    stream(x, y, temperature=0.2, block_size=None)


@pytest.mark.parametrize("col_axis", [0, -1])
def test_pair_sums_match_numpy_products_with_padded_blocks(col_axis):
  """`local_pair_sums` with columns' parts in either layout (`col_axis=-1`: [D, bc] parts, the
  form the two-tower backward uses) equals W @ B and W^T @ A from NumPy, W = exp(A B^T), with
  row and column counts that leave padded blocks (13 rows in blocks of 4, 10 columns in 3)."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(13, 5)) / 3, rng.normal(size=(10, 5)) / 3
  rows = sweep.side(jnp.asarray(a, jnp.float32), jnp.zeros(13, jnp.int32), jnp.arange(13))
  cols = sweep.side(jnp.asarray(b, jnp.float32), jnp.zeros(10, jnp.int32), jnp.arange(10))

  def block(r, c):
    w = jnp.where(r.valid[:, None] & c.valid[None, :], jnp.exp(r.x @ c.x.T), 0.0)
    return w @ c.x, (w.T @ r.x if col_axis == 0 else r.x.T @ w)

  row_acc, col_acc = distributed.local_pair_sums(block, rows, cols, 4, 3, col_axis)
  w = np.exp(a @ b.T)
  np.testing.assert_allclose(row_acc, w @ b, rtol=1e-5)
  np.testing.assert_allclose(col_acc if col_axis == 0 else col_acc.T, w.T @ a, rtol=1e-5)


@pytest.mark.parametrize("n,block", [(13, 4), (12, 4), (5, 8)])
def test_symmetric_forward_sweep_equals_numpy_row_sums(n, block):
  """`sweep.symmetric_forward_sweep` (each unordered pair of blocks once, column sums added to
  the column's rows) gives every row's sums over all columns: NumPy's row sums of exp(X X^T)
  masked to other labels, and a count of same-label pairs, with a padded last block (13 rows in
  blocks of 4), none (12) and one block (5 in 8); the initial stats are added."""
  rng = np.random.default_rng(n)
  x, y = rng.normal(size=(n, 3)) / 2, rng.integers(0, 3, n)
  side = sweep.side(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.arange(n))

  def terms(r, c):
    _, neg, _ = sweep.block_masks(r, c)
    pos = r.label[:, None] == c.label[None, :]
    return (jnp.where(neg, jnp.exp(r.x @ c.x.T), 0.0),
            (pos & c.valid[None, :]).astype(jnp.float32))

  init = (jnp.ones(n), jnp.zeros(n))
  got = sweep.symmetric_forward_sweep(terms, init, side, block)
  other = y[:, None] != y[None, :]
  np.testing.assert_allclose(got[0], 1 + np.sum(np.exp(x @ x.T) * other, axis=1), rtol=1e-5)
  np.testing.assert_array_equal(got[1], np.sum(~other, axis=1))


def test_symmetric_logit_grads_equal_autodiff_of_a_function_of_the_logits():
  """`sweep.symmetric_logit_grads` turns both_j = sum_i (dl_ji + dl_ij) z_i into d z and
  d inv_t: checked against jax.grad of f(l) = sum_ij c_ij l_ij^2 with l = inv_t Z Z^T (an
  asymmetric c, so dl_ij != dl_ji), in float64 NumPy for dl."""
  rng = np.random.default_rng(0)
  z, c, inv_t = rng.normal(size=(7, 3)), rng.normal(size=(7, 7)), 2.5
  f = lambda z, t: jnp.sum(jnp.asarray(c) * (t * z @ z.T) ** 2)
  want_z, want_t = jax.grad(f, (0, 1))(jnp.asarray(z, jnp.float32), jnp.float32(inv_t))
  dl = 2 * c * (inv_t * z @ z.T)
  got_z, got_t = sweep.symmetric_logit_grads(jnp.asarray(z, jnp.float32), inv_t,
                                             jnp.asarray((dl + dl.T) @ z, jnp.float32))
  np.testing.assert_allclose(got_z, want_z, rtol=1e-4)
  np.testing.assert_allclose(got_t, want_t, rtol=1e-4)


@pytest.mark.parametrize("n,block", [(13, 4), (12, 4), (5, 8)])
def test_symmetric_products_equal_numpy_w_at_x(n, block):
  """`sweep.symmetric_products` (each unordered pair of blocks once, the column side through
  a [D, N] accumulator) gives W @ X for a symmetric W given by blocks: NumPy's product of
  exp(-|x_i - x_j|^2) masked to other labels, with a padded last block, none, and one block."""
  rng = np.random.default_rng(n)
  x, y = rng.normal(size=(n, 3)), rng.integers(0, 3, n)
  side = sweep.side(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.arange(n))

  def weights(r, c):
    _, neg, _ = sweep.block_masks(r, c)
    d2 = jnp.sum((r.x[:, None, :] - c.x[None, :, :]) ** 2, axis=-1)
    return jnp.where(neg, jnp.exp(-d2), 0.0)

  w = np.exp(-np.sum((x[:, None] - x[None]) ** 2, axis=-1)) * (y[:, None] != y[None, :])
  np.testing.assert_allclose(sweep.symmetric_products(weights, side, block), w @ x, rtol=1e-5,
                             atol=1e-6)
