"""k-NN classification on embeddings (seed 004, section 3.6): accuracy and macro F1.

Each query takes the majority label of its k nearest training embeddings (exact search,
`search.topk`). A tie between classes goes to the tied class whose first neighbour is nearest
(equivalently: the earliest in the ranked list, itself ordered by score then gallery index), so
predictions are deterministic. Uniform votes, as in seed 004 (no distance weighting).

Macro F1 follows sklearn.metrics.f1_score(average="macro"): the mean over the classes present in
the true or the predicted labels of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) (0 when the
denominator is 0).
"""

from __future__ import annotations

import numpy as np

from sim_jax.eval import retrieval
from sim_jax.eval import search as search_lib


def vote(neighbor_labels) -> np.ndarray:
  """[Q] majority label of each row of [Q, k] neighbour labels; ties to the nearest class."""
  nl = np.asarray(neighbor_labels)
  # same[q, i, j] = neighbour i and j share a label; votes[q, i] = count of neighbour i's label.
  votes = np.sum(nl[:, :, None] == nl[:, None, :], axis=2)
  # argmax returns the first (= nearest) position among equal vote counts.
  best = np.argmax(votes, axis=1)
  return nl[np.arange(nl.shape[0]), best]


def f1_macro(y_true, y_pred) -> float:
  """Macro F1 over the union of true and predicted classes (sklearn's definition)."""
  y_true = np.asarray(y_true)
  y_pred = np.asarray(y_pred)
  classes = np.union1d(y_true, y_pred)
  scores = []
  for c in classes:
    tp = np.sum((y_pred == c) & (y_true == c))
    fp = np.sum((y_pred == c) & (y_true != c))
    fn = np.sum((y_pred != c) & (y_true == c))
    denom = 2 * tp + fp + fn
    scores.append(2 * tp / denom if denom else 0.0)
  return float(np.mean(scores))


def knn_predict(train_emb, train_labels, query_emb=None, *, k: int = 5,
                metric: str = "euclidean", block_size: int = 8192,
                query_block_size: int = 2048) -> np.ndarray:
  """[Q] k-NN predictions; `query_emb=None` classifies the training set leave-one-out."""
  g = search_lib.check_embeddings(train_emb, "train_emb")
  gl = retrieval.check_labels(train_labels, g.shape[0], "train_labels")
  same_set = query_emb is None
  q = g if same_set else search_lib.check_embeddings(query_emb, "query_emb")
  _, idx = search_lib.topk(q, g, k, metric, block_size=block_size,
                           query_block_size=query_block_size, exclude_self=same_set)
  return vote(gl[idx])


def knn_metrics(train_emb, train_labels, query_emb, query_labels, *, k: int = 5,
                metric: str = "euclidean", block_size: int = 8192,
                query_block_size: int = 2048) -> dict[str, float]:
  """{"accuracy", "f1_macro"} of k-NN classification of queries against the training set.

  Args:
    train_emb [N, D], train_labels [N]: the labelled gallery.
    query_emb [Q, D], query_labels [Q]: the examples to classify (None, None: leave-one-out on
      the training set).
    k: neighbours, 1 <= k <= N (N - 1 leave-one-out).
  """
  pred = knn_predict(train_emb, train_labels, query_emb, k=k, metric=metric,
                     block_size=block_size, query_block_size=query_block_size)
  if query_emb is None:
    y = np.asarray(train_labels)
  else:
    y = retrieval.check_labels(query_labels, np.asarray(query_emb).shape[0], "query_labels")
  return {"accuracy": float(np.mean(pred == y)), "f1_macro": f1_macro(y, pred)}
