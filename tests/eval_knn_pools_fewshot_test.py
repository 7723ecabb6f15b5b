"""k-NN, pool ranking and few-shot episodes vs hand-made fixtures and sklearn / NumPy loops."""

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from sim_jax.eval import fewshot, knn, pools


def test_vote_majority_and_tie_to_nearest():
  nl = np.array([[1, 2, 2], [3, 4, 5]])  # majority 2; all distinct: the nearest, 3
  np.testing.assert_array_equal(knn.vote(nl), [2, 3])
  np.testing.assert_array_equal(knn.vote(np.array([[8, 7, 7, 8]])), [8])  # 2-2 tie: nearest


def test_f1_macro_matches_sklearn():
  rng = np.random.default_rng(0)
  y, p = rng.integers(0, 6, 200), rng.integers(0, 7, 200)
  assert knn.f1_macro(y, p) == pytest.approx(f1_score(y, p, average="macro"))


def test_knn_hand_computed():
  train = np.array([[0.], [1.], [2.], [10.], [11.]], np.float32)
  ty = np.array([0, 0, 1, 1, 1])
  q = np.array([[0.4], [9.0], [1.6]], np.float32)
  qy = np.array([0, 1, 0])
  # k=3: q0 neighbours 0,1,2 -> labels 0,0,1 -> 0; q1 -> 10, 11, 2 -> 1; q2 -> 2,1,0 -> 0.
  m = knn.knn_metrics(train, ty, q, qy, k=3)
  assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0
  # k=1: q2's nearest is row 2 (label 1) -> wrong; F1 class 0: tp1 fn1 -> 2/3, class 1: 2/3.
  m = knn.knn_metrics(train, ty, q, qy, k=1)
  assert m["accuracy"] == pytest.approx(2 / 3) and m["f1_macro"] == pytest.approx(2 / 3)


def test_knn_random_matches_sklearn():
  rng = np.random.default_rng(1)
  train, ty = rng.standard_normal((150, 5)), rng.integers(0, 4, 150)
  q, qy = rng.standard_normal((60, 5)), rng.integers(0, 4, 60)
  # k odd and 2 classes would avoid ties entirely; here compare where sklearn's vote is unique.
  ref = KNeighborsClassifier(n_neighbors=1).fit(train, ty).predict(q)
  np.testing.assert_array_equal(knn.knn_predict(train, ty, q, k=1, block_size=32), ref)
  m = knn.knn_metrics(train, ty, q, qy, k=1)
  assert m["f1_macro"] == pytest.approx(f1_score(qy, ref, average="macro"))


def test_knn_leave_one_out_excludes_self():
  x = np.array([[0.], [0.1], [5.], [5.1]], np.float32)
  m = knn.knn_metrics(x, np.array([0, 1, 0, 1]), None, None, k=1)
  assert m["accuracy"] == 0.0  # with self it would be 1.0


def test_pair_pools_hand_computed_and_ties_count_against():
  left = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  right = np.array([[1.0, 0.1], [1.0, 0.0], [-1.0, -1.0]])
  sim = np.array([[0.2, 0.9], [0.5, 0.5], [0.7, 0.1]])  # column 0 = true match
  np.testing.assert_allclose(pools.pool_scores(sim, 1)["top1_accuracy"], 1 / 3)
  assert pools.pool_scores(sim, 1)["mrr"] == pytest.approx((0.5 + 0.5 + 1) / 3)
  m = pools.pair_pool_accuracy(left, right, num_foils=2, top=1, metric="cosine")
  # every pool holds all 3 rights: left0 -> right1 best (rank 2); left1 -> right0 (0.0995) vs
  # right1 (0) vs right2 (-0.707): true right1 ranks 2; left2 -> right0 best, right2 worst: rank 3.
  assert m["top1_accuracy"] == 0.0
  assert m["mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)


def test_pair_pools_random_match_loop_and_are_deterministic():
  rng = np.random.default_rng(2)
  left, right = rng.standard_normal((40, 4)), rng.standard_normal((40, 4))
  right[:20] = left[:20] + 0.1 * rng.standard_normal((20, 4))
  m = pools.pair_pool_accuracy(left, right, num_foils=19, top=2, seed=7, metric="euclidean")
  foils = pools.sample_pair_pools(40, 19, seed=7)
  hits = 0
  for i in range(40):
    assert i not in foils[i] and len(set(foils[i])) == 19
    d_true = np.linalg.norm(left[i] - right[i])
    better = sum(np.linalg.norm(left[i] - right[f]) <= d_true for f in foils[i])
    hits += better + 1 <= 2
  assert m["top2_accuracy"] == hits / 40
  assert pools.pair_pool_accuracy(left, right, num_foils=19, top=2, seed=7,
                                  metric="euclidean") == m


def test_label_pools_structure_and_exclusion():
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3])
  rows, cand, excluded = pools.sample_label_pools(labels, 3, seed=1)
  assert excluded == 1 and 5 not in rows
  for r, c in zip(rows, cand):
    assert labels[c[0]] == labels[r] and c[0] != r
    assert np.all(labels[c[1:]] != labels[r]) and len(set(c[1:])) == 3
  emb = np.eye(8)[labels]  # one-hot of the label: the true match is always strictly best
  m = pools.label_pool_accuracy(emb, labels, num_foils=3, top=1, metric="dot")
  assert m["top1_accuracy"] == 1.0 and m["num_excluded_queries"] == 1
  const = pools.label_pool_accuracy(np.ones((8, 2)), labels, num_foils=3, top=2)
  assert const["top2_accuracy"] == 0.0  # all tied: pessimistic rank 4


