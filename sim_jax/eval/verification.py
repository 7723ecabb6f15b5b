"""Pair verification (seeds 000, 002): is a pair "same"? Threshold fit on validation, used on test.

Scores are similarities, higher = more likely the same (use `pair_scores`: cosine similarity or
negative Euclidean distance). A pair is predicted "same" iff score >= threshold.

The API makes tuning on test impossible by construction: `fit_threshold(val_scores, val_same)` is
the only way to get a `Threshold`, `evaluate(threshold, test_scores, test_same)` accepts nothing
else (a bare float raises), never moves the threshold, and refuses test data identical to the
data the threshold was fit on.

Threshold choice: candidates are -inf, +inf and the midpoints between consecutive distinct
validation scores (every distinct partition of the sorted scores once); the one with the highest
validation accuracy wins, ties to the smallest threshold.

Metrics on test (TP, FP, TN, FN counted with "same" = positive):
  accuracy = (TP + TN) / N;  precision = TP / (TP + FP) (0 if no positive predictions);
  recall = TP / (TP + FN) (0 if no positives); F1 = 2 P R / (P + R) (0 if P + R = 0);
  roc_auc = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg), computed exactly as the Mann-Whitney U
  statistic with average ranks for ties (equals sklearn.metrics.roc_auc_score); NaN when the
  test split has only one class.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Threshold:
  """A decision threshold fit on validation data; build it with `fit_threshold` only."""
  value: float
  val_accuracy: float
  num_val_pairs: int
  val_fingerprint: str  # hash of the validation data, so evaluate() can refuse the same data


def _check(scores, same, name: str):
  s = np.asarray(scores, dtype=np.float64)
  y = np.asarray(same)
  if s.ndim != 1 or s.size == 0:
    raise ValueError(f"{name}_scores must be a non-empty 1-D array, got shape {s.shape}.")
  if y.shape != s.shape:
    raise ValueError(f"{name}_same has shape {y.shape} but {name}_scores has {s.shape}; "
                     "one label per pair.")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name}_scores has non-finite values, e.g. {s[~np.isfinite(s)][:3]}.")
  if not np.all(np.isin(y, (0, 1))):
    raise ValueError(f"{name}_same must be 0/1 (or bool), got values {np.unique(y)[:5]}.")
  return s, y.astype(bool)


def _fingerprint(s, y) -> str:
  return hashlib.sha1(s.tobytes() + y.tobytes()).hexdigest()


def pair_scores(emb_a, emb_b, metric: str = "cosine") -> np.ndarray:
  """[N] similarity of row i of emb_a with row i of emb_b: cosine, or -|a - b|_2 (euclidean)."""
  a = np.asarray(emb_a, np.float64)
  b = np.asarray(emb_b, np.float64)
  if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
    raise ValueError(f"emb_a and emb_b must be non-empty [N, D] of one shape, got {a.shape} and "
                     f"{b.shape}.")
  if metric == "cosine":
    na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return np.sum(a * b, 1) / (na * nb)
  if metric == "euclidean":
    return -np.linalg.norm(a - b, axis=1)
  raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")


def fit_threshold(val_scores, val_same) -> Threshold:
  """Chooses the threshold that maximises validation accuracy (see the module docstring)."""
  s, y = _check(val_scores, val_same, "val")
  uniq = np.unique(s)
  cands = np.concatenate([[-np.inf], (uniq[:-1] + uniq[1:]) / 2.0, [np.inf]])
  # accuracy(t) = (#pos >= t + #neg < t) / N, from sorted positive / negative scores.
  pos = np.sort(s[y])
  neg = np.sort(s[~y])
  pos_ge = pos.size - np.searchsorted(pos, cands, side="left")
  neg_lt = np.searchsorted(neg, cands, side="left")
  acc = (pos_ge + neg_lt) / s.size
  best = int(np.argmax(acc))  # first maximum = smallest threshold among ties
  return Threshold(value=float(cands[best]), val_accuracy=float(acc[best]),
                   num_val_pairs=int(s.size), val_fingerprint=_fingerprint(s, y))


def roc_auc(scores, same) -> float:
  """Exact ROC-AUC with ties counted one half (Mann-Whitney U / (n_pos n_neg)); NaN if one class."""
  s, y = _check(scores, same, "test")
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="stable")
  sorted_s = s[order]
  ranks = np.empty(s.size, np.float64)
  # Average rank (1-based) of each group of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
  ends = np.r_[starts[1:], s.size]
  avg = (starts + ends + 1) / 2.0
  ranks[order] = np.repeat(avg, ends - starts)
  u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def evaluate(threshold: Threshold, test_scores, test_same) -> dict[str, float]:
  """Applies a validation-fit `threshold` to test pairs: accuracy, precision, recall, F1, AUC."""
  if not isinstance(threshold, Threshold):
    raise ValueError(f"threshold must be a Threshold from fit_threshold(val_scores, val_same), "
                     f"got {type(threshold).__name__} {threshold!r}: a number chosen by hand or on "
                     "test data is not accepted.")
  s, y = _check(test_scores, test_same, "test")
  if _fingerprint(s, y) == threshold.val_fingerprint:
    raise ValueError("test_scores / test_same are identical to the validation data the threshold "
                     "was fit on; evaluate on a held-out split.")
  pred = s >= threshold.value
  tp = int(np.sum(pred & y))
  fp = int(np.sum(pred & ~y))
  fn = int(np.sum(~pred & y))
  tn = int(np.sum(~pred & ~y))
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"accuracy": (tp + tn) / s.size, "precision": precision, "recall": recall, "f1": f1,
          "roc_auc": roc_auc(s, y), "threshold": threshold.value,
          "val_accuracy": threshold.val_accuracy}


def sample_pairs(labels, num_pairs: int, seed: int = 0):
  """Balanced pairs (i, j, same) from a labelled split, deterministic given `seed`.

  Half the pairs (rounded up) are same-label pairs i != j from classes with >= 2 examples, the
  rest different-label pairs; i is uniform over eligible rows, j uniform over its partners.
  Returns (i [P], j [P], same [P] bool). Raises ValueError if no same or no different pair exists.
  """
  y = np.asarray(labels)
  if y.ndim != 1 or y.size < 2:
    raise ValueError(f"labels must be 1-D with at least 2 entries, got shape {y.shape}.")
  if num_pairs < 2:
    raise ValueError(f"num_pairs must be >= 2 (one same, one different), got {num_pairs}.")
  rng = np.random.default_rng(seed)
  order = np.argsort(y, kind="stable")
  sy = y[order]
  starts = np.searchsorted(sy, sy, side="left")
  ends = np.searchsorted(sy, sy, side="right")
  size = ends - starts  # class size of each sorted row
  pos_rows = np.flatnonzero(size >= 2)
  neg_rows = np.flatnonzero(size < y.size)
  if pos_rows.size == 0 or neg_rows.size == 0:
    raise ValueError(f"labels need a class with >= 2 examples and >= 2 classes to form same and "
                     f"different pairs; got {np.unique(y).size} classes, largest {size.max()}.")
  n_pos = (num_pairs + 1) // 2
  n_neg = num_pairs - n_pos
  a = rng.choice(pos_rows, n_pos)
  # partner in the same class, not itself: offset in [0, size - 1), skip a
  off = (rng.random(n_pos) * (size[a] - 1)).astype(np.int64)
  b = starts[a] + off
  b = np.where(b >= a, b + 1, b)
  c = rng.choice(neg_rows, n_neg)
  # partner outside the class block [start, end)
  off = (rng.random(n_neg) * (y.size - size[c])).astype(np.int64)
  d = np.where(off >= starts[c], off + size[c], off)
  i = order[np.r_[a, c]]
  j = order[np.r_[b, d]]
  same = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
  return i, j, same
