"""Retrieval metrics with pytorch-metric-learning's `AccuracyCalculator` definitions.

For each query q with label y_q, rank the gallery by distance (ascending) or similarity
(descending); ties are ordered by the lower gallery index first (exact, see `search.py`). When the
gallery is the query set itself, q is removed from its own ranking. Let R_q be the number of gallery
items with label y_q (not counting q itself) and rel_q(i) = 1 if the i-th ranked item has label y_q.

Queries with R_q = 0 (their label has no other example in the gallery) cannot be scored; they are
excluded from every average and counted in `num_excluded_queries`, as AccuracyCalculator does with
its "lone query labels". Every metric below is the plain mean over the remaining queries:

  precision@1  = rel_q(1)
  recall@k     = 1 if sum_{i<=k} rel_q(i) >= 1 else 0   (the deep-metric-learning "Recall@K" of
                 Song et al. 2016 / Musgrave et al. 2020: at least one correct in the top k)
  mrr@k        = 1 / min{i <= k : rel_q(i) = 1}, or 0 if none (seed 001's MRR@5)
  r_precision  = (1 / R_q) sum_{i<=R_q} rel_q(i)
  map@r        = (1 / R_q) sum_{i<=R_q} rel_q(i) * P_q(i),  P_q(i) = (1/i) sum_{j<=i} rel_q(j)

References: Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020 (R-Precision,
MAP@R); pytorch_metric_learning.utils.accuracy_calculator. AccuracyCalculator searches a fixed
number of neighbours; here the search depth is max(k, max_q R_q), so R-precision and MAP@R are
never truncated.
"""

from __future__ import annotations

import numpy as np

from sim_jax.eval import distances as dist_lib
from sim_jax.eval import search as search_lib


def check_labels(labels, num: int, name: str) -> np.ndarray:
  """Returns labels as a 1-D int64 array of length `num`, or raises ValueError."""
  arr = np.asarray(labels)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
  if arr.shape[0] != num:
    raise ValueError(f"{name} has {arr.shape[0]} entries but its embeddings have {num} rows; "
                     "embeddings and labels must have the same length.")
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must be integer class ids, got dtype {arr.dtype}.")
  return arr.astype(np.int64)


def num_relevant(query_labels, gallery_labels, same_set: bool) -> np.ndarray:
  """R_q [Q]: gallery items sharing the query's label, minus the query itself when same_set."""
  uniq, counts = np.unique(gallery_labels, return_counts=True)
  pos = np.searchsorted(uniq, query_labels)
  pos = np.clip(pos, 0, len(uniq) - 1)
  r = np.where(uniq[pos] == query_labels, counts[pos], 0)
  return r - int(same_set)


def metrics_from_neighbors(neighbor_labels, query_labels, relevant, ks=(1, 5)) -> dict[str, float]:
  """Metrics from ranked neighbour labels (the pure part, usable with any search).

  Args:
    neighbor_labels: [Q, K] labels of each query's ranked neighbours (self already removed), with
      K >= max(ks) and K >= R_q for every scored query (else R-precision would be truncated).
    query_labels: [Q] labels.
    relevant: [Q] R_q (0 = excluded query).
    ks: the k of recall@k and mrr@k.
  Returns: flat dict (see the module docstring) plus num_queries and num_excluded_queries.
  """
  nl = np.asarray(neighbor_labels)
  ql = np.asarray(query_labels)
  relevant = np.asarray(relevant)
  keep = relevant > 0
  out = {"num_queries": float(np.sum(keep)), "num_excluded_queries": float(np.sum(~keep))}
  max_k = max(ks) if ks else 1
  if nl.shape[1] < max_k or (np.any(keep) and nl.shape[1] < relevant[keep].max()):
    raise ValueError(f"need at least max(k)={max_k} and max R={relevant.max()} neighbours per "
                     f"query, got {nl.shape[1]}.")
  names = ["precision@1", "r_precision", "map@r"] + [f"{m}@{k}" for k in ks
                                                     for m in ("recall", "mrr")]
  if not np.any(keep):  # nothing scorable: report NaN rather than a misleading 0
    out.update({n: float("nan") for n in names})
    return out
  rel = (nl[keep] == ql[keep, None]).astype(np.float64)
  r = relevant[keep]
  rank = np.arange(1, rel.shape[1] + 1)
  within_r = rank[None, :] <= r[:, None]
  out["precision@1"] = float(np.mean(rel[:, 0]))
  out["r_precision"] = float(np.mean(np.sum(rel * within_r, 1) / r))
  prec_at_i = np.cumsum(rel, 1) / rank[None, :]
  out["map@r"] = float(np.mean(np.sum(prec_at_i * rel * within_r, 1) / r))
  first_hit = np.where(rel.any(1), np.argmax(rel, 1) + 1, np.iinfo(np.int64).max)
  for k in ks:
    hit = first_hit <= k
    out[f"recall@{k}"] = float(np.mean(hit))
    out[f"mrr@{k}"] = float(np.mean(np.where(hit, 1.0 / np.minimum(first_hit, k + 1), 0.0)))
  return out


