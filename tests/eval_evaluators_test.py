"""Evaluator objects built from config.eval: names, splits, values vs the metric functions' refs."""

import ml_collections
import numpy as np
import pytest

from sim_jax.eval import evaluators
from sim_jax.eval.config import default_config


def data():
  rng = np.random.default_rng(0)
  centers = rng.standard_normal((6, 8)) * 3
  emb, lab = {}, {}
  for split, n, classes in [("train", 60, 4), ("validation", 40, 4), ("test", 40, 4),
                            ("heldout", 30, 6)]:
    y = rng.integers(0, classes, n)
    if split == "heldout":
      y = np.r_[y[:20] % 2 + 4, y[20:] % 4]  # classes 4, 5 unseen in train; 0-3 seen
    emb[split] = (centers[y] + rng.standard_normal((n, 8))).astype(np.float32)
    lab[split] = y
  return emb, lab


def loo_precision_at_1(e, y) -> float:
  """Leave-one-out nearest-neighbour label agreement (Euclidean), by a NumPy loop."""
  e = e.astype(np.float64)
  hits = []
  for i in range(len(e)):
    d = np.linalg.norm(e - e[i], axis=1)
    d[i] = np.inf
    hits.append(y[np.argmin(d)] == y[i])
  return float(np.mean(hits))


def test_default_config_is_typed_and_complete():
  c = default_config()
  assert isinstance(c, ml_collections.ConfigDict)
  c.lock()
  with pytest.raises(AttributeError):
    c.unknown_field = 1
  with pytest.raises(TypeError):
    c.knn_k = "five"


def test_all_protocols_produce_flat_names_and_reference_values():
  c = default_config()
  c.protocols = "retrieval,knn,pool,verification,fewshot,zeroshot"
  c.verification_num_pairs = 200
  c.fewshot_num_episodes = 10
  c.fewshot_n_way = 3
  c.fewshot_k_shots = (1,)  # 5 shots + 5 queries: more examples than these classes have
  c.pool_num_foils = 9
  evs = evaluators.get_evaluators(c)
  assert [e.name for e in evs] == ["retrieval", "knn", "pool", "verification", "fewshot",
                                   "zeroshot"]
  emb, lab = data()
  out = evaluators.run_evaluators(evs, emb, lab)
  for name in ["retrieval/mrr@5", "retrieval/map@r", "retrieval/num_excluded_queries",
               "knn/accuracy", "knn/f1_macro", "pool/top2_accuracy", "verification/roc_auc",
               "verification/accuracy", "fewshot/accuracy", "zeroshot/mrr@5",
               "zeroshot/num_classes"]:
    assert name in out and isinstance(out[name], float), name
  assert out["zeroshot/num_classes"] == 2.0
  # k-NN against an explicit NumPy loop (Euclidean, majority of 5, ties to the nearest).
  tr, te = emb["train"].astype(np.float64), emb["test"].astype(np.float64)
  correct = 0
  for i in range(len(te)):
    d = np.linalg.norm(tr - te[i], axis=1)
    nn = lab["train"][np.argsort(d, kind="stable")[:5]]
    counts = {c: list(nn).count(c) for c in nn}
    pred = max(nn, key=lambda c: (counts[c], -list(nn).index(c)))
    correct += pred == lab["test"][i]
  assert out["knn/accuracy"] == pytest.approx(correct / len(te))
  # Zero-shot uses only the unseen classes 4 and 5: P@1 from a loop over those rows.
  keep = lab["heldout"] >= 4
  assert out["zeroshot/precision@1"] == pytest.approx(
      loo_precision_at_1(emb["heldout"][keep], lab["heldout"][keep]))


def test_best_metric_and_is_better():
  c = default_config()
  assert evaluators.best_metric(c) == ("retrieval/mrr@5", "max")
  assert evaluators.is_better(0.5, None, "max") and evaluators.is_better(0.4, 0.5, "min")
  assert not evaluators.is_better(0.4, 0.5, "max")
  c.best_metric = "knn/f1_macro"
  c.protocols = "retrieval"
  with pytest.raises(ValueError, match="best_metric='knn/f1_macro'"):
    evaluators.get_evaluators(c)


