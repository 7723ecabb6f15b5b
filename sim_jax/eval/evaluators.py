"""Evaluator objects, one per protocol, built from `config.eval` (see `config.py`).

Each evaluator has
  name: str                        the metric-name prefix, e.g. "retrieval"
  splits: tuple[str, ...]          the splits whose embeddings it needs (the trainer embeds these)
  __call__(embeddings, labels) -> dict[str, float]
where `embeddings` / `labels` are dicts keyed by split name ([N, D] and [N] NumPy arrays), and the
returned names are flat: "retrieval/mrr@5", "knn/f1_macro", "pool/top2_accuracy",
"verification/roc_auc", "fewshot/accuracy", "zeroshot/map@r", ...

`best_metric(eval_config)` returns (name, mode) for checkpoint selection, and `is_better(a, b,
mode)` compares two values of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sim_jax.eval import distances, fewshot, knn, pools, retrieval, verification

PROTOCOLS = ("retrieval", "knn", "pool", "verification", "fewshot", "zeroshot",
             "validation")
# Protocols that accept the kl / reverse_kl / cross_entropy distances (they rank a gallery).
DISTRIBUTION_PROTOCOLS = ("retrieval", "zeroshot", "validation")


def _get(d: dict, split: str, what: str):
  if split not in d:
    raise ValueError(f"{what} has no split {split!r}; available: {sorted(d)}. Check config.eval "
                     "split names.")
  return d[split]


def _prefixed(prefix: str, metrics: dict) -> dict[str, float]:
  return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class RetrievalEvaluator:
  """MRR@k, Recall@k, Precision@1, R-Precision, MAP@R of query_split against gallery_split."""
  query_split: str
  gallery_split: str  # "" = query split is its own gallery
  ks: tuple
  metric: str
  block_size: int
  query_block_size: int
  name: str = "retrieval"

  @property
  def splits(self):
    return (self.query_split,) + ((self.gallery_split,) if self.gallery_split else ())

  def __call__(self, embeddings, labels):
    q, ql = _get(embeddings, self.query_split, "embeddings"), _get(labels, self.query_split,
                                                                   "labels")
    g = gl = None
    if self.gallery_split:
      g = _get(embeddings, self.gallery_split, "embeddings")
      gl = _get(labels, self.gallery_split, "labels")
    out = retrieval.retrieval_metrics(q, ql, g, gl, ks=self.ks, metric=self.metric,
                                      block_size=self.block_size,
                                      query_block_size=self.query_block_size)
    return _prefixed(self.name, out)


@dataclasses.dataclass(frozen=True)
class KnnEvaluator:
  """k-NN accuracy and macro F1 of query_split classified against train_split."""
  train_split: str
  query_split: str
  k: int
  metric: str
  block_size: int
  query_block_size: int
  name: str = "knn"

  @property
  def splits(self):
    return (self.train_split, self.query_split)

  def __call__(self, embeddings, labels):
    same = self.train_split == self.query_split  # leave-one-out on one split
    out = knn.knn_metrics(
        _get(embeddings, self.train_split, "embeddings"), _get(labels, self.train_split, "labels"),
        None if same else _get(embeddings, self.query_split, "embeddings"),
        None if same else _get(labels, self.query_split, "labels"),
        k=self.k, metric=self.metric, block_size=self.block_size,
        query_block_size=self.query_block_size)
    return _prefixed(self.name, out)


@dataclasses.dataclass(frozen=True)
class PoolEvaluator:
  """Top-`top` accuracy of the true match among 1 + num_foils candidates (seed 003)."""
  mode: str  # "labels" | "pairs" | "cross" (queries from left_split, candidates right_split)
  split: str
  left_split: str
  right_split: str
  num_foils: int
  top: int
  seed: int
  metric: str
  name: str = "pool"

  @property
  def splits(self):
    return (self.left_split, self.right_split) if self.mode in ("pairs", "cross") else \
        (self.split,)

  def __call__(self, embeddings, labels):
    kw = dict(num_foils=self.num_foils, top=self.top, seed=self.seed, metric=self.metric)
    if self.mode == "pairs":
      out = pools.pair_pool_accuracy(_get(embeddings, self.left_split, "embeddings"),
                                     _get(embeddings, self.right_split, "embeddings"), **kw)
    elif self.mode == "cross":
      out = pools.cross_pool_accuracy(_get(embeddings, self.left_split, "embeddings"),
                                      _get(labels, self.left_split, "labels"),
                                      _get(embeddings, self.right_split, "embeddings"),
                                      _get(labels, self.right_split, "labels"), **kw)
    else:
      out = pools.label_pool_accuracy(_get(embeddings, self.split, "embeddings"),
                                      _get(labels, self.split, "labels"), **kw)
    return _prefixed(self.name, out)


@dataclasses.dataclass(frozen=True)
class VerificationEvaluator:
  """Pair metrics on test_split with the threshold fit on val_split's pairs only."""
  val_split: str
  test_split: str
  num_pairs: int
  seed: int
  metric: str
  name: str = "verification"

  @property
  def splits(self):
    return (self.val_split, self.test_split)

  def _scores(self, embeddings, labels, split, seed):
    e = _get(embeddings, split, "embeddings")
    y = retrieval.check_labels(_get(labels, split, "labels"), len(e), f"labels[{split!r}]")
    i, j, same = verification.sample_pairs(y, self.num_pairs, seed)
    return verification.pair_scores(e[i], e[j], self.metric), same

  def __call__(self, embeddings, labels):
    if self.val_split == self.test_split:
      raise ValueError(f"verification_val_split and the test split are both {self.val_split!r}; "
                       "the threshold must be chosen on a different split.")
    threshold = verification.fit_threshold(
        *self._scores(embeddings, labels, self.val_split, self.seed))
    out = verification.evaluate(threshold,
                                *self._scores(embeddings, labels, self.test_split, self.seed + 1))
    return _prefixed(self.name, out)


