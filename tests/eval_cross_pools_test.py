"""Cross-split candidate pools (seed 003 across design families) vs a NumPy loop and by hand."""

import numpy as np
import pytest

from sim_jax.eval import evaluators, pools
from sim_jax.eval.config import default_config


def test_cross_pools_structure_and_exclusion():
  qy = np.array([0, 1, 2, 7, 1])  # class 7 is absent from the gallery: excluded
  gy = np.array([0, 0, 1, 2, 2, 2, 3, 4])
  rows, cand, excluded = pools.sample_cross_pools(qy, gy, 4, seed=3)
  assert excluded == 1 and list(rows) == [0, 1, 2, 4]
  for r, c in zip(rows, cand):
    assert gy[c[0]] == qy[r]
    assert np.all(gy[c[1:]] != qy[r]) and len(set(c[1:].tolist())) == 4
  again = pools.sample_cross_pools(qy, gy, 4, seed=3)
  np.testing.assert_array_equal(again[1], cand)


def test_cross_pools_match_a_loop():
  rng = np.random.default_rng(0)
  gy = np.repeat(np.arange(30), 3)
  g = rng.standard_normal((gy.size, 6))
  qy = rng.permutation(30)[:25]
  q = g[qy * 3] + 0.8 * rng.standard_normal((25, 6))  # near one drawing of its class
  m = pools.cross_pool_accuracy(q, qy, g, gy, num_foils=19, top=2, seed=5, metric="cosine")
  _, cand, _ = pools.sample_cross_pools(qy, gy, 19, seed=5)
  top1 = top2 = rr = 0.0
  for i in range(25):
    def cos(a, b):
      return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    s_true = cos(q[i], g[cand[i, 0]])
    rank = 1 + sum(cos(q[i], g[j]) >= s_true for j in cand[i, 1:])
    top1, top2, rr = top1 + (rank <= 1), top2 + (rank <= 2), rr + 1 / rank
  assert m["top2_accuracy"] == pytest.approx(top2 / 25)
  assert m["mrr"] == pytest.approx(rr / 25)
  assert m["top1_accuracy"] == pytest.approx(top1 / 25)
  assert 0 < top1 < top2 < 25  # the fixture is neither trivial nor hopeless


def test_cross_pools_hand_computed():
  g = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  gy = np.array([0, 1, 2])
  q = np.array([[1.0, 0.1], [1.0, 0.0]])  # query 0 (class 0) finds it; query 1 (class 2) last
  m = pools.cross_pool_accuracy(q, np.array([0, 2]), g, gy, num_foils=2, top=1, metric="dot")
  assert m["top1_accuracy"] == 0.5 and m["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_cross_pools_refuse_bad_input():
  with pytest.raises(ValueError, match="num_foils=5"):
    pools.cross_pool_accuracy(np.ones((2, 2)), [0, 1], np.ones((4, 2)), [0, 1, 2, 3],
                              num_foils=5)
  with pytest.raises(ValueError, match="no query's class is in the gallery"):
    pools.cross_pool_accuracy(np.ones((2, 2)), [8, 9], np.ones((4, 2)), [0, 1, 2, 3],
                              num_foils=2, top=1)
  with pytest.raises(ValueError, match="dimension"):
    pools.cross_pool_accuracy(np.ones((2, 3)), [0, 1], np.ones((4, 2)), [0, 1, 2, 3],
                              num_foils=2, top=1)


def test_the_pool_evaluator_runs_cross_mode_on_two_splits():
  c = default_config()
  c.protocols = "pool"
  c.pool_mode = "cross"
  c.pool_left_split, c.pool_right_split = "heldout_query", "heldout"
  c.pool_num_foils, c.metric = 2, "dot"
  c.best_metric = "pool/top2_accuracy"
  (ev,) = evaluators.get_evaluators(c)
  assert ev.splits == ("heldout_query", "heldout")
  g = np.eye(3)
  out = ev({"heldout_query": g[[0, 1]], "heldout": g}, {"heldout_query": np.array([0, 1]),
                                                         "heldout": np.array([0, 1, 2])})
  assert out["pool/top2_accuracy"] == 1.0 and out["pool/num_excluded_queries"] == 0.0
