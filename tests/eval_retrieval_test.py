"""Retrieval metrics vs hand-computed fixtures, NumPy loops, and pytorch-metric-learning."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from sim_jax.eval import distances, retrieval


def brute_force(x, y, gx=None, gy=None, ks=(1, 5), dist="euclidean"):
  """Loops over queries: float64 distances, stable order, metrics from their definitions."""
  same = gx is None
  gx, gy = (x, y) if same else (gx, gy)
  out = {n: [] for n in ["precision@1", "r_precision", "map@r"] +
         [f"{m}@{k}" for k in ks for m in ("recall", "mrr")]}
  excluded = 0
  for qi in range(len(x)):
    d = distances.pairwise(x[qi:qi + 1].astype(np.float64), gx.astype(np.float64), dist)[0]
    order = [j for j in np.argsort(d, kind="stable") if not (same and j == qi)]
    rel = [int(gy[j] == y[qi]) for j in order]
    r = sum(rel)
    if r == 0:
      excluded += 1
      continue
    out["precision@1"].append(rel[0])
    out["r_precision"].append(sum(rel[:r]) / r)
    ap = 0.0
    for i in range(r):
      if rel[i]:
        ap += sum(rel[:i + 1]) / (i + 1)
    out["map@r"].append(ap / r)
    for k in ks:
      first = next((i + 1 for i in range(k) if rel[i]), None)
      out[f"recall@{k}"].append(first is not None)
      out[f"mrr@{k}"].append(1.0 / first if first else 0.0)
  res = {n: float(np.mean(v)) for n, v in out.items()}
  res["num_excluded_queries"] = float(excluded)
  return res


def test_hand_computed_with_ties_and_a_single_example_class():
  # 1-D points; label 2 has one example (excluded). Query 2 (x=6) is at distance 5 from both row 1
  # (label 0) and row 4 (label 1): the lower index (row 1, a miss) ranks first, so its ranking
  # is rows [3, 1, 4, 0, 5] -> rel [1, 0, 1], R = 2: r_precision 1/2, MAP@R (1/2)(1/1) = 1/2.
  x = np.array([[0.], [1.], [6.], [10.], [11.], [20.]], np.float32)
  y = np.array([0, 0, 1, 1, 1, 2])
  m = retrieval.retrieval_metrics(x, y, ks=(1, 5))
  assert m["num_excluded_queries"] == 1 and m["num_queries"] == 5
  assert m["precision@1"] == 1.0
  assert m["r_precision"] == pytest.approx(4.5 / 5)
  assert m["map@r"] == pytest.approx(4.5 / 5)
  assert m["mrr@5"] == 1.0 and m["recall@1"] == 1.0


def test_hand_computed_worst_ranking():
  # Every query's nearest neighbour has the other label; R = 1 for everyone.
  # Rankings: q0 -> [1, 2, 3] rel [0,1,0]; q1 -> [0, 2, 3] rel [0,0,1];
  # q2 -> [3, 1, 0] rel [0,0,1]; q3 -> [2, 1, 0] rel [0,1,0].
  x = np.array([[0.], [1.], [10.], [11.]], np.float32)
  y = np.array([0, 1, 0, 1])
  m = retrieval.retrieval_metrics(x, y, ks=(1, 2, 3))
  assert m["precision@1"] == 0 and m["r_precision"] == 0 and m["map@r"] == 0
  assert m["recall@1"] == 0 and m["recall@2"] == 0.5 and m["recall@3"] == 1.0
  assert m["mrr@2"] == pytest.approx((0.5 + 0 + 0 + 0.5) / 4)
  assert m["mrr@3"] == pytest.approx((0.5 + 1 / 3 + 1 / 3 + 0.5) / 4)


def test_hand_computed_perfect_ranking():
  x = np.array([[0.], [0.1], [0.2], [5.], [5.1]], np.float32)
  y = np.array([3, 3, 3, 7, 7])
  m = retrieval.retrieval_metrics(x, y, ks=(1, 2), metric="euclidean")
  for name in ["precision@1", "r_precision", "map@r", "recall@1", "mrr@2"]:
    assert m[name] == 1.0, name


def test_separate_gallery_and_absent_label():
  q = np.array([[0.], [9.]], np.float32)
  qy = np.array([0, 5])  # label 5 is not in the gallery: excluded
  g = np.array([[1.], [2.], [3.]], np.float32)
  gy = np.array([1, 0, 0])
  m = retrieval.retrieval_metrics(q, qy, g, gy, ks=(1, 3))
  # q0: ranking [0 (l1), 1 (l0), 2 (l0)], R = 2: rel [0,1,1] -> r_prec 1/2, MAP (1/2)(1/2)
  assert m["num_excluded_queries"] == 1
  assert m["precision@1"] == 0 and m["r_precision"] == 0.5 and m["map@r"] == 0.25
  assert m["mrr@3"] == 0.5


@pytest.mark.parametrize("dist", ["euclidean", "cosine"])
def test_random_embeddings_match_brute_force(dist):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((80, 6)).astype(np.float32)
  y = rng.integers(0, 9, 80)
  y[5] = 100  # a lone label
  got = retrieval.retrieval_metrics(x, y, ks=(1, 3, 5), metric=dist, block_size=16)
  ref = brute_force(x, y, ks=(1, 3, 5), dist=dist)
  for name, v in ref.items():
    assert got[name] == pytest.approx(v, abs=1e-12), name


def test_random_query_gallery_match_brute_force():
  rng = np.random.default_rng(4)
  q, g = rng.standard_normal((30, 5)), rng.standard_normal((70, 5))
  qy, gy = rng.integers(0, 6, 30), rng.integers(0, 5, 70)  # label 5: not in the gallery
  got = retrieval.retrieval_metrics(q, qy, g, gy, ks=(2, 10), block_size=32)
  ref = brute_force(q, qy, g, gy, ks=(2, 10))
  for name, v in ref.items():
    assert got[name] == pytest.approx(v, abs=1e-12), name


def test_matches_pytorch_metric_learning_accuracy_calculator():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((120, 8)).astype(np.float32)
  y = rng.integers(0, 10, 120)
  y[0] = 77
  ours = retrieval.retrieval_metrics(x, y, ks=(5,))
  calc = AccuracyCalculator(include=("precision_at_1", "r_precision",
                                     "mean_average_precision_at_r"), k="max_bin_count")
  pml = calc.get_accuracy(torch.tensor(x), torch.tensor(y))
  mrr = AccuracyCalculator(include=("precision_at_1", "mean_reciprocal_rank"), k=5).get_accuracy(
      torch.tensor(x), torch.tensor(y))
  assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
  assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
  assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
  assert ours["mrr@5"] == pytest.approx(mrr["mean_reciprocal_rank"], abs=1e-6)


@pytest.mark.parametrize("dist", ["kl", "reverse_kl", "cross_entropy"])
def test_distribution_distances_rank_like_brute_force(dist):
  rng = np.random.default_rng(6)
  logits = rng.standard_normal((50, 7)) * 2
  y = rng.integers(0, 5, 50)
  got = retrieval.retrieval_metrics(logits, y, ks=(1, 5), metric=dist)
  ref = brute_force(logits, y, ks=(1, 5), dist=dist)
  for name, v in ref.items():
    assert got[name] == pytest.approx(v, abs=1e-12), name


def test_distances_against_loops():
  rng = np.random.default_rng(7)
  a, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
  a[0] = [50.0, -50.0, 0.0]  # softmax underflows to exactly 0 in two classes: 0 log 0 = 0
  for i in range(4):
    for j in range(5):
      p = np.exp(a[i]) / np.exp(a[i]).sum()
      q = np.exp(b[j]) / np.exp(b[j]).sum()
      assert distances.euclidean(a, b)[i, j] == pytest.approx(np.sqrt(((a[i] - b[j]) ** 2).sum()))
      cos = a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j])
      assert distances.cosine(a, b)[i, j] == pytest.approx(1 - cos)
      kl = sum(pc * (np.log(pc) - np.log(qc)) for pc, qc in zip(p, q) if pc > 0)
      assert distances.kl(a, b)[i, j] == pytest.approx(kl, rel=1e-9, abs=1e-12)
      assert distances.pairwise(a, b, "reverse_kl")[i, j] == pytest.approx(
          sum(qc * (np.log(qc) - np.log(pc)) for pc, qc in zip(p, q)), rel=1e-9)
      assert distances.cross_entropy(a, b)[i, j] == pytest.approx(-(p * np.log(q)).sum())
  assert np.all(np.isfinite(distances.kl(a, b)))
  assert distances.kl(a[:1], a[:1])[0, 0] == pytest.approx(0.0, abs=1e-12)


def test_bad_input():
  x = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match="same length"):
    retrieval.retrieval_metrics(x, np.zeros(3, int))
  with pytest.raises(ValueError, match="empty"):
    retrieval.retrieval_metrics(np.zeros((0, 2)), np.zeros(0, int))
  with pytest.raises(ValueError, match=r"k=4 in ks must be in \[1, 3\]"):
    retrieval.retrieval_metrics(x, np.zeros(4, int), ks=(4,))
  with pytest.raises(ValueError, match="together"):
    retrieval.retrieval_metrics(x, np.zeros(4, int), x)
  with pytest.raises(ValueError, match="metric must be"):
    retrieval.retrieval_metrics(x, np.zeros(4, int), metric="manhattan")


def test_all_queries_excluded_gives_nan_and_count():
  m = retrieval.retrieval_metrics(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), ks=(1,))
  assert m["num_excluded_queries"] == 3 and np.isnan(m["map@r"])
