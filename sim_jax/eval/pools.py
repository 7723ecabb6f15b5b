"""Pool ranking (seed 003): is the true match in the top `top` of a pool of 1 + num_foils?

Seed 003 (Totally-Looks-Like) pools each "left" image with 20 "right" candidates, the true right
image plus 19 foils drawn from the test subset, and scores top-2 accuracy.

For query i with true candidate t and foils f_1..f_m (m = num_foils), with similarity s
(cosine, dot, or -Euclidean distance):
  rank_i = 1 + #{j : s(i, f_j) >= s(i, t)}     (ties count against the true match: pessimistic,
                                               so a constant embedding scores 0, not 1)
  top_accuracy = mean_i [rank_i <= top] (and top1_accuracy, whatever top is);
  mrr = mean_i 1 / rank_i
Pools are sampled with `numpy.random.default_rng(seed)`, so the same seed gives the same pools.

  * `pair_pool_accuracy(left, right)`: row i of `left` matches row i of `right`; foils are other
    rows of `right`, without replacement.
  * `label_pool_accuracy(emb, labels)`: any labelled split; the true candidate is another example
    of the query's class, foils are examples of other classes (without replacement). Queries whose
    class has no other example are excluded and counted in num_excluded_queries.
  * `cross_pool_accuracy(query, query_labels, gallery, gallery_labels)`: queries of one split
    (icon_themes' `heldout_query`: the query design families), candidates of another (`heldout`:
    the other families), so the pool never holds the query's own family. The true candidate is
    a gallery example of the query's class, the foils distinct gallery examples of other
    classes. Queries whose class the gallery lacks are excluded (num_excluded_queries).
"""

from __future__ import annotations

import numpy as np

from sim_jax.eval import retrieval
from sim_jax.eval import search as search_lib


def _similarity(q, c, metric: str):
  """s(q_i, c_ij) for q [N, D] and candidates c [N, P, D] -> [N, P] (float64)."""
  q = q.astype(np.float64)
  c = c.astype(np.float64)
  if metric == "cosine":
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    return np.einsum("nd,npd->np", q, c)
  if metric == "dot":
    return np.einsum("nd,npd->np", q, c)
  if metric == "euclidean":
    return -np.linalg.norm(q[:, None, :] - c, axis=-1)
  raise ValueError(f"metric must be 'cosine', 'dot' or 'euclidean', got {metric!r}.")


def pool_scores(sim, top: int) -> dict[str, float]:
  """Top-`top` accuracy and MRR from [N, 1 + m] similarities, true candidate in column 0."""
  sim = np.asarray(sim)
  rank = 1 + np.sum(sim[:, 1:] >= sim[:, :1], axis=1)
  # top-1 beside the configured top-k: seed 003 reports top-2, top-1 is the stricter reading.
  return {"top1_accuracy": float(np.mean(rank <= 1)),
          f"top{top}_accuracy": float(np.mean(rank <= top)), "mrr": float(np.mean(1.0 / rank)),
          "num_queries": float(sim.shape[0])}


def _check_pool(num_foils: int, top: int, available: int):
  if num_foils < 1 or num_foils > available:
    raise ValueError(f"num_foils={num_foils} must be in [1, {available}] (foils available per "
                     "query).")
  if top < 1 or top > num_foils + 1:
    raise ValueError(f"top={top} must be in [1, num_foils + 1 = {num_foils + 1}].")


def sample_pair_pools(num: int, num_foils: int, seed: int = 0) -> np.ndarray:
  """[num, num_foils] foil rows for each query: distinct, never the query's own row."""
  rng = np.random.default_rng(seed)
  foils = np.empty((num, num_foils), np.int64)
  for i in range(num):
    f = rng.choice(num - 1, num_foils, replace=False)
    foils[i] = np.where(f >= i, f + 1, f)
  return foils


def pair_pool_accuracy(left, right, *, num_foils: int = 19, top: int = 2, seed: int = 0,
                       metric: str = "cosine") -> dict[str, float]:
  """Seed 003's protocol: left[i]'s true match is right[i] among num_foils other right rows."""
  left = np.asarray(search_lib.check_embeddings(left, "left"))
  right = np.asarray(search_lib.check_embeddings(right, "right"))
  if left.shape != right.shape:
    raise ValueError(f"left and right must be paired row by row, got shapes {left.shape} and "
                     f"{right.shape}.")
  _check_pool(num_foils, top, left.shape[0] - 1)
  foils = sample_pair_pools(left.shape[0], num_foils, seed)
  cand = np.concatenate([np.arange(left.shape[0])[:, None], foils], axis=1)
  return pool_scores(_similarity(left, right[cand], metric), top)


