"""Miners: jit-able selections of pairs and triplets inside a batch, with fixed-shape outputs.

pytorch-metric-learning's miners return index lists whose length depends on the data, which
cannot be jitted. Here a miner returns one of two fixed-shape forms (both NamedTuples, so pytrees
that pass through `jax.jit` / `jax.vmap`):

  PairMask(pos [M, M], neg [M, M])  weights of the positive pairs (a, p) and negative pairs
      (a, n), float32 (float64 for float64 inputs). 0 = not selected, 1 = selected; the sampling
      miners store how many times a pair was drawn (with replacement). `pos` is 0 on the diagonal
      and wherever labels differ, `neg` 0 wherever they agree. A triplet loss given a PairMask
      uses the triplets (a, p, n) with pos[a, p] > 0 and neg[a, n] > 0 (pml's `convert_to_
      triplets` of a pair tuple: every mined positive with every mined negative of the same
      anchor).
  TripletMask(mask [M, M, M])  bool, mask[a, p, n] = triplet (a, p, n) selected. O(M^3) memory,
      as the dense batch_all triplet loss; only the triplet miners (triplet_margin, angular,
      distance_weighted) return it.

Miner -> form:  multi_similarity, pair_margin, hdc, batch_easy_hard, uniform_histogram,
maximum_loss -> PairMask;  triplet_margin, angular, distance_weighted -> TripletMask.

Distances are sim_jax's (`pairwise_distances`: "euclidean", "squared_euclidean", "cosine" =
1 - cosine similarity); pml's `CosineSimilarity` selections are the same sets written in
similarities (s - eps < max s_an  <=>  d + eps > min d_an with d = 1 - s). pml's default
`LpDistance` L2-normalises first: pass `l2_normalize(x)` for its selections.

All the selections are computed under `stop_gradient` (a miner selects, it is not
differentiated). The random miners (uniform_histogram, distance_weighted, maximum_loss) take a
`jax.random` key; their selections follow the same rule as pml's but not its random draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks
from sim_jax.losses.pairwise import DISTANCES, pairwise_distances
from sim_jax.numerics import l2_normalize


class PairMask(NamedTuple):
  pos: jax.Array  # [M, M] weights of positive pairs (a, p)
  neg: jax.Array  # [M, M] weights of negative pairs (a, n)


class TripletMask(NamedTuple):
  mask: jax.Array  # [M, M, M] bool, (a, p, n) selected


TRIPLET_TYPES = ("all", "hard", "semihard", "easy")
STRATEGIES = ("hard", "semihard", "easy", "all")
PAIR_MINERS = ("multi_similarity", "pair_margin", "hdc", "batch_easy_hard")
TRIPLET_MINERS = ("triplet_margin", "angular")
# Miners that draw at random: `from_config` needs a key (the trainer passes the step's).
RANDOM_MINERS = ("uniform_histogram", "distance_weighted", "maximum_loss")
# The miners `config.loss.miner.name` can run: every one of this module.
CONFIG_MINERS = ("none",) + PAIR_MINERS + TRIPLET_MINERS + RANDOM_MINERS
# The ones a loss on explicit pairs (contrastive) can take: PairMask miners that need no loss.
EXPLICIT_PAIR_MINERS = ("none",) + PAIR_MINERS + ("uniform_histogram",)


# --------------------------------------------------------------------------------------- helpers


def label_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(pos [M, M]: same label and a != p, neg [M, M]: labels differ), bool."""
  same = labels[:, None] == labels[None, :]
  return same & ~jnp.eye(labels.shape[0], dtype=bool), ~same


def _dist(embeddings, distance):
  return jax.lax.stop_gradient(pairwise_distances(embeddings, distance))


def _check(embeddings, labels, distance=None) -> None:
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  if distance is not None:
    _checks.check_choice(distance, "distance", DISTANCES)


def _weights(mask, dtype) -> jax.Array:
  return mask.astype(dtype)