@dataclasses.dataclass(frozen=True)
class FewShotEvaluator:
  """N-way K-shot accuracy on `split` for every K of `k_shots` and method of `methods`.

  Names: "<method>_<K>shot_accuracy" / "_ci95" (95% confidence half-width over the episodes),
  plus "accuracy" / "ci95" of the first method at the first K and "num_episodes". The methods
  share each K's episodes, so their difference is paired.
  """
  split: str
  n_way: int
  k_shots: tuple
  n_query: int
  num_episodes: int
  seed: int
  metric: str
  methods: tuple = ("prototype",)
  finetune_steps: int = 100
  finetune_lr: float = 1.0
  name: str = "fewshot"

  @property
  def splits(self):
    return (self.split,)

  def __call__(self, embeddings, labels):
    out = {}
    for k in self.k_shots:
      for method in self.methods:
        m = fewshot.fewshot_accuracy(
            _get(embeddings, self.split, "embeddings"), _get(labels, self.split, "labels"),
            n_way=self.n_way, k_shot=k, n_query=self.n_query, num_episodes=self.num_episodes,
            seed=self.seed, metric=self.metric, method=method,
            finetune_steps=self.finetune_steps, finetune_lr=self.finetune_lr)
        out.update({f"{method}_{k}shot_accuracy": m["accuracy"],
                    f"{method}_{k}shot_ci95": m["ci95"]})
        out.setdefault("accuracy", m["accuracy"])
        out.setdefault("ci95", m["ci95"])
        out["num_episodes"] = m["num_episodes"]
    return _prefixed(self.name, out)