def test_bad_config_and_missing_split():
  c = default_config()
  c.protocols = "retrieval,nonsense"
  with pytest.raises(ValueError, match="nonsense"):
    evaluators.get_evaluators(c)
  c = default_config()
  c.query_split = "dev"
  (ev, _) = evaluators.get_evaluators(c)
  with pytest.raises(ValueError, match="no split 'dev'"):
    ev(*data())
  c = default_config()
  c.protocols = "verification"
  c.best_metric = "verification/accuracy"
  c.verification_val_split = "test"
  (ev,) = evaluators.get_evaluators(c)
  with pytest.raises(ValueError, match="different split"):
    ev(*data())


def test_pool_pairs_mode_and_gallery_split():
  c = default_config()
  c.protocols = "pool,retrieval"
  c.pool_mode = "pairs"
  c.pool_num_foils = 2
  c.pool_top = 1
  c.gallery_split = "train"
  c.ks = (1,)
  left = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
  right = left * 2.0  # each right row is its left row scaled: the true match is strictly best
  emb = {"left": left, "right": right, "test": left, "train": right}
  lab = {"test": np.array([0, 1, 2]), "train": np.array([0, 1, 1])}
  out = evaluators.run_evaluators(evaluators.get_evaluators(c), emb, lab)
  assert out["pool/top1_accuracy"] == 1.0 and out["pool/mrr"] == 1.0
  # query 2 (label 2) has no gallery example: excluded; queries 0 and 1 find their twin first.
  assert out["retrieval/num_excluded_queries"] == 1.0
  assert out["retrieval/precision@1"] == 1.0


def test_validation_protocol_ranks_its_own_splits():
  # "validation" is retrieval of validation_query_split against validation_gallery_split,
  # reported under its own prefix next to the test retrieval: P@1 from a NumPy loop.
  c = default_config()
  c.protocols = "retrieval,validation"
  c.query_split, c.gallery_split = "test", "train"
  c.validation_query_split, c.validation_gallery_split = "validation", "train"
  c.best_metric = "validation/mrr@5"
  evs = evaluators.get_evaluators(c)
  assert [e.name for e in evs] == ["retrieval", "validation"]
  assert evs[1].splits == ("validation", "train")
  emb, lab = data()
  out = evaluators.run_evaluators(evs, emb, lab)
  for split, prefix in (("validation", "validation"), ("test", "retrieval")):
    q, g = emb[split].astype(np.float64), emb["train"].astype(np.float64)
    nearest = [lab["train"][np.argmin(np.linalg.norm(g - v, axis=1))] for v in q]
    assert out[f"{prefix}/precision@1"] == pytest.approx(np.mean(np.array(nearest) == lab[split]))


def test_per_class_subset_caps_each_class_without_repeats():
  labels = np.r_[np.zeros(7, int), np.ones(2, int), np.full(5, 3)]
  idx = evaluators.per_class_subset(labels, 3, seed=1)
  assert np.all(np.diff(idx) > 0)  # sorted, no index twice
  counts = {c: int(np.sum(labels[idx] == c)) for c in (0, 1, 3)}
  assert counts == {0: 3, 1: 2, 3: 3}  # class 1 has only 2: kept whole
  assert np.array_equal(idx, evaluators.per_class_subset(labels, 3, seed=1))
  with pytest.raises(ValueError, match="max_per_class must be >= 1, got 0"):
    evaluators.per_class_subset(labels, 0)


def test_zeroshot_max_per_class_scores_the_capped_unseen_classes():
  c = default_config()
  c.protocols = "zeroshot"
  c.best_metric = "zeroshot/mrr@5"
  c.ks = (1,)
  c.zeroshot_knn_k = 1
  c.zeroshot_max_per_class = 4
  (ev,) = evaluators.get_evaluators(c)
  emb, lab = data()
  out = ev(emb, lab)
  assert out["zeroshot/num_queries"] == 8.0 and out["zeroshot/num_classes"] == 2.0
  # The same 4 + 4 rows of the unseen classes 4 and 5, P@1 and 1-NN accuracy by a NumPy loop.
  unseen = np.flatnonzero(lab["heldout"] >= 4)
  rows = unseen[evaluators.per_class_subset(lab["heldout"][unseen], 4)]
  want = loo_precision_at_1(emb["heldout"][rows], lab["heldout"][rows])
  assert out["zeroshot/precision@1"] == pytest.approx(want)
  assert out["zeroshot/knn_accuracy"] == pytest.approx(want)