def _pair_mask(pos, neg, dtype) -> PairMask:
  return PairMask(_weights(pos, dtype), _weights(neg, dtype))


def _check_range(value, name) -> None:
  if value is None:
    return
  if np.shape(value) != (2,) or not value[0] <= value[1]:
    raise ValueError(f"{name} must be None or a (low, high) pair with low <= high, got {value!r}.")


# ------------------------------------------------------------------------------------ pair miners


def multi_similarity(embeddings: jax.Array, labels: jax.Array, epsilon=0.1,
                     distance: str = "cosine") -> PairMask:
  """Multi-Similarity miner (Wang et al., CVPR 2019; pml `MultiSimilarityMiner`).

  With d the distance (default 1 - cosine similarity, the paper's s written as a distance):
    positive (a, p) selected  iff  d_ap + eps > min_n d_an   (a positive harder than the
                                                              easiest negative, up to eps)
    negative (a, n) selected  iff  d_an - eps < max_p d_ap
  An anchor without a negative selects no positive and vice versa. Shapes [M, D], [M] -> PairMask.
  """
  _check(embeddings, labels, distance)
  _checks.check_scalar(epsilon, "epsilon")
  d = _dist(embeddings, distance)
  pos, neg = label_masks(labels)
  min_neg = jnp.min(jnp.where(neg, d, jnp.inf), axis=1, keepdims=True)
  max_pos = jnp.max(jnp.where(pos, d, -jnp.inf), axis=1, keepdims=True)
  return _pair_mask(pos & (d + epsilon > min_neg), neg & (d - epsilon < max_pos), d.dtype)


def pair_margin(embeddings: jax.Array, labels: jax.Array, pos_margin=0.2, neg_margin=0.8,
                distance: str = "euclidean") -> PairMask:
  """Pair-margin miner (pml `PairMarginMiner`): the pairs that violate their margin,
  positives with d_ap > pos_margin and negatives with d_an < neg_margin."""
  _check(embeddings, labels, distance)
  _checks.check_scalar(pos_margin, "pos_margin")
  _checks.check_scalar(neg_margin, "neg_margin")
  d = _dist(embeddings, distance)
  pos, neg = label_masks(labels)
  return _pair_mask(pos & (d > pos_margin), neg & (d < neg_margin), d.dtype)


