"""End-of-run analysis: balanced pair sampling, TAR@FAR, per-class retrieval, class names.

Each number is checked against a brute-force NumPy loop written here, not against the code."""

import numpy as np
import pytest

from sim_jax.data import names
from sim_jax.eval import analysis


def test_class_balanced_pairs_are_balanced_on_imbalanced_labels():
  # One class of 1000, nine of 5, one singleton: uniform random pairs would be ~all class 0.
  y = np.r_[np.zeros(1000, int), np.repeat(np.arange(1, 10), 5), [10]]
  y = np.random.default_rng(1).permutation(y)
  i, j, same = analysis.class_balanced_pairs(y, 20000, seed=3)
  assert same.sum() == 10000 and (~same).sum() == 10000
  assert np.all(y[i[same]] == y[j[same]]) and np.all(i[same] != j[same])
  assert np.all(y[i[~same]] != y[j[~same]])
  # Same pairs: the ten classes with >= 2 examples, each ~1/10 (binomial sd ~30), never 10.
  counts = np.bincount(y[i[same]], minlength=11)
  assert counts[10] == 0
  np.testing.assert_allclose(counts[:10], 1000, atol=150)
  # Different pairs: each of the 11 classes on ~2/11 of pairs (both sides counted).
  sides = np.bincount(np.r_[y[i[~same]], y[j[~same]]], minlength=11)
  np.testing.assert_allclose(sides, 2 * 10000 / 11, rtol=0.1)
  i2, j2, _ = analysis.class_balanced_pairs(y, 20000, seed=3)
  np.testing.assert_array_equal(i, i2)
  np.testing.assert_array_equal(j, j2)
  with pytest.raises(ValueError, match="2 classes"):
    analysis.class_balanced_pairs(np.zeros(5, int), 10)


def _tar_at_far_loop(pos, neg, far):
  best = (0.0, np.inf)
  for t in np.r_[np.inf, np.unique(np.r_[pos, neg])]:
    if np.mean(neg >= t) <= far and np.mean(pos >= t) > best[0]:
      best = (np.mean(pos >= t), t)
  return best


def test_tar_at_far_matches_a_threshold_loop():
  rng = np.random.default_rng(0)
  pos = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
  neg = np.round(rng.normal(-1.0, 1.0, 2000), 1)
  got = analysis.tar_at_far(pos, neg, fars=(0.3, 0.1, 0.01, 1e-3, 1e-4))
  assert sorted(got) == [1e-3, 0.01, 0.1, 0.3]  # 1e-4 * 2000 < 1 negative: not measurable
  for far, (tar, thr) in got.items():
    ref_tar, ref_thr = _tar_at_far_loop(pos, neg, far)
    assert tar == pytest.approx(ref_tar)
    assert np.mean(neg >= thr) <= far and np.mean(pos >= thr) == pytest.approx(tar)


def test_per_class_retrieval_matches_brute_force():
  rng = np.random.default_rng(0)
  y = np.r_[np.repeat(np.arange(4), [6, 3, 8, 5]), [9]]  # class 9: one example, no query
  x = rng.standard_normal((y.size, 8)) + 1.2 * np.eye(8)[y % 8]
  rows = analysis.per_class_retrieval(x, y, k=3, metric="cosine")
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = xn @ xn.T
  np.fill_diagonal(sim, -np.inf)
  ref = {}
  for c in range(4):
    p1, r3, rr = [], [], []
    for q in np.flatnonzero(y == c):
      ranked = y[np.argsort(-sim[q], kind="stable")[:3]] == c
      p1.append(ranked[0])
      r3.append(ranked.any())
      rr.append(1.0 / (np.argmax(ranked) + 1) if ranked.any() else 0.0)
    ref[c] = (np.mean(p1), np.mean(r3), np.mean(rr))
  assert [r["label"] for r in rows] == sorted(ref, key=lambda c: (ref[c][0], ref[c][2], c))
  for r in rows:
    assert (r["precision@1"], r["recall@3"], r["mrr@3"]) == pytest.approx(ref[r["label"]])
    assert r["count"] == np.sum(y == r["label"])
  table = analysis.markdown_table(rows, ["label", "precision@1"]).splitlines()
  assert table[0] == "| label | precision@1 |" and len(table) == 2 + len(rows)


def test_class_names_for_display():
  assert names.display_name("U+2192") == "U+2192 RIGHTWARDS ARROW"
  assert names.display_name("Sneaker") == "Sneaker"
  assert names.display_name("U+E000") == "U+E000"  # private use: no Unicode name
  np.testing.assert_array_equal(names.label_names([1, 0, 5], ("a", "b")), ["b", "a", "5"])
  np.testing.assert_array_equal(names.label_names([3], ()), ["3"])