def _fewshot_evaluator(c, metric: str) -> FewShotEvaluator:
  methods = tuple(m.strip() for m in str(c.fewshot_methods).split(",") if m.strip())
  bad = [m for m in methods if m not in fewshot.METHODS]
  if bad or not methods:
    raise ValueError(f"config.eval.fewshot_methods={c.fewshot_methods!r}: give a comma-separated "
                     f"list of {fewshot.METHODS}.")
  k_shots = tuple(int(k) for k in c.fewshot_k_shots)
  if not k_shots:
    raise ValueError("config.eval.fewshot_k_shots is empty; give the K to evaluate, e.g. (1, 5).")
  return FewShotEvaluator(c.query_split, int(c.fewshot_n_way), k_shots, int(c.fewshot_n_query),
                          int(c.fewshot_num_episodes), int(c.fewshot_seed), metric, methods,
                          int(c.fewshot_finetune_steps), float(c.fewshot_finetune_lr))


@dataclasses.dataclass(frozen=True)
class ZeroShotEvaluator:
  """Retrieval within `split` on the classes absent from `train_split` (seed 004, 4.7).

  If `train_split` is "" or absent from the labels dict, every class of `split` is used (the
  split is assumed to be held out already; "<dataset>:<split>" names another dataset's split,
  the cross-domain row). Reports retrieval metrics plus num_classes and, with knn_k > 0, the
  seed's F1: leave-one-out knn_k-NN accuracy and macro F1 within those classes (`knn_f1_macro`;
  the seed split them half reference, half queries).

  With max_per_class > 0, each class keeps at most that many of its examples
  (`per_class_subset`, the same ones for every model and floor). Why: MAP@R ranks each query's
  R = (class size - 1) nearest neighbours, so whole held-out classes of Fashion-MNIST (7,000
  images each) ask for a top-7,000 search of 21,000 queries, which does not finish on a CPU.
  """
  split: str
  train_split: str
  ks: tuple
  metric: str
  block_size: int
  query_block_size: int
  name: str = "zeroshot"
  knn_k: int = 0
  max_per_class: int = 0

  @property
  def splits(self):
    return (self.split,)

  def __call__(self, embeddings, labels):
    e = _get(embeddings, self.split, "embeddings")
    y = retrieval.check_labels(_get(labels, self.split, "labels"), len(e),
                               f"labels[{self.split!r}]")
    keep = np.ones(len(y), bool)
    if self.train_split and self.train_split in labels:
      keep = ~np.isin(y, np.asarray(labels[self.train_split]))
    if keep.sum() < 2:
      raise ValueError(f"zero-shot split {self.split!r} has {int(keep.sum())} examples of classes "
                       f"unseen in {self.train_split!r}; need at least 2.")
    if self.max_per_class:
      chosen = np.zeros_like(keep)
      chosen[np.flatnonzero(keep)[per_class_subset(y[keep], self.max_per_class)]] = True
      keep = chosen
    out = retrieval.retrieval_metrics(e[keep], y[keep], ks=self.ks, metric=self.metric,
                                      block_size=self.block_size,
                                      query_block_size=self.query_block_size)
    out["num_classes"] = float(np.unique(y[keep]).size)
    if self.knn_k:
      loo = knn.knn_metrics(e[keep], y[keep], None, None, k=self.knn_k, metric=self.metric,
                            block_size=self.block_size, query_block_size=self.query_block_size)
      out.update({f"knn_{k}": v for k, v in loo.items()})
    return _prefixed(self.name, out)


def per_class_subset(labels: np.ndarray, max_per_class: int, seed: int = 0) -> np.ndarray:
  """Sorted indices into `labels` keeping at most `max_per_class` of each class, drawn without
  replacement by a generator seeded with `seed` (classes with fewer keep all of theirs)."""
  if max_per_class < 1:
    raise ValueError(f"max_per_class must be >= 1, got {max_per_class}.")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  picked = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class]
            for c in np.unique(labels)]
  return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _parse_protocols(text: str) -> list[str]:
  names = [p.strip() for p in str(text).split(",") if p.strip()]
  for p in names:
    if p not in PROTOCOLS:
      raise ValueError(f"unknown eval protocol {p!r} in protocols={text!r}; choose from "
                       f"{PROTOCOLS}.")
  if not names:
    raise ValueError(f"protocols={text!r} names no protocol; choose from {PROTOCOLS}.")
  return names