def _top_fraction(values, mask, fraction, largest: bool):
  """mask & (rank of the entry among the masked ones < ceil(fraction * count)); ranks by value
  (largest or smallest first), ties broken by flat index."""
  flat = jnp.where(mask, values, -jnp.inf if largest else jnp.inf).reshape(-1)
  order = jnp.argsort(-flat if largest else flat, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  count = jnp.sum(mask)
  k = jnp.ceil(jnp.asarray(fraction, values.dtype) * count.astype(values.dtype))
  return mask & (rank.reshape(values.shape) < k)


def hdc(embeddings: jax.Array, labels: jax.Array, filter_percentage=0.5,
        distance: str = "euclidean") -> PairMask:
  """Hard-aware deeply cascaded miner (Yuan et al., ICCV 2017; pml `HDCMiner`).

  Over the whole batch: the ceil(f * #positive pairs) positive pairs with the largest distance
  and the ceil(f * #negative pairs) negative pairs with the smallest (f = filter_percentage in
  (0, 1]). ceil is taken in the input's float precision (float64 under x64: Python's).
  """
  _check(embeddings, labels, distance)
  _checks.check_scalar(filter_percentage, "filter_percentage")
  if not 0 < filter_percentage <= 1:
    raise ValueError(f"filter_percentage must be in (0, 1], got {filter_percentage!r}.")
  d = _dist(embeddings, distance)
  pos, neg = label_masks(labels)
  return _pair_mask(_top_fraction(d, pos, filter_percentage, largest=True),
                    _top_fraction(d, neg, filter_percentage, largest=False), d.dtype)


def _pick(d, mask, largest: bool):
  """Per row: (index of the largest / smallest masked entry, its value, row has one)."""
  filled = jnp.where(mask, d, -jnp.inf if largest else jnp.inf)
  idx = jnp.argmax(filled, axis=1) if largest else jnp.argmin(filled, axis=1)
  return idx, jnp.take_along_axis(filled, idx[:, None], axis=1)[:, 0], jnp.any(mask, axis=1)


def _in_range(d, allowed):
  if allowed is None:
    return jnp.ones(d.shape, bool)
  return (d >= allowed[0]) & (d <= allowed[1])


def batch_easy_hard(embeddings: jax.Array, labels: jax.Array, pos_strategy: str = "easy",
                    neg_strategy: str = "semihard", allowed_pos_range=None,
                    allowed_neg_range=None, distance: str = "euclidean") -> PairMask:
  """Batch easy-hard miner (Xuan et al., WACV 2020; pml `BatchEasyHardMiner`); batch-hard is
  pos_strategy = neg_strategy = "hard".

  Per anchor, among the pairs inside the allowed distance range [low, high]:
    positive: "easy" the closest, "hard" the farthest, "semihard" the farthest with
      d_ap < d_an of the chosen negative, "all" every positive (no range filter, as pml);
    negative: "hard" the closest, "easy" the farthest, "semihard" the closest with
      d_an > d_ap of the chosen positive, "all" every negative.
  Without "all", an anchor is kept only when both a positive and a negative were found (one
  triplet per anchor); with one side "all", that side has every pair and the other side its
  chosen one. Both "semihard", or "semihard" with "all", is refused (pml's rule).
  """
  _check(embeddings, labels, distance)
  _checks.check_choice(pos_strategy, "pos_strategy", STRATEGIES)
  _checks.check_choice(neg_strategy, "neg_strategy", STRATEGIES)
  if pos_strategy == neg_strategy == "semihard":
    raise ValueError("pos_strategy and neg_strategy cannot both be 'semihard'.")
  if "semihard" in (pos_strategy, neg_strategy) and "all" in (pos_strategy, neg_strategy):
    raise ValueError(f"'semihard' cannot be combined with 'all', got pos_strategy="
                     f"{pos_strategy!r}, neg_strategy={neg_strategy!r}.")
  _check_range(allowed_pos_range, "allowed_pos_range")
  _check_range(allowed_neg_range, "allowed_neg_range")
  d = _dist(embeddings, distance)
  pos, neg = label_masks(labels)
  pos_r, neg_r = pos & _in_range(d, allowed_pos_range), neg & _in_range(d, allowed_neg_range)

  def positives(neg_dist=None):
    cand = pos_r if neg_dist is None else pos_r & (d < neg_dist[:, None])
    return _pick(d, cand, largest=pos_strategy != "easy")

  def negatives(pos_dist=None):
    cand = neg_r if pos_dist is None else neg_r & (d > pos_dist[:, None])
    return _pick(d, cand, largest=neg_strategy == "easy")

  if pos_strategy == "semihard":
    n_idx, n_d, n_ok = negatives()
    p_idx, _, p_ok = positives(n_d)
  elif neg_strategy == "semihard":
    p_idx, p_d, p_ok = positives()
    n_idx, _, n_ok = negatives(p_d)
  else:
    p_idx, _, p_ok = positives()
    n_idx, _, n_ok = negatives()
  m = labels.shape[0]
  keep = p_ok & n_ok if "all" not in (pos_strategy, neg_strategy) else None
  one_pos = jax.nn.one_hot(p_idx, m, dtype=bool) & (keep if keep is not None else p_ok)[:, None]
  one_neg = jax.nn.one_hot(n_idx, m, dtype=bool) & (keep if keep is not None else n_ok)[:, None]
  return _pair_mask(pos if pos_strategy == "all" else one_pos,
                    neg if neg_strategy == "all" else one_neg, d.dtype)


def _histogram_draws(key, d, mask, num_bins: int, per_bin: int):
  """Counts [M, M]: per non-empty bin of [min, max] of the masked distances (num_bins equal
  bins, each [lo, hi) but the last [lo, hi]), `per_bin` pairs drawn uniformly with replacement."""
  lo = jnp.min(jnp.where(mask, d, jnp.inf))
  hi = jnp.max(jnp.where(mask, d, -jnp.inf))
  edges = jnp.linspace(lo, hi, num_bins + 1)
  which = jnp.sum(d[..., None] >= edges[1:-1], axis=-1)  # bin of each pair, [M, M]
  flat_mask, flat_bin = mask.reshape(-1), which.reshape(-1)
  in_bin = flat_mask[None, :] & (flat_bin[None, :] == jnp.arange(num_bins)[:, None])  # [B, M*M]
  logits = jnp.where(in_bin, 0.0, -jnp.inf)
  keys = jax.random.split(key, num_bins)
  draws = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(per_bin,)))(keys, logits)
  nonempty = jnp.any(in_bin, axis=1)
  counts = jnp.zeros(flat_mask.shape, d.dtype).at[draws.reshape(-1)].add(
      jnp.repeat(nonempty, per_bin).astype(d.dtype))
  return counts.reshape(d.shape)


