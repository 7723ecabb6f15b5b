"""N-way K-shot episodes: prototype classification and a head fine-tuned on the K shots.

Episode e (rng = numpy.random.default_rng(seed), episodes drawn in order):
  1. choose n_way distinct classes among those with >= k_shot + n_query examples
     (rng.choice without replacement, over the sorted class ids);
  2. per chosen class, a random permutation of its examples: the first k_shot are the support,
     the next n_query the queries;
  3. the queries are classified by one of two methods (`METHODS`), on the same episodes:

"prototype" (Snell et al. 2017, Prototypical Networks): prototype_c = mean of the support
embeddings of class c (for "cosine" the support rows are L2-normalised first, and similarity is
cosine to the prototype); each query goes to the closest prototype (Euclidean distance, or
highest cosine); an exact tie goes to the class chosen first in step 1.

"finetune" (the fine-tuning baseline of Chen et al. 2019, "A Closer Look at Few-shot
Classification", with the prototype initialisation of Triantafillou et al. 2020, Proto-MAML's
output layer): a linear head on the frozen embeddings, adapted on the K shots.
  x = e / s, s = sqrt(mean_support |e_i|^2)  (one scale per episode: the geometry, hence the
      prototype rule, is unchanged, and the step size below means the same for any embedding
      scale; "cosine" L2-normalises the rows first, so s = 1)
  q_c = mean_k x[support[c, k]]  (normalised to unit length for "cosine")
  logits_c(x) = x . w_c + b_c,   w_c = 2 q_c,  b_c = -|q_c|^2  at step 0
      = -|x - q_c|^2 + |x|^2, so step 0 classifies exactly like the prototypes;
  then `steps` full-batch gradient-descent steps of size `lr` on the mean softmax cross-entropy
  of the n_way * k_shot support rows, and each query goes to argmax_c logits_c. The encoder is
  frozen (the evaluators see embeddings only); the adapted "head" is this classifier. It runs
  inside one `jax.jit` (gradient steps in a `lax.fori_loop`, episodes `vmap`ped in blocks of
  `episode_block`), compiled once per (split size, D, n_way, k_shot, n_query, steps, metric).

Report: accuracy = mean over episodes of the episode accuracy; ci95 = 1.96 * std / sqrt(E), the
normal-approximation 95% confidence half-width of that mean over E episodes with the population
std (ddof = 0), as Prototypical Networks' and most few-shot code report it (`mean_ci95`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.eval import retrieval
from sim_jax.eval import search as search_lib

METHODS = ("prototype", "finetune")
METRICS = ("euclidean", "cosine")
# 1.96: the two-sided 95% quantile of the standard normal.
Z95 = 1.959963984540054


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


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")


def classify_episode(emb, support, query, metric: str = "euclidean") -> np.ndarray:
  """[n_way, n_query] predicted way index (0..n_way-1) of each query row (prototype rule)."""
  _check_metric(metric)
  e = emb.astype(np.float64)
  if metric == "cosine":
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  proto = e[support].mean(axis=1)  # [n_way, D]
  qe = e[query]  # [n_way, n_query, D]
  if metric == "euclidean":
    score = -np.linalg.norm(qe[:, :, None, :] - proto[None, None], axis=-1)
  else:
    pn = proto / np.maximum(np.linalg.norm(proto, axis=1, keepdims=True), 1e-12)
    score = qe @ pn.T
  return np.argmax(score, axis=-1)  # first maximum = class chosen first


def _unit_rows(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def finetune_episode_logits(support_emb: jax.Array, query_emb: jax.Array, *, steps: int,
                            lr, metric: str = "euclidean") -> jax.Array:
  """One episode's query logits [n_way, n_query, n_way] after fine-tuning the linear head.

  support_emb [n_way, k_shot, D], query_emb [n_way, n_query, D]: the episode's embeddings, row
  c of the support being class c. The head starts at the prototype rule and takes `steps`
  gradient-descent steps of size `lr` on the support cross-entropy (module docstring). Pure and
  jit / vmap safe; `steps` must be a Python int.
  """
  n_way, k_shot, _ = support_emb.shape
  s_emb = support_emb.astype(jnp.float32)
  q_emb = query_emb.astype(jnp.float32)
  if metric == "cosine":
    s_emb, q_emb = _unit_rows(s_emb), _unit_rows(q_emb)
  else:
    # One scale per episode (from the support only: the queries are unknown at adaptation).
    scale = jnp.sqrt(jnp.maximum(jnp.mean(jnp.sum(jnp.square(s_emb), axis=-1)), 1e-24))
    s_emb, q_emb = s_emb / scale, q_emb / scale
  x = s_emb.reshape(n_way * k_shot, -1)  # [n, D], n = n_way * k_shot, class-major rows
  onehot = jnp.repeat(jnp.eye(n_way, dtype=x.dtype), k_shot, axis=0)  # [n, n_way]
  proto = onehot.T @ x / k_shot  # [n_way, D]
  norm = jnp.maximum(jnp.linalg.norm(proto, axis=-1), 1e-12) if metric == "cosine" else 1.0
  # The head w [n_way, D] starts at 2 q_c, a combination of support rows, and each gradient
  # step (P - Y)^T x / n adds another: w = A x throughout. The steps run on the coefficients
  # A [n_way, n] with the Gram matrix x x^T, the same iterates as on w at a cost independent of
  # D (raw-pixel floors have D = H * W * C).
  coef = 2.0 * onehot.T / (k_shot * jnp.reshape(norm, (-1, 1)))
  bias = -jnp.sum(jnp.square(proto / jnp.reshape(norm, (-1, 1))), axis=-1)
  gram = x @ x.T

  def step(_, head):
    # Plain gradient descent on the mean support cross-entropy, written out: dL/dw = (P - Y)^T
    # x / n, dL/db = mean(P - Y). x has unit scale, so `lr` means the same for every encoder.
    a, b = head
    err = jax.nn.softmax(gram @ a.T + b) - onehot  # [n, n_way]
    return a - lr * err.T / x.shape[0], b - lr * jnp.mean(err, axis=0)

  coef, bias = jax.lax.fori_loop(0, steps, step, (coef, bias))
  return (q_emb @ x.T) @ coef.T + bias


@functools.partial(jax.jit, static_argnames=("steps", "metric"))
def _finetune_predict(emb, support_idx, query_idx, lr, *, steps: int, metric: str):
  """[E, n_way, n_query] predicted way of each query, for E episodes given as row indices."""
  def one(s, q):
    logits = finetune_episode_logits(emb[s], emb[q], steps=steps, lr=lr, metric=metric)
    return jnp.argmax(logits, axis=-1)  # first maximum, as the prototype rule
  return jax.vmap(one)(support_idx, query_idx)


def finetune_predictions(emb, supports, queries, *, steps: int = 50, lr: float = 0.5,
                         metric: str = "euclidean", episode_block: int = 50) -> np.ndarray:
  """[E, n_way, n_query] predictions of the fine-tuned head for stacked episodes.

  supports [E, n_way, k_shot] and queries [E, n_way, n_query] are row indices of `emb` [N, D].
  Episodes run `episode_block` at a time; the last block is padded with copies of the last
  episode (results dropped), so every call of one shape reuses one compiled program.
  """
  _check_metric(metric)
  if steps < 0 or int(steps) != steps:
    raise ValueError(f"steps must be an integer >= 0, got {steps!r}.")
  if not (np.isfinite(lr) and lr > 0):
    raise ValueError(f"lr must be a finite number > 0, got {lr!r}.")
  if episode_block < 1:
    raise ValueError(f"episode_block must be >= 1, got {episode_block}.")
  supports, queries = np.asarray(supports), np.asarray(queries)
  num = supports.shape[0]
  block = min(episode_block, num)
  pad = (-num) % block
  if pad:
    supports = np.concatenate([supports, np.repeat(supports[-1:], pad, axis=0)])
    queries = np.concatenate([queries, np.repeat(queries[-1:], pad, axis=0)])
  emb = jnp.asarray(emb)
  out = [np.asarray(_finetune_predict(emb, supports[i:i + block], queries[i:i + block],
                                      jnp.float32(lr), steps=int(steps), metric=metric))
         for i in range(0, num + pad, block)]
  return np.concatenate(out)[:num]


def mean_ci95(values) -> tuple[float, float]:
  """(mean, 1.96 * std / sqrt(n)) of per-episode accuracies, std with ddof = 0."""
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}.")
  return float(v.mean()), float(Z95 * v.std() / np.sqrt(v.size))


def fewshot_accuracy(emb, labels, *, n_way: int = 5, k_shot: int = 1, n_query: int = 5,
                     num_episodes: int = 200, seed: int = 0, metric: str = "euclidean",
                     method: str = "prototype", finetune_steps: int = 50,
                     finetune_lr: float = 0.5) -> dict[str, float]:
  """{"accuracy", "ci95", "num_episodes"} of `method` over the sampled episodes."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  _check_metric(metric)
  emb = np.asarray(search_lib.check_embeddings(emb, "emb"))
  y = retrieval.check_labels(labels, emb.shape[0], "labels")
  episodes = list(sample_episodes(y, n_way=n_way, k_shot=k_shot, n_query=n_query,
                                  num_episodes=num_episodes, seed=seed))
  if method == "prototype":
    preds = np.stack([classify_episode(emb, s, q, metric) for _, s, q in episodes])
  else:
    preds = finetune_predictions(emb, np.stack([s for _, s, _ in episodes]),
                                 np.stack([q for _, _, q in episodes]), steps=finetune_steps,
                                 lr=finetune_lr, metric=metric)
  accs = np.mean(preds == np.arange(n_way)[None, :, None], axis=(1, 2))  # [E]
  mean, ci95 = mean_ci95(accs)
  return {"accuracy": mean, "ci95": ci95, "num_episodes": float(accs.size)}