def get_evaluators(eval_config) -> list:
  """One evaluator per name in `eval_config.protocols`, in that order."""
  c = eval_config
  ks = tuple(int(k) for k in c.ks)
  search_kw = dict(block_size=int(c.block_size), query_block_size=int(c.query_block_size))
  pair_metric = "cosine" if c.metric == "cosine" else "euclidean"
  makers = {
      "retrieval": lambda: RetrievalEvaluator(c.query_split, c.gallery_split, ks, c.metric,
                                              **search_kw),
      "knn": lambda: KnnEvaluator(c.knn_train_split, c.query_split, int(c.knn_k), c.metric,
                                  **search_kw),
      "pool": lambda: PoolEvaluator(c.pool_mode, c.query_split, c.pool_left_split,
                                    c.pool_right_split, int(c.pool_num_foils), int(c.pool_top),
                                    int(c.pool_seed), c.metric),
      "verification": lambda: VerificationEvaluator(c.verification_val_split, c.query_split,
                                                    int(c.verification_num_pairs),
                                                    int(c.verification_seed), pair_metric),
      "fewshot": lambda: _fewshot_evaluator(c, pair_metric),
      # Retrieval again, on splits kept for choosing settings and checkpoints (never the test).
      "validation": lambda: RetrievalEvaluator(c.validation_query_split,
                                               c.validation_gallery_split, ks, c.metric,
                                               **search_kw, name="validation"),
      "zeroshot": lambda: ZeroShotEvaluator(c.zeroshot_split, c.zeroshot_train_split, ks,
                                            c.metric, **search_kw,
                                            knn_k=int(c.zeroshot_knn_k),
                                            max_per_class=int(c.zeroshot_max_per_class)),
  }
  if c.pool_mode not in ("labels", "pairs", "cross"):
    raise ValueError(f"pool_mode must be 'labels', 'pairs' or 'cross', got {c.pool_mode!r}.")
  best_metric(c)
  names = _parse_protocols(c.protocols)
  if c.metric in distances.DISTRIBUTION_DISTANCES:
    # Distances between classifier distributions rank a gallery; k-NN, pools, verification and
    # few-shot search or threshold by euclidean / cosine / dot only.
    other = [p for p in names if p not in DISTRIBUTION_PROTOCOLS]
    if other:
      raise ValueError(f"metric={c.metric!r} (a distance between classifier distributions) "
                       f"works with the protocols {DISTRIBUTION_PROTOCOLS} only; protocols="
                       f"{c.protocols!r} also names {other}.")
  return [makers[p]() for p in names]


def best_metric(eval_config) -> tuple[str, str]:
  """(metric name, "max" | "min") that picks the best checkpoint."""
  mode = eval_config.best_mode
  if mode not in ("max", "min"):
    raise ValueError(f"best_mode must be 'max' or 'min', got {mode!r}.")
  name = eval_config.best_metric
  prefix = name.split("/")[0]
  if prefix not in PROTOCOLS or prefix not in _parse_protocols(eval_config.protocols):
    raise ValueError(f"best_metric={name!r} is not produced by protocols="
                     f"{eval_config.protocols!r}; its prefix must be one of them.")
  return name, mode


def is_better(new: float, old: float | None, mode: str) -> bool:
  """True if `new` beats `old` under `mode` (any finite value beats None / NaN)."""
  if old is None or np.isnan(old):
    return not np.isnan(new)
  return new > old if mode == "max" else new < old


def run_evaluators(evaluators, embeddings, labels) -> dict[str, float]:
  """Merges every evaluator's metrics into one flat dict of Python floats."""
  out: dict[str, float] = {}
  for ev in evaluators:
    out.update({k: float(v) for k, v in ev(embeddings, labels).items()})
  return out
