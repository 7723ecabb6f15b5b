"""The numbers behind the end-of-run plots a metric-learning researcher reads.

  class_balanced_pairs(labels, n, seed)   half same-class pairs, half different-class pairs,
                                          each class equally likely (distances.png, roc.png)
  tar_at_far(pos_scores, neg_scores)      verification: TAR at fixed FARs (sklearn roc_curve)
  per_class_retrieval(emb, labels)        leave-one-out precision@1 / recall@k / mrr@k per class,
                                          worst class first
  markdown_table(rows, columns)           a GitHub / TensorBoard markdown table

Scores are similarities: higher = more alike (negate a distance).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics

from sim_jax.eval import search

FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def class_balanced_pairs(labels, num_pairs: int, seed: int = 0):
  """(i [P], j [P], same [P] bool): ceil(P/2) same-class pairs, then the different-class ones.

  Class-balanced: a same pair draws its class uniformly among the classes with >= 2 examples,
  then two distinct members uniformly; a different pair draws two distinct classes uniformly,
  then one member of each. So a class of 1,000 examples and one of 5 appear equally often (a
  uniform draw of random pairs gives ~1/C same pairs and is dominated by the large classes).
  """
  y = np.asarray(labels).reshape(-1)
  classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
  if num_pairs < 2:
    raise ValueError(f"num_pairs must be >= 2 (one same, one different), got {num_pairs}.")
  eligible = np.flatnonzero(counts >= 2)
  if eligible.size == 0 or classes.size < 2:
    raise ValueError(f"labels need a class with >= 2 examples and >= 2 classes; got "
                     f"{classes.size} classes, largest {counts.max(initial=0)}.")
  rng = np.random.default_rng(seed)
  members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
  n_pos = (num_pairs + 1) // 2
  n_neg = num_pairs - n_pos
  i, j = np.empty(num_pairs, np.int64), np.empty(num_pairs, np.int64)
  for p, c in enumerate(rng.choice(eligible, n_pos)):
    i[p], j[p] = rng.choice(members[c], 2, replace=False)
  for p in range(n_pos, num_pairs):
    a, b = rng.choice(classes.size, 2, replace=False)
    i[p], j[p] = rng.choice(members[a]), rng.choice(members[b])
  return i, j, np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]


def tar_at_far(pos_scores, neg_scores, fars=FARS) -> dict[float, tuple[float, float]]:
  """{far: (TAR, threshold)} for every far >= 1 / #negatives (smaller ones are not measurable).

  TAR@FAR = the largest true-accept rate (positives with score >= t) over thresholds t whose
  false-accept rate (negatives with score >= t) is <= far; read off `sklearn.metrics.roc_curve`.
  """
  pos = np.asarray(pos_scores, np.float64).ravel()
  neg = np.asarray(neg_scores, np.float64).ravel()
  if pos.size == 0 or neg.size == 0:
    raise ValueError(f"need positive and negative pair scores, got {pos.size} and {neg.size}.")
  fpr, tpr, thr = sk_metrics.roc_curve(np.r_[np.ones(pos.size), np.zeros(neg.size)],
                                       np.r_[pos, neg])
  out = {}
  for far in fars:
    if far * neg.size < 1:
      continue
    ok = np.flatnonzero(fpr <= far + 1e-12)  # fpr is non-decreasing and starts at 0
    best = ok[np.argmax(tpr[ok])]
    out[float(far)] = (float(tpr[best]), float(thr[best]))
  return out


def per_class_retrieval(embeddings, labels, *, k: int = 5, metric: str = "cosine") -> list[dict]:
  """Leave-one-out retrieval within a split, averaged per class, worst class first.

  Each query ranks every other row (`search.topk`, exclude_self). Per query: precision@1 =
  [top-1 shares its label], recall@k = [a same-label row in the top k], mrr@k = 1 / rank of the
  first same-label row (0 beyond k). A class with one example has no query to score and is left
  out. Rows: {"label", "count", "precision@1", f"recall@{k}", f"mrr@{k}"}, sorted by
  (precision@1, mrr@k, label) ascending.
  """
  x = np.asarray(embeddings, np.float32)
  y = np.asarray(labels).reshape(-1)
  if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
    raise ValueError(f"per_class_retrieval needs embeddings [N >= 2, D] and labels [N]; got "
                     f"{x.shape} and {y.shape}.")
  k = int(min(k, x.shape[0] - 1))
  _, idx = search.topk(x, x, k, metric=metric, exclude_self=True)
  rel = y[idx] == y[:, None]  # [N, k]
  first = np.where(rel.any(1), np.argmax(rel, 1) + 1, 0)
  rr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
  classes, counts = np.unique(y, return_counts=True)
  rows = []
  for c, n in zip(classes, counts):
    if n < 2:
      continue
    m = y == c
    rows.append({"label": int(c), "count": int(n), "precision@1": float(rel[m, 0].mean()),
                 f"recall@{k}": float(rel[m].any(1).mean()), f"mrr@{k}": float(rr[m].mean())})
  rows.sort(key=lambda r: (r["precision@1"], r[f"mrr@{k}"], r["label"]))
  return rows


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  """Rows as a markdown table (floats with 4 decimals)."""
  def cell(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
  return "\n".join(lines)