def retrieval_metrics(query_emb, query_labels, gallery_emb=None, gallery_labels=None, *,
                      ks=(1, 5), metric: str = "euclidean", block_size: int = 8192,
                      query_block_size: int = 2048) -> dict[str, float]:
  """MRR@k, Recall@k, Precision@1, R-Precision and MAP@R of queries against a gallery.

  Args:
    query_emb: [Q, D] embeddings (logits for the kl / reverse_kl / cross_entropy metrics).
    query_labels: [Q] integer labels.
    gallery_emb, gallery_labels: [G, D], [G]; None (both) means the gallery is the query set,
      each query excluded from its own ranking.
    ks: the k values of recall@k and mrr@k, each 1 <= k <= gallery size (minus self).
    metric: one of `distances.DISTANCES` ("euclidean", "cosine", "kl", "reverse_kl",
      "cross_entropy") or "dot".
    block_size, query_block_size: passed to `search.topk` (memory bound).
  Returns:
    {"precision@1", "r_precision", "map@r", "recall@k", "mrr@k" for k in ks, "num_queries",
     "num_excluded_queries"}; metrics are NaN if every query is excluded.
  """
  if metric != "dot" and metric not in dist_lib.DISTANCES:
    raise ValueError(f"metric must be 'dot' or a distance in {dist_lib.DISTANCES}, got "
                     f"{metric!r}.")
  same_set = gallery_emb is None
  if same_set != (gallery_labels is None):
    raise ValueError("pass gallery_emb and gallery_labels together (or neither, for the query "
                     "set as its own gallery).")
  q = search_lib.check_embeddings(query_emb, "query_emb")
  ql = check_labels(query_labels, q.shape[0], "query_labels")
  if same_set:
    g, gl = q, ql
  else:
    g = search_lib.check_embeddings(gallery_emb, "gallery_emb")
    gl = check_labels(gallery_labels, g.shape[0], "gallery_labels")
  ks = tuple(int(k) for k in ks)
  available = g.shape[0] - int(same_set)
  for k in ks:
    if k < 1 or k > available:
      raise ValueError(f"k={k} in ks must be in [1, {available}]: the gallery has {g.shape[0]} "
                       f"items{' (minus the query itself)' if same_set else ''}.")
  relevant = num_relevant(ql, gl, same_set)
  depth = int(max(max(ks, default=1), relevant.max(initial=0)))
  depth = min(depth, available)
  if metric == "dot":
    qs, gs, search_metric = q, g, "dot"
  else:
    qs, gs, search_metric = dist_lib.search_space(q, g, metric)
  _, idx = search_lib.topk(qs, gs, depth, search_metric, block_size=block_size,
                           query_block_size=query_block_size, exclude_self=same_set)
  return metrics_from_neighbors(gl[idx], ql, relevant, ks)