def uniform_histogram(embeddings: jax.Array, labels: jax.Array, key: jax.Array,
                      num_bins: int = 100, pos_per_bin: int = 10, neg_per_bin: int = 10,
                      distance: str = "euclidean") -> PairMask:
  """Uniform-histogram miner (pml `UniformHistogramMiner`): positive pairs and negative pairs
  each split into `num_bins` equal-width distance bins over [min, max]; from every non-empty bin
  `pos_per_bin` (`neg_per_bin`) pairs are drawn uniformly with replacement. The PairMask holds
  the draw counts. Memory O(num_bins * M^2)."""
  _check(embeddings, labels, distance)
  for name, v in (("num_bins", num_bins), ("pos_per_bin", pos_per_bin),
                  ("neg_per_bin", neg_per_bin)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"{name} must be a positive int, got {v!r}.")
  d = _dist(embeddings, distance)
  pos, neg = label_masks(labels)
  k_pos, k_neg = jax.random.split(key)
  return PairMask(_histogram_draws(k_pos, d, pos, num_bins, pos_per_bin),
                  _histogram_draws(k_neg, d, neg, num_bins, neg_per_bin))


def maximum_loss(embeddings: jax.Array, labels: jax.Array, key: jax.Array,
                 loss_fn: Callable[[jax.Array, jax.Array, PairMask], jax.Array],
                 output_batch_size: int, num_trials: int = 5) -> PairMask:
  """Maximum-loss miner (pml <= 1.x `MaximumLossMiner`): `num_trials` random subsets of
  `output_batch_size` rows (each `jax.random.permutation(k_t, M)[:output_batch_size]`, k_t the
  t-th of `jax.random.split(key, num_trials)`); the pairs inside the subset whose
  `loss_fn(embeddings, labels, PairMask of the subset's pairs)` is largest (first on a tie).
  `loss_fn` must accept a PairMask, e.g. `functools.partial(triplet, mining="batch_all")` with
  `mask=`; it is evaluated under stop_gradient."""
  _check(embeddings, labels)
  m = labels.shape[0]
  if isinstance(output_batch_size, bool) or not isinstance(output_batch_size, (int, np.integer)) \
      or not 0 < output_batch_size <= m:
    raise ValueError(f"output_batch_size must be an int in [1, {m}], got {output_batch_size!r}.")
  if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) \
      or num_trials <= 0:
    raise ValueError(f"num_trials must be a positive int, got {num_trials!r}.")
  pos, neg = label_masks(labels)
  dtype = _checks.compute_dtype(embeddings.dtype)
  x = jax.lax.stop_gradient(embeddings)

  def subset_mask(k):
    rows = jnp.zeros((m,), bool).at[jax.random.permutation(k, m)[:output_batch_size]].set(True)
    both = rows[:, None] & rows[None, :]
    return _pair_mask(pos & both, neg & both, dtype)

  masks = jax.vmap(subset_mask)(jax.random.split(key, num_trials))
  values = jax.vmap(lambda mk: loss_fn(x, labels, mk))(masks)
  best = jnp.argmax(values)
  return jax.tree.map(lambda a: a[best], masks)


