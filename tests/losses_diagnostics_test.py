"""diagnostics() against explicit NumPy loops over pairs and triplets."""

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax import losses

LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3], np.int32)


def ref_diagnostics(x, y, margin, pair_margin):
  x = np.asarray(x, np.float64)
  n, d = x.shape
  z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  dist = lambda i, j: np.sqrt(np.sum((x[i] - x[j]) ** 2))
  pos = [(i, j) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
  neg = [(i, j) for i in range(n) for j in range(n) if y[i] != y[j]]
  valid = active = 0
  for a, p in pos:
    for k in range(n):
      if y[k] != y[a]:
        valid += 1
        active += dist(a, p) - dist(a, k) + margin > 0
  mean = lambda v: float(np.mean(v)) if len(v) else 0.0
  std = np.mean([np.std(z[:, c]) for c in range(d)])
  return {
      "active_triplet_fraction": active / max(valid, 1),
      "active_pair_fraction": mean([dist(i, j) < pair_margin for i, j in neg]),
      "mean_pos_cosine": mean([z[i] @ z[j] for i, j in pos]),
      "mean_neg_cosine": mean([z[i] @ z[j] for i, j in neg]),
      "mean_pos_distance": mean([dist(i, j) for i, j in pos]),
      "mean_neg_distance": mean([dist(i, j) for i, j in neg]),
      "embedding_std": std,
      "embedding_std_normalized": std * np.sqrt(d),
      "mean_norm": mean([np.linalg.norm(r) for r in x]),
  }


def _check(got, expected, rtol=1e-5):
  assert set(got) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-6, err_msg=key)


def test_matches_loop_reference_jit_and_eager():
  x = np.random.default_rng(0).normal(size=(8, 4)) * 0.4
  expected = ref_diagnostics(x, LABELS, 0.2, 1.0)
  assert 0 < expected["active_triplet_fraction"] < 1 and 0 < expected["active_pair_fraction"] < 1
  _check(losses.diagnostics(jnp.asarray(x, jnp.float32), jnp.asarray(LABELS)), expected)
  _check(jax.jit(losses.diagnostics)(jnp.asarray(x, jnp.float32), jnp.asarray(LABELS)), expected)
  with jax.enable_x64(True):
    _check(jax.jit(losses.diagnostics)(jnp.asarray(x), jnp.asarray(LABELS), margin=0.5,
                                       pair_margin=0.7),
           ref_diagnostics(x, LABELS, 0.5, 0.7), rtol=1e-10)


def test_collapse_and_edges():
  collapsed = jnp.ones((8, 4)) * 3.0
  out = losses.diagnostics(collapsed, jnp.asarray(LABELS))
  assert float(out["embedding_std"]) == 0.0
  np.testing.assert_allclose(out["mean_neg_cosine"], 1.0, rtol=1e-6)
  # d_ap = d_an = 0 < margin: every valid triplet is active, every negative pair within margin.
  assert float(out["active_triplet_fraction"]) == 1.0 and float(out["active_pair_fraction"]) == 1.0
  # Single class: no negatives, fractions and negative means are 0 rather than NaN.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)), jnp.bfloat16)
  out = losses.diagnostics(x, jnp.zeros(8, jnp.int32))
  assert all(np.isfinite(v) for v in out.values())
  assert float(out["active_triplet_fraction"]) == 0.0 and float(out["mean_neg_cosine"]) == 0.0
  assert out["mean_pos_cosine"].dtype == jnp.float32
  # No gradient flows through the diagnostics (they are logged, not trained on).
  grad = jax.grad(lambda e: losses.diagnostics(e, jnp.asarray(LABELS))["mean_pos_distance"])(
      jnp.asarray(np.random.default_rng(2).normal(size=(8, 4)), jnp.float32))
  assert float(jnp.abs(grad).sum()) == 0.0