def test_fewshot_hand_computed_and_deterministic():
  # Two well separated classes and one in between; 3-way 1-shot with 1 query each.
  emb = np.array([[0.], [0.2], [10.], [10.2], [20.], [20.2]], np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  m = fewshot.fewshot_accuracy(emb, labels, n_way=3, k_shot=1, n_query=1, num_episodes=10)
  assert m["accuracy"] == 1.0 and m["ci95"] == 0.0
  bad = fewshot.fewshot_accuracy(np.zeros((6, 1)), labels, n_way=3, k_shot=1, n_query=1,
                                 num_episodes=10)
  assert bad["accuracy"] == pytest.approx(1 / 3)  # all tied -> first class chosen
  eps = list(fewshot.sample_episodes(labels, n_way=2, k_shot=1, n_query=1, num_episodes=3,
                                     seed=4))
  eps2 = list(fewshot.sample_episodes(labels, n_way=2, k_shot=1, n_query=1, num_episodes=3,
                                      seed=4))
  for (c, s, q), (c2, s2, _) in zip(eps, eps2):
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(s, s2)
    assert np.all(labels[s[:, 0]] == c) and np.all(s != q)


def test_fewshot_random_matches_loop():
  rng = np.random.default_rng(3)
  emb, labels = rng.standard_normal((60, 3)), rng.integers(0, 6, 60)
  m = fewshot.fewshot_accuracy(emb, labels, n_way=3, k_shot=2, n_query=2, num_episodes=20,
                               seed=1)
  accs = []
  for _, s, q in fewshot.sample_episodes(labels, n_way=3, k_shot=2, n_query=2, num_episodes=20,
                                         seed=1):
    correct = 0
    for w in range(3):
      for qi in q[w]:
        d = [np.linalg.norm(emb[qi] - emb[s[c]].mean(0)) for c in range(3)]
        correct += int(np.argmin(d) == w)
    accs.append(correct / 6)
  assert m["accuracy"] == pytest.approx(np.mean(accs))


def test_bad_input():
  with pytest.raises(ValueError, match="n_way=4"):
    fewshot.fewshot_accuracy(np.zeros((6, 2)), np.array([0, 0, 1, 1, 2, 2]), n_way=4)
  with pytest.raises(ValueError, match="num_foils=5"):
    pools.pair_pool_accuracy(np.zeros((3, 2)), np.zeros((3, 2)), num_foils=5)
  with pytest.raises(ValueError, match="paired row by row"):
    pools.pair_pool_accuracy(np.zeros((3, 2)), np.zeros((4, 2)), num_foils=1)
  with pytest.raises(ValueError, match="same length"):
    knn.knn_metrics(np.zeros((3, 2)), np.zeros(2, int), np.zeros((1, 2)), np.zeros(1, int), k=1)
  with pytest.raises(ValueError, match="k=4"):
    knn.knn_metrics(np.zeros((3, 2)), np.zeros(3, int), np.zeros((1, 2)), np.zeros(1, int), k=4)