# --------------------------------------------------------------------------------- triplet miners


def triplet_margin(embeddings: jax.Array, labels: jax.Array, margin=0.2,
                   type_of_triplets: str = "all", distance: str = "euclidean") -> TripletMask:
  """Triplet-margin miner (pml `TripletMarginMiner`). With t = d_an - d_ap over the valid
  triplets (y_p = y_a, p != a, y_n != y_a):
    "all" t <= m;  "hard" t <= 0 (and t <= m);  "semihard" 0 < t <= m;  "easy" t > m.
  """
  _check(embeddings, labels, distance)
  _checks.check_scalar(margin, "margin")
  _checks.check_choice(type_of_triplets, "type_of_triplets", TRIPLET_TYPES)
  d = _dist(embeddings, distance)
  pos, neg = label_masks(labels)
  t = d[:, None, :] - d[:, :, None]  # [a, p, n] = d_an - d_ap
  valid = pos[:, :, None] & neg[:, None, :]
  if type_of_triplets == "easy":
    return TripletMask(valid & (t > margin))
  cond = t <= margin
  if type_of_triplets == "hard":
    cond &= t <= 0
  elif type_of_triplets == "semihard":
    cond &= t > 0
  return TripletMask(valid & cond)


def angular(embeddings: jax.Array, labels: jax.Array, angle=20.0) -> TripletMask:
  """Angular miner (Wang et al., ICCV 2017; pml `AngularMiner`): the valid triplets whose angle
  at the negative, atan(|x_a - x_p| / (2 |x_n - x_c|)) with x_c = (x_a + x_p) / 2, exceeds
  `angle` degrees. Computed on the embeddings as given (pml also uses the raw embeddings here;
  pass L2-normalised ones for the paper's setting). From the Gram matrix, O(M^3) memory,
  no [M, M, M, D] intermediate."""
  _check(embeddings, labels)
  _checks.check_scalar(angle, "angle")
  x = jax.lax.stop_gradient(embeddings).astype(_checks.compute_dtype(embeddings.dtype))
  g = x @ x.T
  sq = jnp.diag(g)
  d_ap = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * g, 0.0))          # [a, p]
  c_sq = (sq[:, None] + sq[None, :] + 2 * g) / 4                                 # |x_c|^2 [a, p]
  n_dot_c = (g[:, None, :] + g[None, :, :]) / 2                                  # [a, p, n]
  d_nc = jnp.sqrt(jnp.maximum(sq[None, None, :] + c_sq[:, :, None] - 2 * n_dot_c, 0.0))
  # atan2(y, 2x) = atan(y / 2x) for x > 0, pi/2 at x = 0 < y and 0 at x = y = 0 (pml's NaN,
  # never selected).
  ang = jnp.arctan2(d_ap[:, :, None], 2 * d_nc)
  pos, neg = label_masks(labels)
  valid = pos[:, :, None] & neg[:, None, :]
  return TripletMask(valid & (ang > jnp.radians(jnp.asarray(angle, x.dtype))))