def sample_label_pools(labels, num_foils: int, seed: int = 0):
  """(query rows [N'], candidates [N', 1 + num_foils], num_excluded) for a labelled split.

  Column 0 is a random other example of the query's class, the rest distinct other-class rows.
  """
  y = np.asarray(labels)
  rng = np.random.default_rng(seed)
  order = np.argsort(y, kind="stable")
  sy = y[order]
  start = np.searchsorted(sy, sy, side="left")
  size = np.searchsorted(sy, sy, side="right") - start
  if num_foils > y.size - size.max():
    raise ValueError(f"num_foils={num_foils} exceeds the {y.size - size.max()} other-class "
                     "examples available to the largest class.")
  rows, cands = [], []
  for p in range(y.size):
    if size[p] < 2:
      continue
    t = start[p] + rng.integers(size[p] - 1)
    t = t + 1 if t >= p else t
    f = rng.choice(y.size - size[p], num_foils, replace=False)
    f = np.where(f >= start[p], f + size[p], f)
    rows.append(order[p])
    cands.append(order[np.r_[t, f]])
  num_excluded = int(np.sum(size < 2))
  return np.asarray(rows, np.int64), np.asarray(cands, np.int64).reshape(-1, num_foils + 1), \
      num_excluded


def label_pool_accuracy(emb, labels, *, num_foils: int = 19, top: int = 2, seed: int = 0,
                        metric: str = "cosine") -> dict[str, float]:
  """Pool ranking on a labelled split (see the module docstring)."""
  emb = np.asarray(search_lib.check_embeddings(emb, "emb"))
  y = retrieval.check_labels(labels, emb.shape[0], "labels")
  _check_pool(num_foils, top, emb.shape[0] - 1)
  rows, cand, excluded = sample_label_pools(y, num_foils, seed)
  if rows.size == 0:
    raise ValueError("no class has two examples, so no query has a true match to find.")
  out = pool_scores(_similarity(emb[rows], emb[cand], metric), top)
  out["num_excluded_queries"] = float(excluded)
  return out


def sample_cross_pools(query_labels, gallery_labels, num_foils: int, seed: int = 0):
  """(query rows [N'], gallery candidates [N', 1 + num_foils], num_excluded) across two splits.

  For each query row in order, with one Generator: column 0 a uniformly drawn gallery row of the
  query's class, then num_foils distinct gallery rows of other classes (uniform, no replacement).
  """
  qy, gy = np.asarray(query_labels), np.asarray(gallery_labels)
  rng = np.random.default_rng(seed)
  rows, cands = [], []
  for i, y in enumerate(qy):
    same = np.flatnonzero(gy == y)
    if same.size == 0:
      continue
    others = np.flatnonzero(gy != y)
    if others.size < num_foils:
      raise ValueError(f"num_foils={num_foils} exceeds the {others.size} gallery examples of "
                       f"classes other than query {i}'s class {y}.")
    rows.append(i)
    cands.append(np.r_[rng.choice(same), rng.choice(others, num_foils, replace=False)])
  return (np.asarray(rows, np.int64), np.asarray(cands, np.int64).reshape(-1, num_foils + 1),
          qy.size - len(rows))


def cross_pool_accuracy(query, query_labels, gallery, gallery_labels, *, num_foils: int = 19,
                        top: int = 2, seed: int = 0, metric: str = "cosine") -> dict[str, float]:
  """Pool ranking with queries and candidates from two splits (see the module docstring)."""
  query = np.asarray(search_lib.check_embeddings(query, "query"))
  gallery = np.asarray(search_lib.check_embeddings(gallery, "gallery"))
  if query.shape[1] != gallery.shape[1]:
    raise ValueError(f"query and gallery embeddings differ in dimension: {query.shape} vs "
                     f"{gallery.shape}.")
  qy = retrieval.check_labels(query_labels, query.shape[0], "query_labels")
  gy = retrieval.check_labels(gallery_labels, gallery.shape[0], "gallery_labels")
  _check_pool(num_foils, top, gallery.shape[0] - 1)
  rows, cand, excluded = sample_cross_pools(qy, gy, num_foils, seed)
  if rows.size == 0:
    raise ValueError("no query's class is in the gallery, so no query has a true match to find.")
  out = pool_scores(_similarity(query[rows], gallery[cand], metric), top)
  out["num_excluded_queries"] = float(excluded)
  return out
