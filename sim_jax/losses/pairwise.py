"""Pair losses (contrastive, learnable-margin contrastive, pair BCE, sigmoid contrastive) and
the distance helpers that every loss in sim_jax.losses shares.

All functions are pure, accept bfloat16/float16/float32/float64 inputs and compute in
`promote_types(dtype, float32)`, so low-precision activations never accumulate in low precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sim_jax.losses import _checks
from sim_jax.numerics import l2_normalize

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
PAIR_DISTANCES = ("euclidean", "cosine")

# Squared distances at or below this are treated as exactly 0 by `safe_sqrt`: sqrt has an
# infinite derivative at 0, and the gram-matrix form leaves ~1e-7 rounding residue there.
SQ_DIST_EPS = 1e-12


def safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt(sq) for sq > 1e-12, else 0; the gradient is finite everywhere (0 below the cut)."""
  positive = sq > SQ_DIST_EPS
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def cosine_similarity_matrix(x: jax.Array) -> jax.Array:
  """[N, D] -> [N, N] cosine similarities <z_i, z_j>, z = l2_normalize(x), in float32 or wider."""
  z = l2_normalize(x.astype(_checks.compute_dtype(x.dtype)))
  return z @ z.T


def squared_euclidean_matrix(x: jax.Array) -> jax.Array:
  """[N, D] -> [N, N] squared distances |x_i - x_j|^2 via the gram matrix (O(N^2) memory).

  Clamped at 0 (rounding can make the gram form slightly negative) and exactly 0 on the diagonal.
  """
  x = x.astype(_checks.compute_dtype(x.dtype))
  sq_norm = jnp.sum(jnp.square(x), axis=1)
  sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * (x @ x.T)
  sq = jnp.maximum(sq, 0.0)
  return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, sq)


def pairwise_distances(x: jax.Array, distance: str = "euclidean") -> jax.Array:
  """[N, D] -> [N, N] distances: euclidean (safe sqrt), squared_euclidean, or 1 - cosine sim."""
  _checks.check_choice(distance, "distance", DISTANCES)
  if distance == "cosine":
    return 1.0 - cosine_similarity_matrix(x)
  sq = squared_euclidean_matrix(x)
  return sq if distance == "squared_euclidean" else safe_sqrt(sq)


def pair_distances(emb_a: jax.Array, emb_b: jax.Array, distance: str = "euclidean") -> jax.Array:
  """Row-wise distance of two [B, D] arrays -> [B]: euclidean (safe sqrt) or 1 - cosine sim."""
  _checks.check_choice(distance, "distance", PAIR_DISTANCES)
  dtype = _checks.compute_dtype(jnp.result_type(emb_a, emb_b))
  a, b = emb_a.astype(dtype), emb_b.astype(dtype)
  if distance == "cosine":
    return 1.0 - jnp.sum(l2_normalize(a) * l2_normalize(b), axis=1)
  # Difference form (not the gram form): exact 0 for identical rows, no cancellation.
  return safe_sqrt(jnp.sum(jnp.square(a - b), axis=1))


def _check_pairs(emb_a, emb_b, same) -> None:
  _checks.check_embeddings(emb_a, "emb_a")
  _checks.check_embeddings(emb_b, "emb_b")
  _checks.check_same_shape(emb_a, emb_b, "emb_a", "emb_b")
  _checks.check_same(same, emb_a.shape[0])