def distance_weighted_weights(embeddings: jax.Array, labels: jax.Array, cutoff=0.5,
                              nonzero_loss_cutoff=1.4) -> jax.Array:
  """The negative-sampling weights [M, M] of distance-weighted sampling (Wu et al., ICCV 2017,
  section 4; pml `DistanceWeightedMiner`), for L2-normalised D-dim embeddings:

    q(d) = d^(2 - D) (1 - d^2 / 4)^((3 - D) / 2),  d = max(|x_a - x_n|, cutoff),

  in log space, shifted by the largest finite log-weight of the batch (pml: over every entry,
  same-class ones counted as 0), set to 0 for same-class pairs, for d >= nonzero_loss_cutoff
  and where the log-weight is not finite, then normalised per row (a row of zeros stays NaN-
  free: 0). The euclidean distance of sim_jax (gram form) replaces pml's `cdist`."""
  _check(embeddings, labels)
  x = jax.lax.stop_gradient(embeddings)
  dim = float(x.shape[1])
  d = jnp.maximum(pairwise_distances(x, "euclidean"), cutoff)
  log_w = (2.0 - dim) * jnp.log(d) - ((dim - 3) / 2) * jnp.log(1.0 - 0.25 * d ** 2)
  bad = ~jnp.isfinite(log_w)
  same = labels[:, None] == labels[None, :]
  log_w = jnp.where(same, 0.0, log_w)
  shift = jnp.max(jnp.where(bad, -jnp.inf, log_w))
  w = jnp.exp(log_w - shift) * (~same) * (d < nonzero_loss_cutoff)
  w = jnp.where(bad, 0.0, w)
  total = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def distance_weighted(embeddings: jax.Array, labels: jax.Array, key: jax.Array, cutoff=0.5,
                      nonzero_loss_cutoff=1.4) -> TripletMask:
  """Distance-weighted sampling: for every positive pair (a, p) of an anchor whose weights
  (`distance_weighted_weights`) are not all 0, one negative drawn with probability w[a, n]
  (pml draws one per (anchor, random positive); here every positive gets its own draw)."""
  w = distance_weighted_weights(embeddings, labels, cutoff, nonzero_loss_cutoff)
  pos, _ = label_masks(labels)
  m = labels.shape[0]
  logits = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)       # [a, n]
  draws = jax.random.categorical(key, logits[:, None, :], shape=(m, m))        # [a, p]
  ok = pos & jnp.any(w > 0, axis=1)[:, None]
  return TripletMask(jax.nn.one_hot(draws, m, dtype=bool) & ok[:, :, None])


# -------------------------------------------------------------------------- use inside the losses


def pair_weights(mined: PairMask, same: jax.Array) -> jax.Array:
  """[B] weights of the explicit pairs (z[2i], z[2i+1]) of a pairs-sampler batch, i.e. of the
  flattened [2B, D] rows the miner saw: pos[2i, 2i+1] where same_i, else neg[2i, 2i+1]."""
  b = np.shape(same)[0]
  i = jnp.arange(b)
  y = jnp.asarray(same).astype(bool)
  return jnp.where(y, mined.pos[2 * i, 2 * i + 1], mined.neg[2 * i, 2 * i + 1])


def check_mask(mask, m: int, name: str = "mask") -> None:
  """Raises ValueError unless `mask` is None, a PairMask of [m, m] arrays or a TripletMask of an
  [m, m, m] array."""
  if mask is None:
    return
  if isinstance(mask, PairMask):
    for field, arr in zip(("pos", "neg"), mask):
      if np.shape(arr) != (m, m):
        raise ValueError(f"{name}.{field} must have shape [{m}, {m}], got {np.shape(arr)}.")
    return
  if isinstance(mask, TripletMask):
    if np.shape(mask.mask) != (m, m, m):
      raise ValueError(f"{name}.mask must have shape [{m}, {m}, {m}], got "
                       f"{np.shape(mask.mask)}.")
    return
  raise ValueError(f"{name} must be None, a miners.PairMask or a miners.TripletMask, got "
                   f"{type(mask).__name__}.")


