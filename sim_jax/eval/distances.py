"""Distances between embeddings and between classifier output distributions (seed 001, Table 1).

Pairwise forms return `[N, M]` for rows `a [N, D]` and `b [M, D]` (NumPy float64 in, float64 out
for reference use; float32 works too). Every distance here is "lower is closer".

  euclidean(a, b)[i, j]     = |a_i - b_j|_2
  cosine(a, b)[i, j]        = 1 - a_i . b_j / (max(|a_i|, eps) max(|b_j|, eps))
  kl(la, lb)[i, j]          = KL(p_i || q_j) = sum_c p_ic (log p_ic - log q_jc)
  cross_entropy(la, lb)[i, j] = H(p_i, q_j) = -sum_c p_ic log q_jc
with p = softmax(la), q = softmax(lb) computed from *logits* through log-softmax, so a zero
probability never produces log(0) and 0 * log 0 is exactly 0 (the limit).

Blockwise search: each distance is an inner product of (possibly augmented) vectors plus a term
that depends on the query only, so `search.topk(..., metric="dot")` on `search_space(...)` ranks
exactly as the distance does without forming the N x M matrix:
  kl / cross_entropy (query first):  rank by  p_i . log q_j        (same ranking for both: they
                                      differ by the query's own entropy, constant per query)
  reverse_kl KL(q_j || p_i):          rank by [log p_i, 1] . [q_j, -sum q_j log q_j]
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("euclidean", "cosine", "kl", "reverse_kl", "cross_entropy")
# The distances between output distributions: they take classifier logits, not embeddings.
DISTRIBUTION_DISTANCES = ("kl", "reverse_kl", "cross_entropy")
_EPS = 1e-12


def _check_pair(a, b, name_a: str, name_b: str):
  a = np.asarray(a)
  b = np.asarray(b)
  for name, x in ((name_a, a), (name_b, b)):
    if x.ndim != 2 or x.shape[0] == 0:
      raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {x.shape}.")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"{name_a} has dimension {a.shape[1]} but {name_b} has {b.shape[1]}.")
  return a, b


def log_softmax(logits) -> np.ndarray:
  """Row-wise log-softmax, stable: x - max - log(sum(exp(x - max)))."""
  x = np.asarray(logits, dtype=np.float64 if np.asarray(logits).dtype == np.float64
                 else np.float32)
  m = np.max(x, axis=-1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def euclidean(a, b) -> np.ndarray:
  """[N, M] Euclidean distances |a_i - b_j| (clamped at 0 before the square root)."""
  a, b = _check_pair(a, b, "a", "b")
  sq = (np.sum(a * a, 1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, 1)[None, :])
  return np.sqrt(np.maximum(sq, 0.0))


def cosine(a, b) -> np.ndarray:
  """[N, M] cosine distances 1 - cos(a_i, b_j); zero rows have similarity 0 (distance 1)."""
  a, b = _check_pair(a, b, "a", "b")
  an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)
  bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _EPS)
  return 1.0 - an @ bn.T


def kl(logits_a, logits_b) -> np.ndarray:
  """[N, M] KL(softmax(a_i) || softmax(b_j)) in nats, from logits."""
  la, lb = _check_pair(logits_a, logits_b, "logits_a", "logits_b")
  la, lb = log_softmax(la), log_softmax(lb)
  pa = np.exp(la)
  return np.sum(pa * la, axis=1)[:, None] - pa @ lb.T


def cross_entropy(logits_a, logits_b) -> np.ndarray:
  """[N, M] H(softmax(a_i), softmax(b_j)) = -sum_c p_ic log q_jc in nats, from logits."""
  la, lb = _check_pair(logits_a, logits_b, "logits_a", "logits_b")
  la, lb = log_softmax(la), log_softmax(lb)
  return -(np.exp(la) @ lb.T)


def pairwise(a, b, distance: str) -> np.ndarray:
  """[N, M] `distance` between rows of a and b; kl / cross_entropy / reverse_kl take logits."""
  if distance == "euclidean":
    return euclidean(a, b)
  if distance == "cosine":
    return cosine(a, b)
  if distance == "kl":
    return kl(a, b)
  if distance == "reverse_kl":
    return kl(b, a).T
  if distance == "cross_entropy":
    return cross_entropy(a, b)
  raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def search_space(queries, gallery, distance: str):
  """Maps (queries, gallery) to vectors and a metric for `search.topk` with the same ranking.

  Returns `(q, g, metric)`: for euclidean / cosine the inputs unchanged; for the distribution
  distances (inputs are logits) float32 vectors whose dot product orders gallery rows exactly as
  the distance does for each query (see the module docstring). The search scores then are not
  the distances; recompute those for the returned neighbours with `pairwise` if needed.
  """
  if distance in ("euclidean", "cosine"):
    return queries, gallery, distance
  q, g = _check_pair(queries, gallery, "queries", "gallery")
  lq, lg = log_softmax(q), log_softmax(g)
  if distance in ("kl", "cross_entropy"):
    return np.exp(lq).astype(np.float32), lg.astype(np.float32), "dot"
  if distance == "reverse_kl":
    pg = np.exp(lg)
    neg_entropy = np.sum(pg * lg, axis=1, keepdims=True)
    q_aug = np.concatenate([lq, np.ones_like(lq[:, :1])], axis=1)
    g_aug = np.concatenate([pg, -neg_entropy], axis=1)
    return q_aug.astype(np.float32), g_aug.astype(np.float32), "dot"
  raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")