def contrastive(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array, margin=1.0,
                squared: bool = True, distance: str = "euclidean",
                reduction: str = "mean", weights=None) -> jax.Array:
  """Contrastive loss of Hadsell, Chopra & LeCun (CVPR 2006), as seeds 000 and 002 use it.

  With d_i = distance(emb_a[i], emb_b[i]) and y_i = same[i]:
    squared=True  (Hadsell; seed 000 eq. 3.4.1):  l_i = y_i * 0.5 * d_i^2
                                                       + (1 - y_i) * 0.5 * max(0, m - d_i)^2
    squared=False (hinge; seed 004 eq. 3.4):     l_i = y_i * d_i + (1 - y_i) * max(0, m - d_i)

  The hinge form equals pytorch-metric-learning's `ContrastiveLoss(pos_margin=0, neg_margin=m)`
  per pair, but its default reducer (`AvgNonZeroReducer`) averages positive and negative pairs
  separately over their *non-zero* terms and adds the two; here `reduction="mean"` is the plain
  mean over all B pairs (zero terms included), as in Hadsell et al.

  Args:
    emb_a, emb_b: [B, D] embeddings of the two sides of each pair (any float dtype; computed in
      float32 or wider).
    same: [B] bool/int, 1 (True) where the pair shares a class.
    margin: m > 0, Python float or scalar array (see `learnable_margin_contrastive`).
    squared: the squared (Hadsell) or hinge form above.
    distance: "euclidean" (|a - b|_2, safe sqrt: gradient 0 at d = 0) or "cosine" (1 - cos sim,
      zero vectors normalise to 0 so their cosine distance is 1).
    reduction: "mean" (over B), "sum", or "none" ([B]).
    weights: None, or [B] non-negative pair weights, e.g. a miner's selection of these pairs
      (`sim_jax.losses.miners.pair_weights`): l_i becomes w_i l_i and "mean" is the weighted
      mean sum_i w_i l_i / sum_i w_i (0 when every weight is 0).

  Edge cases: d = 0 on a negative pair gives 0.5 * m^2 (hinge: m); d >= m on a negative pair
  gives 0; a batch without positives (or without negatives) just has no terms of that kind.

  Returns:
    A scalar (mean / sum) or [B] losses (none), float32 (float64 for float64 inputs).
  """
  _check_pairs(emb_a, emb_b, same)
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  _checks.check_scalar(margin, "margin")
  _checks.check_positive(margin, "margin")
  d = pair_distances(emb_a, emb_b, distance)
  y = jnp.asarray(same).astype(bool)
  margin = jnp.asarray(margin, d.dtype)
  hinge = jax.nn.relu(margin - d)
  if squared:
    losses = jnp.where(y, 0.5 * jnp.square(d), 0.5 * jnp.square(hinge))
  else:
    losses = jnp.where(y, d, hinge)
  if weights is None:
    return _checks.reduce_elements(losses, reduction)
  _checks.check_weights(weights, emb_a.shape[0])
  w = jnp.asarray(weights).astype(losses.dtype)
  if reduction == "mean":
    total = jnp.sum(w)
    return jnp.where(total > 0, jnp.sum(w * losses) / jnp.where(total > 0, total, 1.0), 0.0)
  return _checks.reduce_elements(w * losses, reduction)


def margin_from_raw(raw: jax.Array) -> jax.Array:
  """softplus(raw): the positive margin (or temperature) the trainer derives from its raw param."""
  return jax.nn.softplus(raw)


def raw_from_margin(margin) -> jax.Array:
  """Inverse of `margin_from_raw`: log(expm1(m)), to initialise the raw parameter at margin m."""
  _checks.check_positive(margin, "margin")
  margin = jnp.asarray(margin, jnp.float32)
  return margin + jnp.log(-jnp.expm1(-margin))  # log(expm1(m)) without overflow for large m


def learnable_margin_contrastive(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array,
                                 margin: jax.Array, squared: bool = True,
                                 distance: str = "euclidean", reduction: str = "mean",
                                 margin_reward: float = 0.0, weights=None) -> jax.Array:
  """Contrastive loss with a trainable margin (seed 000, section 3.4.4), kept from collapsing.

    l_i = y_i * 0.5 * d_i^2 + (1 - y_i) * 0.5 * max(0, m - d_i)^2 - lambda * m   (squared=True)

  with lambda = `margin_reward` >= 0. The trainer keeps an unconstrained scalar `raw` in
  `params["loss"]["margin_raw"]`, passes `margin = margin_from_raw(raw) = softplus(raw)` (> 0)
  and logs it as train/margin; `raw_from_margin(m0)` gives the initial raw value for margin m0.

  Why the reward: the seed's loss alone has a degenerate optimum. Its derivative in m is
  dL/dm = mean_i (1 - y_i) max(0, m - d_i) >= 0 (squared form; hinge: the fraction of negatives
  with d_i < m), so gradient descent only ever lowers m, to 0, where the negative term
  vanishes and the loss is the positives' alone. The linear reward -lambda * m (a bounded,
  regularised margin, as the issue allows) moves the stationary point to
    mean_i (1 - y_i) max(0, m - d_i) = lambda,
  i.e. m settles where the negatives' mean hinge violation equals lambda: it tracks the
  distance distribution of the negatives (an adaptive margin) and never reaches 0 while the
  negatives are separated (at m -> 0 the derivative tends to -lambda < 0). lambda = 0 is the
  seed's formula exactly (and collapses; tests/losses_margin_test.py shows both).

  Args:
    emb_a, emb_b: [B, D]; same: [B] bool/int; margin: scalar array (> 0 when concrete);
    squared / distance / reduction / weights: as in `contrastive` ("none" subtracts lambda * m
      from every pair's loss, so its mean is the "mean" value).
    margin_reward: lambda >= 0, a Python float.
  """
  _checks.check_scalar(margin_reward, "margin_reward")
  if not margin_reward >= 0:
    raise ValueError(f"margin_reward must be >= 0, got {margin_reward!r}")
  base = contrastive(emb_a, emb_b, same, margin=margin, squared=squared, distance=distance,
                     reduction=reduction, weights=weights)
  if reduction == "sum":
    return base - margin_reward * emb_a.shape[0] * jnp.asarray(margin, base.dtype)
  return base - margin_reward * jnp.asarray(margin, base.dtype)