def as_pairs(mined):
  """A miner's selection as a PairMask for the pair and tuple losses: a TripletMask becomes its
  positive pairs (a, p) and negative pairs (a, n) (pml's `convert_to_pairs` of a triplet tuple,
  duplicates merged into weight 1); a PairMask (or None) is returned as it is."""
  if isinstance(mined, TripletMask):
    dtype = jnp.float32
    return PairMask(jnp.any(mined.mask, axis=2).astype(dtype),
                    jnp.any(mined.mask, axis=1).astype(dtype))
  return mined


def check_config(miner_cfg, pairs: bool = False) -> None:
  """ValueError naming the `config.loss.miner` key that is not one of its choices; a loss on
  explicit pairs (contrastive) takes the PairMask miners that need no loss function
  (`EXPLICIT_PAIR_MINERS`)."""
  c = miner_cfg
  _checks.check_choice(c.name, "config.loss.miner.name",
                       EXPLICIT_PAIR_MINERS if pairs else CONFIG_MINERS)
  _checks.check_choice(c.distance, "config.loss.miner.distance", DISTANCES)
  _checks.check_choice(c.pos_strategy, "config.loss.miner.pos_strategy", STRATEGIES)
  _checks.check_choice(c.neg_strategy, "config.loss.miner.neg_strategy", STRATEGIES)
  _checks.check_choice(c.type_of_triplets, "config.loss.miner.type_of_triplets", TRIPLET_TYPES)


def from_config(miner_cfg, embeddings: jax.Array, labels: jax.Array, key: jax.Array | None = None,
                loss_fn: Callable | None = None):
  """The mask of `config.loss.miner` (`CONFIG_MINERS`), or None for name="none". Fields: see
  `sim_jax.losses.config`.

  The random miners (`RANDOM_MINERS`) draw with `key` (ValueError if None). distance_weighted
  selects on the L2-normalised embeddings (its q(d) is the distance density on the unit sphere).
  maximum_loss scores its `num_trials` subsets of `output_batch_size` rows (None: M // 2, at
  least 1) with `loss_fn(x, labels, PairMask)`, the trained loss (ValueError if None).
  """
  c = miner_cfg
  _checks.check_choice(c.name, "config.loss.miner.name", CONFIG_MINERS)
  if c.name == "none":
    return None
  x = embeddings
  if c.name in RANDOM_MINERS and key is None:
    raise ValueError(f"config.loss.miner.name={c.name!r} draws at random: it needs a PRNG key "
                     f"(the trainer passes the step's), got key=None.")
  if c.name == "uniform_histogram":
    return uniform_histogram(x, labels, key, c.num_bins, c.pos_per_bin, c.neg_per_bin,
                             distance=c.distance)
  if c.name == "distance_weighted":
    return distance_weighted(l2_normalize(x.astype(_checks.compute_dtype(x.dtype))), labels, key,
                             c.cutoff, c.nonzero_loss_cutoff)
  if c.name == "maximum_loss":
    if loss_fn is None:
      raise ValueError("config.loss.miner.name='maximum_loss' scores row subsets by the loss: "
                       "it needs loss_fn, got None (a loss on explicit pairs cannot take it).")
    size = max(labels.shape[0] // 2, 1) if c.output_batch_size is None else c.output_batch_size
    return maximum_loss(x, labels, key, loss_fn, size, c.num_trials)
  if c.name == "multi_similarity":
    return multi_similarity(x, labels, epsilon=c.epsilon, distance=c.distance)
  if c.name == "pair_margin":
    return pair_margin(x, labels, c.pos_margin, c.neg_margin, distance=c.distance)
  if c.name == "hdc":
    return hdc(x, labels, c.filter_percentage, distance=c.distance)
  if c.name == "batch_easy_hard":
    return batch_easy_hard(x, labels, c.pos_strategy, c.neg_strategy, distance=c.distance)
  if c.name == "triplet_margin":
    return triplet_margin(x, labels, c.margin, c.type_of_triplets, distance=c.distance)
  return angular(x, labels, c.angle)
