"""Seed 003's pool_triplet loss against a NumPy loop, and its wiring into the objective table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import losses
from sim_jax.losses import objective


def _loop(z, margin, distance):
  """Reference: for every pool b and foil j, max(0, d(q, t) - d(q, f_j) + margin), averaged."""
  z = np.asarray(z, np.float64)
  total, count = 0.0, 0
  for pool in z:
    q, t, foils = pool[0], pool[1], pool[2:]

    def d(a, b):
      if distance == "cosine":
        return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
      return np.sqrt(np.sum((a - b) ** 2))
    for f in foils:
      total += max(0.0, d(q, t) - d(q, f) + margin)
      count += 1
  return total / count


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_pool_triplet_matches_a_loop(distance):
  z = np.random.default_rng(0).normal(size=(5, 2 + 4, 3))
  for margin in (0.0, 0.2, 1.5):
    got = losses.pool_triplet(jnp.asarray(z, jnp.float32), margin=margin, distance=distance)
    np.testing.assert_allclose(got, _loop(z, margin, distance), rtol=1e-5, atol=1e-6)


def test_pool_triplet_hand_computed_and_only_foils_are_negatives():
  # q = e1, t = e1 (d = 0), foils e2 (cos d = 1) and e1 (d = 0): hinges 0 and margin.
  z = jnp.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
  assert float(losses.pool_triplet(z, margin=0.5)) == pytest.approx((0.0 + 0.5) / 2)
  # A second pool whose query equals the first pool's foil changes nothing in the first pool.
  z2 = jnp.concatenate([z, jnp.array([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])])
  assert float(losses.pool_triplet(z2, margin=0.5)) == pytest.approx((0.25 + 0.0) / 2)


def test_pool_triplet_jits_and_its_gradient_is_finite_at_coincident_points():
  z = jnp.ones((2, 4, 3))  # every distance 0: euclidean's sqrt must not give NaN gradients
  for distance in ("cosine", "euclidean"):
    fn = jax.jit(jax.grad(lambda v, d=distance: losses.pool_triplet(v, 0.2, d)))
    assert np.all(np.isfinite(fn(z)))


def test_bad_shapes_and_distances_are_refused():
  with pytest.raises(ValueError, match=r"\[B, 2 \+ num_foils, D\]"):
    losses.pool_triplet(jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="'dot'"):
    losses.pool_triplet(jnp.ones((2, 3, 3)), distance="dot")


def _pool_config(**kw):
  cfg = test_config.get_config()
  cfg.data.sampler = "pools"
  cfg.data.num_foils = 3
  cfg.loss.name = "pool_triplet"
  cfg.loss.distance = "cosine"
  for k, v in kw.items():
    section, key = k.split("__")
    cfg[section][key] = v
  return cfg


def test_the_objective_reads_the_flat_batch_as_pools_of_2_plus_num_foils():
  cfg = _pool_config()
  objective.validate(cfg)
  z = np.random.default_rng(1).normal(size=(3 * 5, 4)).astype(np.float32)  # 3 pools of 1 + 1 + 3
  got = objective.loss(cfg, {}, jnp.asarray(z), jnp.zeros(15, jnp.int32), batch={})
  np.testing.assert_allclose(got, _loop(z.reshape(3, 5, 4), cfg.loss.margin, "cosine"), rtol=1e-5)


def test_pools_sampler_and_pool_triplet_go_together():
  with pytest.raises(ValueError, match="pools sampler and the pool_triplet loss"):
    objective.validate(_pool_config(data__sampler="pk"))
  with pytest.raises(ValueError, match="pools sampler and the pool_triplet loss"):
    objective.validate(_pool_config(loss__name="triplet", loss__distance="cosine"))
  with pytest.raises(ValueError, match="'squared_euclidean'"):
    objective.validate(_pool_config(loss__distance="squared_euclidean"))