def pair_bce(logits: jax.Array, same: jax.Array, reduction: str = "mean") -> jax.Array:
  """Binary cross-entropy of a Siamese pair head that outputs one logit per pair (seeds 000, 002).

    l_i = -[y_i log sigmoid(x_i) + (1 - y_i) log(1 - sigmoid(x_i))] = softplus(x_i) - y_i * x_i

  computed in the softplus form, so it is finite for any finite logit (|x| = 1e4 included) and
  matches `optax.sigmoid_binary_cross_entropy` / `torch.nn.BCEWithLogitsLoss`.

  Args:
    logits: [B] or [B, 1] logits (pair head output; larger = more similar).
    same: [B] bool/int, 1 where the pair shares a class.
    reduction: "mean" (over B), "sum", or "none" ([B]).
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  logits = _pair_logits(logits)
  _checks.check_same(same, logits.shape[0])
  x = logits.astype(_checks.compute_dtype(logits.dtype))
  y = jnp.asarray(same).astype(x.dtype)
  return _checks.reduce_elements(jax.nn.softplus(x) - y * x, reduction)


def sigmoid_contrastive(logits: jax.Array, same: jax.Array, margin=1.0,
                        reduction: str = "mean") -> jax.Array:
  """Contrastive loss on a Siamese head's sigmoid similarity s = sigmoid(x) in (0, 1) (seed 002).

    l_i = y_i * max(margin - s_i, 0)^2 + (1 - y_i) * s_i^2,    s_i = sigmoid(logits_i)

  with y_i = 1 for a same-class pair: same pairs are pushed to s = 1, different pairs to s = 0.
  This is seed 002's formula and the Keras "siamese contrastive" example's (labels 1 = same,
  no 1/2 factor; there the head is Euclidean distance -> BatchNorm -> Dense(1) -> sigmoid). Unlike
  `contrastive`, the loss is on a similarity, not a distance. With margin >= 1 the hinge never
  clips (s < 1), so the loss is the squared error (s - y)^2 (the Brier score); a margin < 1 stops
  pulling same pairs once s >= margin. The decision rule that goes with it is s > 0.5 (x > 0).

  Args:
    logits: [B] or [B, 1] pair-head logits x (larger = more similar; `PairHead` output).
    same: [B] bool/int, 1 where the pair shares a class.
    margin: positive scalar (the seed's 1).
    reduction: "mean" (over B), "sum", or "none" ([B]).
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  _checks.check_scalar(margin, "margin")
  _checks.check_positive(margin, "margin")
  x = _pair_logits(logits)
  _checks.check_same(same, x.shape[0])
  s = jax.nn.sigmoid(x.astype(_checks.compute_dtype(x.dtype)))
  y = jnp.asarray(same).astype(s.dtype)
  hinge = jax.nn.relu(jnp.asarray(margin, s.dtype) - s)
  return _checks.reduce_elements(y * jnp.square(hinge) + (1 - y) * jnp.square(s), reduction)


def _pair_logits(logits: jax.Array) -> jax.Array:
  """[B] or [B, 1] floating logits as [B]; ValueError naming the shape / dtype otherwise."""
  shape = jnp.shape(logits)
  if len(shape) == 2 and shape[1] == 1:
    logits = logits[:, 0]
  elif len(shape) != 1:
    raise ValueError(f"logits must have shape [B] or [B, 1], got shape {shape}.")
  if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
    raise ValueError(f"logits must be a floating-point array, got dtype {jnp.result_type(logits)}.")
  return logits
