"""N-way K-shot episodes with prototype classification (Snell et al. 2017, Prototypical Networks).

Episode e (rng = numpy.random.default_rng(seed), episodes drawn in order):
  1. choose n_way distinct classes among those with >= k_shot + n_query examples
     (rng.choice without replacement, over the sorted class ids);
  2. per chosen class, a random permutation of its examples: the first k_shot are the support,
     the next n_query the queries;
  3. prototype_c = mean of the support embeddings of class c (for "cosine" the support rows are
     L2-normalised first, and similarity is cosine to the prototype);
  4. each query is assigned the class of the closest prototype (Euclidean distance, or highest
     cosine); an exact tie goes to the class chosen first in step 1.
accuracy = mean over episodes of the episode accuracy; ci95 = 1.96 * std / sqrt(num_episodes)
(the usual few-shot report).
"""

from __future__ import annotations

import numpy as np

from sim_jax.eval import retrieval
from sim_jax.eval import search as search_lib


def sample_episodes(labels, *, n_way: int, k_shot: int, n_query: int, num_episodes: int,
                    seed: int = 0):
  """Yields (classes [n_way], support [n_way, k_shot], query [n_way, n_query]) row indices."""
  y = np.asarray(labels)
  for name, v in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query),
                  ("num_episodes", num_episodes)):
    if v < 1:
      raise ValueError(f"{name} must be >= 1, got {v}.")
  classes, counts = np.unique(y, return_counts=True)
  eligible = classes[counts >= k_shot + n_query]
  if eligible.size < n_way:
    raise ValueError(f"n_way={n_way} needs {n_way} classes with >= k_shot + n_query = "
                     f"{k_shot + n_query} examples; only {eligible.size} of {classes.size} have.")
  members = {c: np.flatnonzero(y == c) for c in eligible}
  rng = np.random.default_rng(seed)
  for _ in range(num_episodes):
    chosen = rng.choice(eligible, n_way, replace=False)
    support = np.empty((n_way, k_shot), np.int64)
    query = np.empty((n_way, n_query), np.int64)
    for w, c in enumerate(chosen):
      perm = rng.permutation(members[c])
      support[w] = perm[:k_shot]
      query[w] = perm[k_shot:k_shot + n_query]
    yield chosen, support, query


def classify_episode(emb, support, query, metric: str = "euclidean") -> np.ndarray:
  """[n_way, n_query] predicted way index (0..n_way-1) of each query row."""
  e = emb.astype(np.float64)
  if metric == "cosine":
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  proto = e[support].mean(axis=1)  # [n_way, D]
  qe = e[query]  # [n_way, n_query, D]
  if metric == "euclidean":
    score = -np.linalg.norm(qe[:, :, None, :] - proto[None, None], axis=-1)
  elif metric == "cosine":
    pn = proto / np.maximum(np.linalg.norm(proto, axis=1, keepdims=True), 1e-12)
    score = qe @ pn.T
  else:
    raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")
  return np.argmax(score, axis=-1)  # first maximum = class chosen first


def fewshot_accuracy(emb, labels, *, n_way: int = 5, k_shot: int = 1, n_query: int = 5,
                     num_episodes: int = 200, seed: int = 0,
                     metric: str = "euclidean") -> dict[str, float]:
  """{"accuracy", "ci95", "num_episodes"} of prototype classification over sampled episodes."""
  emb = np.asarray(search_lib.check_embeddings(emb, "emb"))
  y = retrieval.check_labels(labels, emb.shape[0], "labels")
  accs = []
  for _, support, query in sample_episodes(y, n_way=n_way, k_shot=k_shot, n_query=n_query,
                                           num_episodes=num_episodes, seed=seed):
    pred = classify_episode(emb, support, query, metric)
    accs.append(np.mean(pred == np.arange(n_way)[:, None]))
  accs = np.asarray(accs)
  return {"accuracy": float(accs.mean()),
          "ci95": float(1.96 * accs.std() / np.sqrt(accs.size)),
          "num_episodes": float(accs.size)}
