"""Triplet loss with online mining over fixed-shape masks (FaceNet; Hermans et al. 2017; TF Addons).

Mining never produces variable-length index lists (which cannot be jitted): every strategy is a
masked max / min / sum over the dense [N, N] distance matrix (or [N, N, N] for batch_all), as
tensorflow/similarity's `losses/utils.py` does. The dense core `triplet_stats_dense` returns the
per-anchor `(num [N], den [N])` arrays, as does the streaming core in
`sim_jax.losses.triplet_streaming`; `triplet_stats` chooses between them
(`sim_jax.losses.sweep.streams`) and `triplet` applies the shared reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sim_jax.losses import _checks, sweep
from sim_jax.losses.miners import PairMask, TripletMask, check_mask
from sim_jax.losses.pairwise import DISTANCES, pairwise_distances
from sim_jax.losses.triplet_streaming import MININGS as STREAMING_MININGS
from sim_jax.losses.triplet_streaming import triplet_stats_streaming

# semi_hard_pml (pytorch-metric-learning's semi-hard rule) and a miner's mask are dense only.
MININGS = (*STREAMING_MININGS, "semi_hard_pml")
TRIPLET_MASK_MININGS = ("batch_all", "semi_hard_pml")  # the ones that take explicit triplets


def _masks(labels):
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  return same & ~eye, ~same


def _triplet_term(d_ap, d_an, margin, soft: bool):
  """[d_ap - d_an + margin]_+, or softplus(d_ap - d_an) (Hermans' soft margin, no m)."""
  if soft:
    return jax.nn.softplus(d_ap - d_an)
  return jax.nn.relu(d_ap - d_an + margin)


def _batch_hard(dist, pos, neg, margin, soft):
  has_pos, has_neg = jnp.any(pos, axis=1), jnp.any(neg, axis=1)
  valid = has_pos & has_neg
  # Masked entries are replaced by a real distance (0) *before* max/min would pick them: they
  # can never win (distances are >= 0 and every valid row has a real candidate), and invalid
  # rows are discarded below, so no inf reaches the arithmetic or the gradient.
  hardest_pos = jnp.max(jnp.where(pos, dist, 0.0), axis=1)
  far = jnp.max(dist) + 1.0
  hardest_neg = jnp.min(jnp.where(neg, dist, jax.lax.stop_gradient(far)), axis=1)
  loss = _triplet_term(hardest_pos, hardest_neg, margin, soft)
  return jnp.where(valid, loss, 0.0), valid.astype(loss.dtype)


def _batch_all(dist, pos, neg, margin, soft, triplets=None, semi_hard_only=False):
  # [a, p, n] with a valid triplet where (a, p) is positive and (a, n) negative.
  valid = pos[:, :, None] & neg[:, None, :]
  if triplets is not None:  # a miner's TripletMask
    valid &= triplets
  if semi_hard_only:  # pml's semi-hard: the negative farther than the positive
    valid &= dist[:, None, :] > dist[:, :, None]
  loss = _triplet_term(dist[:, :, None], dist[:, None, :], margin, soft)
  loss = jnp.where(valid, loss, 0.0)
  # Soft: softplus > 0 for every valid triplet, so all are counted (not only those whose
  # softplus did not underflow to 0). Hard: Hermans' "batch all" mean over the active ones.
  counted = valid if soft else valid & (loss > 0)
  num = jnp.sum(loss, axis=(1, 2))
  return num, jnp.sum(counted, axis=(1, 2)).astype(num.dtype)


def _semi_hard(dist, pos, neg, margin, soft):
  d_ap = dist[:, :, None]          # [a, p, 1]
  d_an = dist[:, None, :]          # [a, 1, n]
  neg3 = neg[:, None, :]           # [a, 1, n]
  far = jax.lax.stop_gradient(jnp.max(dist) + 1.0)
  # Semi-hard: the closest negative farther than the positive (TF Addons' negatives_outside).
  outside = neg3 & (d_an > d_ap)
  closest_outside = jnp.min(jnp.where(outside, d_an, far), axis=2)     # [a, p]
  # Fallback when no negative is farther than the positive: the farthest negative
  # (TF Addons' negatives_inside).
  farthest = jnp.max(jnp.where(neg[:, None, :], d_an, 0.0), axis=2)     # [a, 1] -> [a, p]
  chosen = jnp.where(jnp.any(outside, axis=2), closest_outside, farthest)
  has_neg = jnp.any(neg, axis=1)
  valid = pos & has_neg[:, None]
  loss = jnp.where(valid, _triplet_term(dist, chosen, margin, soft), 0.0)
  return jnp.sum(loss, axis=1), jnp.sum(valid, axis=1).astype(loss.dtype)


def triplet_stats_dense(embeddings: jax.Array, labels: jax.Array, margin=0.2,
                        mining: str = "batch_hard", distance: str = "euclidean",
                        soft: bool = False, mask=None):
  """Per-anchor triplet terms `(num [N], den [N])`; see `triplet` for the exact definitions.

  batch_hard: num_a = l_a, den_a = 1 for anchors with >= 1 positive and >= 1 negative.
  batch_all:  num_a = sum of l over the anchor's valid (a, p, n); den_a = #(l > 0)
              (soft: #valid triplets, since softplus > 0).
  semi_hard:  num_a = sum_p l_ap, den_a = #positives (0 when the anchor has no negative).
  semi_hard_pml: as batch_all over the triplets with d_an > d_ap.
  A miner's `mask` restricts the pairs (PairMask) or triplets (TripletMask) first.
  Distances are computed in float32 (float64 for float64 inputs). `mining`, `distance` are
  checked; the other inputs are validated by `triplet`.
  """
  _checks.check_choice(mining, "mining", MININGS)
  _checks.check_choice(distance, "distance", DISTANCES)
  dist = pairwise_distances(embeddings, distance)
  pos, neg = _masks(labels)
  triplets = None
  if isinstance(mask, PairMask):
    pos, neg = pos & (mask.pos > 0), neg & (mask.neg > 0)
  elif isinstance(mask, TripletMask):
    triplets = mask.mask
  margin = jnp.asarray(margin, dist.dtype)
  if mining == "batch_hard":
    return _batch_hard(dist, pos, neg, margin, soft)
  if mining in TRIPLET_MASK_MININGS:
    return _batch_all(dist, pos, neg, margin, soft, triplets, mining == "semi_hard_pml")
  return _semi_hard(dist, pos, neg, margin, soft)


def _check_inputs(embeddings, labels, margin, mining, distance, reduction, block_size,
                  soft=False, mask=None) -> None:
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  _checks.check_scalar(margin, "margin")
  _checks.check_non_negative(margin, "margin")
  _checks.check_choice(mining, "mining", MININGS)
  _checks.check_choice(distance, "distance", DISTANCES)
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  _checks.check_block_size(block_size)
  check_mask(mask, embeddings.shape[0])
  if mining == "semi_hard_pml" and soft:
    raise ValueError("mining='semi_hard_pml' selects by the margin; soft=True has none.")
  if block_size is not None and (mask is not None or mining not in STREAMING_MININGS):
    raise ValueError(f"block_size={block_size!r}: the streaming triplet loss takes mining in "
                     f"{STREAMING_MININGS} and no mask (got mining={mining!r}, mask "
                     f"{type(mask).__name__}); use block_size=None.")
  if isinstance(mask, TripletMask) and mining not in TRIPLET_MASK_MININGS:
    raise ValueError(f"a TripletMask selects triplets: use mining in {TRIPLET_MASK_MININGS}, "
                     f"got mining={mining!r}.")


def triplet_stats(embeddings: jax.Array, labels: jax.Array, margin=0.2,
                  mining: str = "batch_hard", distance: str = "euclidean", soft: bool = False,
                  block_size=None, mesh=None, mask=None):
  """Per-anchor triplet terms `(num [N], den [N])`: `triplet_stats_dense`, or the streaming
  `triplet_stats_streaming` whenever a `block_size` is given (`sweep.streams` without the
  one-block shortcut: the one-block batch-hard sweep measured faster than the dense core, and
  dense semi-hard / batch-all hold O(N^3)). Arguments as `triplet`.
  """
  _check_inputs(embeddings, labels, margin, mining, distance, "mean", block_size, soft, mask)
  if sweep.streams(embeddings.shape[0], block_size, mesh, dense_at_one_block=False):
    return triplet_stats_streaming(embeddings, labels, margin=margin, mining=mining,
                                   distance=distance, soft=soft, block_size=block_size,
                                   mesh=mesh)
  return triplet_stats_dense(embeddings, labels, margin=margin, mining=mining,
                             distance=distance, soft=soft, mask=mask)


def triplet(embeddings: jax.Array, labels: jax.Array, margin=0.2, mining: str = "batch_hard",
            distance: str = "euclidean", soft: bool = False, block_size=None, mesh=None,
            reduction: str = "mean", mask=None) -> jax.Array:
  """Triplet loss (Schroff et al., FaceNet 2015) with online mining inside the batch.

  d is the distance: "euclidean" |x_a - x_b|_2 (gram form, safe sqrt: distances below 1e-6 are
  0 with gradient 0, so duplicates are finite), "squared_euclidean", or "cosine" = 1 - cos sim.
  Valid triplets (a, p, n): p != a, y_p == y_a, y_n != y_a. Hinge term [x + m]_+; with
  `soft=True` softplus(x) and no margin (Hermans et al. 2017, "soft margin").

  mining="batch_hard" (Hermans et al. 2017, "batch hard"): per anchor with >= 1 positive and
    >= 1 negative, l_a = [max_p d_ap - min_n d_an + m]_+; mean over those anchors (zero losses
    included).
  mining="batch_all" (Hermans et al. 2017, "batch all"): l_apn = [d_ap - d_an + m]_+ over all
    valid triplets; mean over the triplets with l > 0 (soft: over all valid triplets); 0 when
    none is active. Equals pytorch-metric-learning's `TripletMarginLoss` (its default
    `AvgNonZeroReducer`, all triplets) for the euclidean distance. O(N^3) memory in this dense
    form.
  mining="semi_hard" (TF Addons `triplet_semihard_loss`): for each positive pair (a, p) the
    negative is the one with the smallest d_an such that d_an > d_ap, or, when there is none,
    the one with the largest d_an; l_ap = [d_ap - d_an + m]_+; mean over all positive pairs of
    anchors that have a negative.
  mining="semi_hard_pml" (pytorch-metric-learning's `TripletMarginMiner("semihard")` followed by
    `TripletMarginLoss`): batch_all over the triplets with d_an > d_ap only, i.e. the terms with
    0 < d_an - d_ap < m, averaged over those (> 0) ones. Not with soft=True.

  mask: a miner's output (`sim_jax.losses.miners`). A PairMask keeps the positive pairs with
    pos > 0 and the negative pairs with neg > 0 (every mining then picks among them; batch_all
    uses every mined positive with every mined negative of the anchor); a TripletMask (with
    batch_all / semi_hard_pml) keeps exactly its triplets. Dense only (block_size=None).

  Anchors without a positive or without a negative are excluded, never counted as zero; a batch
  with no valid anchor (single class, or all labels unique) gives 0. With all distances equal
  every hinge term is the margin: batch_hard / semi_hard / batch_all all return m.

  Args:
    embeddings: [N, D] any float dtype; labels: [N] int; margin: m >= 0 (scalar, may be an array);
    mining / distance / soft: as above; block_size: None (dense) or an int to use
    `sim_jax.losses.triplet_streaming.triplet_stats_streaming`; mesh: for the streaming form;
    reduction: "mean" (sum(num) / max(sum(den), 1)), "sum", or "none" ([N] per anchor).
  """
  _check_inputs(embeddings, labels, margin, mining, distance, reduction, block_size, soft, mask)
  num, den = triplet_stats(embeddings, labels, margin=margin, mining=mining, distance=distance,
                           soft=soft, block_size=block_size, mesh=mesh, mask=mask)
  return _checks.reduce_per_anchor(num, den, reduction)
