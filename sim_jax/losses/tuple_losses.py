"""Pair and tuple losses over the batch's all-pairs matrix (pytorch-metric-learning's set).

Every loss here is a pure function of `embeddings` [M, D] and integer `labels` [M] (positives
share a label, the anchor itself is never its own positive) plus an optional miner `mask`:
a bool [M, M] array (pairs (i, j) with mask[i, j] False take part in no term), or a miner's
`PairMask` (pos [M, M], neg [M, M]) of weights (`sim_jax.losses.miners`): a positive / negative
pair takes part where its weight is > 0. Per-anchor losses return `(num [M], den [M])` through their
`*_stats` cores and share the project's reduction (`_checks.reduce_per_anchor`):
"mean" = sum(num) / max(sum(den), 1). Which anchors count (den) is stated per loss and pinned in
docs/losses.md ("Pair and tuple losses"); it equals pytorch-metric-learning's default reducer on
every batch where each anchor has at least one pair.

s is the cosine similarity of the L2-normalised embeddings; d a distance (euclidean on the
L2-normalised embeddings, as pytorch-metric-learning's default `LpDistance`, unless
`normalize=False`). Computation is in float32 (float64 for float64 inputs).

`multi_similarity`, `circle`, `generalized_lifted_structure`, `lifted_structure` and `nca` take
`block_size` for their streaming forms (`sim_jax.losses.tuple_streaming`): the same row cores on
strips of anchors; and `mesh` for their sharded forms (`sim_jax.losses.sharded`): each device
streams its rows of the global batch against the all-gathered columns.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks, sharded, tuple_streaming
from sim_jax.losses.pairwise import (
  cosine_similarity_matrix,
  safe_sqrt,
  squared_euclidean_matrix,
)
from sim_jax.numerics import l2_normalize

# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def check_mask(mask, n: int, name: str = "mask") -> None:
  """Raises ValueError unless `mask` is None, a bool array [n, n], or a (pos, neg) pair of [n, n]
  arrays (a miner's `PairMask`)."""
  if mask is None:
    return
  parts = mask if isinstance(mask, tuple) else (mask,)
  if len(parts) not in (1, 2):
    raise ValueError(f"{name} must be a bool [{n}, {n}] array or a (pos, neg) pair of them, got "
                     f"a tuple of {len(parts)}.")
  for part in parts:
    shape = np.shape(part)
    if shape != (n, n):
      raise ValueError(f"{name} must have shape [{n}, {n}] (one flag per pair), got shape "
                       f"{shape}.")
  if len(parts) == 1 and jnp.result_type(mask) != jnp.bool_:
    raise ValueError(f"{name} must be a bool array (True = the pair is used), got dtype "
                     f"{jnp.result_type(mask)}; a miner's weights come as a (pos, neg) pair.")


def check_inputs(embeddings, labels, mask=None, reduction: str = "mean") -> None:
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  check_mask(mask, embeddings.shape[0])
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)


def pair_masks(labels: jax.Array, mask=None):
  """([M, M] positives, negatives): same label and i != j / other label, both within `mask`."""
  return tuple_streaming.block_pair_masks(labels, jnp.arange(labels.shape[0]), labels, mask)


def masked_logsumexp(x: jax.Array, mask: jax.Array, add_one: bool = False) -> jax.Array:
  """Row-wise log(sum_{j in mask} exp(x_ij)) [+ 1 inside the log]; 0 for rows with no entry.

  Rows without an entry are computed on zeros and then replaced by 0 (pml's `logsumexp`), so
  neither the value nor the gradient ever sees log(0).
  """
  any_ = jnp.any(mask, axis=1)
  safe = jnp.where(mask, x, -jnp.inf)
  if add_one:
    safe = jnp.concatenate([safe, jnp.zeros_like(safe[:, :1])], axis=1)
  else:
    safe = jnp.where(any_[:, None], safe, 0.0)
  return jnp.where(any_, jax.nn.logsumexp(safe, axis=1), 0.0)


def distance_matrix(x: jax.Array, squared: bool = False, normalize: bool = True) -> jax.Array:
  """[M, D] -> [M, M] euclidean (or squared) distances, of l2_normalize(x) when `normalize`."""
  x = x.astype(_checks.compute_dtype(x.dtype))
  if normalize:
    x = l2_normalize(x)
  sq = squared_euclidean_matrix(x)
  return sq if squared else safe_sqrt(sq)


def _f(x, dtype):
  return jnp.asarray(x, dtype)


# ----------------------------------------------------------------------------------------------
# Multi-similarity, Circle, lifted structure
# ----------------------------------------------------------------------------------------------


def prepare(embeddings, normalize: bool = True) -> jax.Array:
  """Embeddings in the compute dtype, L2-normalised when `normalize` (cosine losses always)."""
  x = embeddings.astype(_checks.compute_dtype(embeddings.dtype))
  return l2_normalize(x) if normalize else x


def _rows(core, x, labels, kind, mask, block_size, mesh=None):
  """(num, den) of a row core: dense, streamed in strips when `block_size` is an int, sharded
  over `mesh`'s "data" axis when a mesh is given."""
  if mesh is not None:
    return sharded.sharded_rows(lambda: core, x, labels, kind, mesh, block_size)
  if block_size is None or mask is not None:
    return tuple_streaming.dense_rows(core, x, labels, kind, mask)
  return tuple_streaming.stream_rows(core, x, labels, kind, block_size)


def _check_streamable(mask, block_size, mesh=None):
  _checks.check_block_size(block_size)
  if block_size is not None and mask is not None:
    raise ValueError("block_size streams the all-pairs matrix and mask is a dense [M, M] array: "
                     "pass one of them, got both.")
  if mesh is not None and mask is not None:
    raise ValueError("mesh shards the all-pairs matrix by rows and mask is a dense [M, M] "
                     "array: pass one of them, got both.")


def _ms_core(alpha, beta, base):
  def core(s, pos, neg):
    a, b, c = _f(alpha, s.dtype), _f(beta, s.dtype), _f(base, s.dtype)
    l_pos = masked_logsumexp(-a * (s - c), pos, add_one=True) / a
    l_neg = masked_logsumexp(b * (s - c), neg, add_one=True) / b
    counted = jnp.any(pos | neg, axis=1)
    return jnp.where(counted, l_pos + l_neg, 0.0), counted.astype(s.dtype)
  return core


def multi_similarity_stats(embeddings, labels, alpha=2.0, beta=50.0, base=0.5, mask=None,
                           block_size=None, mesh=None):
  """Per-anchor multi-similarity loss (num [M], den [M]); see `multi_similarity`."""
  return _rows(_ms_core(alpha, beta, base), prepare(embeddings), labels, "cosine", mask,
               block_size, mesh)


def multi_similarity(embeddings, labels, alpha=2.0, beta=50.0, base=0.5, mask=None,
                     block_size=None, reduction: str = "mean", mesh=None):
  """Multi-similarity loss (Wang et al., CVPR 2019, eq. 7; pml `MultiSimilarityLoss`).

    l_a = 1/alpha log(1 + sum_{p in P(a)} e^{-alpha (s_ap - base)})
          + 1/beta log(1 + sum_{n in N(a)} e^{beta (s_an - base)})

  mean over the anchors with at least one pair (pml: `MeanReducer` over all anchors; equal when
  every anchor has a pair). No pair mining: pass a `MultiSimilarityMiner` mask as `mask`.

  Args: embeddings [M, D] float; labels [M] int; alpha, beta > 0; base: the shift lambda;
    mask: [M, M] bool or None; block_size: None or an int (streaming, same value and gradient,
    memory O(M D + M block_size); not with a mask); reduction: "mean" | "sum" | "none";
    mesh: None or a mesh with a "data" axis (sharded form, `sim_jax.losses.sharded`; the other
    all-pairs losses here take `block_size` and `mesh` alike).
  """
  check_inputs(embeddings, labels, mask, reduction)
  _checks.check_positive(alpha, "alpha")
  _checks.check_positive(beta, "beta")
  _check_streamable(mask, block_size, mesh)
  num, den = multi_similarity_stats(embeddings, labels, alpha, beta, base, mask, block_size,
                                    mesh)
  return _checks.reduce_per_anchor(num, den, reduction)


def _circle_core(m, gamma):
  def core(s, pos, neg):
    mm, g = _f(m, s.dtype), _f(gamma, s.dtype)
    # The weights a_p, a_n are constants of the optimisation (Sun et al. sec. 3.1).
    sg = jax.lax.stop_gradient(s)
    logit_p = -g * jax.nn.relu(1 + mm - sg) * (s - (1 - mm))
    logit_n = g * jax.nn.relu(sg + mm) * (s - mm)
    lse = masked_logsumexp(logit_p, pos) + masked_logsumexp(logit_n, neg)
    counted = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    return jnp.where(counted, jax.nn.softplus(lse), 0.0), counted.astype(s.dtype)
  return core


def circle_stats(embeddings, labels, m=0.4, gamma=80.0, mask=None, block_size=None, mesh=None):
  """Per-anchor Circle loss (num [M], den [M]); see `circle`."""
  return _rows(_circle_core(m, gamma), prepare(embeddings), labels, "cosine", mask, block_size,
               mesh)


def circle(embeddings, labels, m=0.4, gamma=80.0, mask=None, block_size=None,
           reduction: str = "mean", mesh=None):
  """Circle loss (Sun et al., CVPR 2020, eq. 6, pair form; pml `CircleLoss`).

    l_a = softplus( log sum_{p} e^{-gamma a_p (s_ap - (1 - m))}
                    + log sum_{n} e^{gamma a_n (s_an - m)} ),
    a_p = [1 + m - s_ap]_+,  a_n = [s_an + m]_+   (no gradient through a_p, a_n)

  mean over the anchors with >= 1 positive and >= 1 negative (pml's `AvgNonZeroReducer`: the
  same, as softplus > 0). Args as `multi_similarity`; m: relaxation, gamma > 0: scale.
  """
  check_inputs(embeddings, labels, mask, reduction)
  _checks.check_positive(gamma, "gamma")
  _check_streamable(mask, block_size, mesh)
  num, den = circle_stats(embeddings, labels, m, gamma, mask, block_size, mesh)
  return _checks.reduce_per_anchor(num, den, reduction)


def _gls_core(neg_margin, pos_margin):
  def core(d, pos, neg):
    lse = (masked_logsumexp(d - _f(pos_margin, d.dtype), pos)
           + masked_logsumexp(_f(neg_margin, d.dtype) - d, neg))
    counted = jnp.any(pos | neg, axis=1)
    return jnp.where(counted, jax.nn.relu(lse), 0.0), counted.astype(d.dtype)
  return core


def generalized_lifted_structure_stats(embeddings, labels, neg_margin=1.0, pos_margin=0.0,
                                       mask=None, normalize=True, block_size=None, mesh=None):
  """Per-anchor generalized lifted structure loss (num [M], den [M])."""
  return _rows(_gls_core(neg_margin, pos_margin), prepare(embeddings, normalize), labels,
               "euclidean", mask, block_size, mesh)


def generalized_lifted_structure(embeddings, labels, neg_margin=1.0, pos_margin=0.0, mask=None,
                                 normalize=True, block_size=None, reduction: str = "mean",
                                 mesh=None):
  """Generalized lifted structure loss (Hermans et al. 2017, sec. 2; pml
  `GeneralizedLiftedStructureLoss`).

    l_a = [ log sum_{p} e^{d_ap - pos_margin} + log sum_{n} e^{neg_margin - d_an} ]_+

  (an empty sum contributes 0, as pml); mean over the anchors with at least one pair.
  d: euclidean distance of the L2-normalised embeddings (`normalize=False`: raw embeddings).
  """
  check_inputs(embeddings, labels, mask, reduction)
  _check_streamable(mask, block_size, mesh)
  num, den = generalized_lifted_structure_stats(embeddings, labels, neg_margin, pos_margin, mask,
                                                normalize, block_size, mesh)
  return _checks.reduce_per_anchor(num, den, reduction)


def _neg_lse_core(neg_margin):
  def core(d, pos, neg):
    has = jnp.any(neg, axis=1)
    return masked_logsumexp(_f(neg_margin, d.dtype) - d, neg), has.astype(d.dtype)
  return core


def _lifted_core(l_row, has_neg, pos_margin):
  """Second sweep of the lifted structure loss: l_row [M] = log sum_{N(j)} e^{m - d_jn}."""
  def core(d, pos, neg, index):
    has = has_neg > 0
    l_a = jnp.where(has, l_row, -jnp.inf)
    has_r = has[index]
    any_pair = has_r[:, None] | has[None, :]
    # Pairs where neither side has a negative: logaddexp(0, 0) computed and replaced by 0 (pml),
    # so no -inf - -inf reaches the gradient.
    both = jnp.logaddexp(jnp.where(any_pair, l_a[index][:, None], 0.0),
                         jnp.where(any_pair, l_a[None, :], 0.0))
    lse = jnp.where(any_pair, both, 0.0)
    j = jnp.where(pos, jnp.square(jax.nn.relu(lse + d - _f(pos_margin, d.dtype))) / 2, 0.0)
    return jnp.sum(j, axis=1), jnp.sum(pos, axis=1).astype(d.dtype)
  return core


def lifted_structure_stats(embeddings, labels, neg_margin=1.0, pos_margin=0.0, mask=None,
                           normalize=True, block_size=None, mesh=None):
  """Per-anchor lifted structure terms (num [M] = sum_p J_ap, den [M] = |P(a)|)."""
  x = prepare(embeddings, normalize)
  l_row, has_neg = _rows(_neg_lse_core(neg_margin), x, labels, "euclidean", mask, block_size,
                         mesh)
  if mesh is not None:
    return sharded.sharded_rows(lambda lse, has: _lifted_core(lse, has, pos_margin), x, labels,
                                "euclidean", mesh, block_size, (l_row, has_neg), with_index=True)
  core = _lifted_core(l_row, has_neg, pos_margin)
  if block_size is None or mask is not None:
    return tuple_streaming.dense_rows(core, x, labels, "euclidean", mask, with_index=True)
  return tuple_streaming.stream_rows(core, x, labels, "euclidean", block_size, with_index=True)


def lifted_structure(embeddings, labels, neg_margin=1.0, pos_margin=0.0, mask=None,
                     normalize=True, block_size=None, reduction: str = "mean", mesh=None):
  """Lifted structure loss (Song et al., CVPR 2016, eq. 4; pml `LiftedStructureLoss`).

  For every ordered positive pair (a, p), with the negatives of a and of p:
    J_ap = [ log( sum_{n in N(a)} e^{neg_margin - d_an} + sum_{n in N(p)} e^{neg_margin - d_pn} )
             + d_ap - pos_margin ]_+^2 / 2
  (the 1/2: each unordered pair appears twice; an empty sum gives log(...) = 0, as pml); mean
  over the positive pairs (pml's `MeanReducer`). Per anchor: num_a = sum_p J_ap,
  den_a = |P(a)|. block_size: two streamed sweeps (each row's negative log-sum-exp, then the
  pairs), same value and gradient.
  """
  check_inputs(embeddings, labels, mask, reduction)
  _check_streamable(mask, block_size, mesh)
  num, den = lifted_structure_stats(embeddings, labels, neg_margin, pos_margin, mask, normalize,
                                    block_size, mesh)
  return _checks.reduce_per_anchor(num, den, reduction)


# ----------------------------------------------------------------------------------------------
# N-pairs, tuplet margin, angular, NCA, instance loss
# ----------------------------------------------------------------------------------------------


def first_pairs(labels: jax.Array, mask=None):
  """(anchor [M] bool, positive [M] int32): pml's one positive pair per distinct label.

  The anchor of a label is its first (lowest-index) sample that has a positive; its positive is
  that anchor's lowest-index positive (`convert_to_pos_pairs_with_unique_labels`).
  """
  pos, _ = pair_masks(labels, mask)
  has_pos = jnp.any(pos, axis=1)
  idx = jnp.arange(labels.shape[0])
  same = labels[:, None] == labels[None, :]
  earlier = same & has_pos[None, :] & (idx[None, :] < idx[:, None])
  anchor = has_pos & ~jnp.any(earlier, axis=1)
  return anchor, jnp.argmax(pos, axis=1).astype(jnp.int32)


def npairs(embeddings, labels, mask=None, reduction: str = "mean"):
  """Multi-class N-pair loss (Sohn, NeurIPS 2016, eq. 6 without the L2 term; pml `NPairsLoss`).

  One (anchor a_c, positive p_c) pair per label c (`first_pairs`); with the dot product f:
    l_c = -log( e^{f(a_c, p_c)} / sum_{c'} e^{f(a_c, p_{c'})} )
  mean over the labels that have a pair; the embeddings are not normalised.
  """
  check_inputs(embeddings, labels, mask, reduction)
  x = embeddings.astype(_checks.compute_dtype(embeddings.dtype))
  anchor, p = first_pairs(labels, mask)
  logits = x @ x[p].T                                              # [a, c] = f(x_a, x_{p_c})
  logits = jnp.where(anchor[None, :], logits, -jnp.inf)
  safe = jnp.where(anchor[:, None], logits, 0.0)
  ce = jax.nn.logsumexp(safe, axis=1) - jnp.diagonal(safe)
  num = jnp.where(anchor, ce, 0.0)
  return _checks.reduce_per_anchor(num, anchor.astype(num.dtype), reduction)


def _log1p_sum_over_negatives(logits: jax.Array, neg: jax.Array) -> jax.Array:
  """[a, p] = log(1 + sum_n e^{logits[a, p, n]}) over the negatives n of a (`neg` [a, n])."""
  m = neg.shape[0]
  neg3 = jnp.broadcast_to(neg[:, None, :], logits.shape)
  return masked_logsumexp(logits.reshape(-1, m), neg3.reshape(-1, m),
                          add_one=True).reshape(logits.shape[:2])


def tuplet_margin(embeddings, labels, margin_degrees=5.73, scale=64.0, mask=None,
                  reduction: str = "mean"):
  """Tuplet margin loss (Yu & Tao, ICCV 2019, eq. 5; pml `TupletMarginLoss`).

  For every positive pair (a, p), with theta_ap = arccos(s_ap) and beta = margin in radians:
    l_ap = log(1 + sum_{n in N(a)} e^{scale (s_an - cos(theta_ap - beta))})
  cos(theta - beta) = s cos(beta) + sqrt(1 - s^2) sin(beta) (a safe sqrt: finite gradient at
  s = +-1, where arccos has none); mean over the positive pairs.
  """
  check_inputs(embeddings, labels, mask, reduction)
  s = cosine_similarity_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  b = math.radians(margin_degrees)
  shifted = s * math.cos(b) + safe_sqrt(1 - jnp.square(s)) * math.sin(b)   # [a, p]
  # [a, p, n]: logits scale (s_an - cos(theta_ap - beta)) over the negatives n of a.
  logits = _f(scale, s.dtype) * (s[:, None, :] - shifted[:, :, None])
  loss = _log1p_sum_over_negatives(logits, neg)
  # pml computes nothing when the batch has no negative pair at all.
  loss = jnp.where(pos & jnp.any(neg), loss, 0.0)
  counted = (pos & jnp.any(neg)).sum(axis=1).astype(loss.dtype)
  return _checks.reduce_per_anchor(jnp.sum(loss, axis=1), counted, reduction)


def angular(embeddings, labels, alpha_degrees=40.0, mask=None, reduction: str = "mean"):
  """Angular loss, N-pair form (Wang et al., ICCV 2017, eq. 8; pml `AngularLoss`).

  With x the L2-normalised embeddings and t = tan^2(alpha), for every positive pair (a, p):
    l_ap = log(1 + sum_{n in N(a)} e^{4 t (x_a + x_p)^T x_n - 2 (1 + t) x_a^T x_p})
  mean over the positive pairs. Dense: O(M^3) memory.
  """
  check_inputs(embeddings, labels, mask, reduction)
  s = cosine_similarity_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  t = math.tan(math.radians(alpha_degrees)) ** 2
  logits = 4 * t * (s[:, None, :] + s[None, :, :]) - 2 * (1 + t) * s[:, :, None]   # [a, p, n]
  loss = _log1p_sum_over_negatives(logits, neg)
  loss = jnp.where(pos & jnp.any(neg), loss, 0.0)
  counted = (pos & jnp.any(neg)).sum(axis=1).astype(loss.dtype)
  return _checks.reduce_per_anchor(jnp.sum(loss, axis=1), counted, reduction)


def _nca_core(scale):
  def core(d2, pos, neg):
    logits = -_f(scale, d2.dtype) * d2
    counted = jnp.any(pos, axis=1)
    loss = masked_logsumexp(logits, pos | neg) - masked_logsumexp(logits, pos)
    return jnp.where(counted, loss, 0.0), counted.astype(loss.dtype)
  return core


def nca_stats(embeddings, labels, scale=1.0, mask=None, normalize=True, block_size=None,
              mesh=None):
  """Per-anchor NCA loss (num [M], den [M]); see `nca`."""
  return _rows(_nca_core(scale), prepare(embeddings, normalize), labels, "squared_euclidean",
               mask, block_size, mesh)


def nca(embeddings, labels, scale=1.0, mask=None, normalize=True, block_size=None,
        reduction: str = "mean", mesh=None):
  """Neighbourhood components analysis loss (Goldberger et al., NeurIPS 2004; pml `NCALoss`).

    l_a = -log( sum_{p in P(a)} e^{-scale d_ap^2} / sum_{j != a} e^{-scale d_aj^2} )
  with d the euclidean distance of the L2-normalised embeddings; mean over the anchors with a
  positive (pml drops the anchors whose probability is exactly 0: the same set unless it
  underflows).
  """
  check_inputs(embeddings, labels, mask, reduction)
  _check_streamable(mask, block_size, mesh)
  num, den = nca_stats(embeddings, labels, scale, mask, normalize, block_size, mesh)
  return _checks.reduce_per_anchor(num, den, reduction)


def instance_loss(embeddings, labels, gamma=64.0, reduction: str = "mean"):
  """Instance loss as pml's `InstanceLoss` computes it (after Zheng et al., ACM TOMM 2020).

    l_i = -log softmax_j(gamma s_ij)[t_i],  t_i = rank of labels[i] among the batch's labels

  i.e. the batch's own embeddings act as the classifier and label rank t_i names a column
  (with labels = arange(M): each sample against itself). Mean over the M samples.
  """
  check_inputs(embeddings, labels, None, reduction)
  s = cosine_similarity_matrix(embeddings)
  n = labels.shape[0]
  _, target = jnp.unique(labels, return_inverse=True, size=n)
  logits = _f(gamma, s.dtype) * s
  ce = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(
    logits, target.reshape(n, 1), axis=1)[:, 0]
  return _checks.reduce_elements(ce, reduction)


# ----------------------------------------------------------------------------------------------
# Batch-level pair statistics: intra-pair variance, threshold-consistent margin
# ----------------------------------------------------------------------------------------------


def _masked_mean(x, m):
  return jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)


def intra_pair_variance(embeddings, labels, pos_eps=0.01, neg_eps=0.01, mask=None):
  """Intra-pair variance loss (Yu & Tao, ICCV 2019, eq. 7; pml `IntraPairVarianceLoss`).

  With mu_+ / mu_- the mean similarity of all positive / negative (ordered) pairs:
    L = mean_{(a,p)} [(1 - pos_eps) mu_+ - s_ap]_+^2 + mean_{(a,n)} [s_an - (1 + neg_eps) mu_-]_+^2
  (mu is differentiated, as in pml); a batch without pairs of a kind has no such term. Scalar.
  """
  check_inputs(embeddings, labels, mask)
  s = cosine_similarity_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  mu_p, mu_n = _masked_mean(s, pos), _masked_mean(s, neg)
  l_pos = _masked_mean(jnp.square(jax.nn.relu((1 - pos_eps) * mu_p - s)), pos)
  l_neg = _masked_mean(jnp.square(jax.nn.relu(s - (1 + neg_eps) * mu_n)), neg)
  return l_pos + l_neg


def threshold_consistent_margin(embeddings, labels, lambda_plus=1.0, lambda_minus=1.0,
                                margin_plus=0.9, margin_minus=0.5, mask=None):
  """Threshold-consistent margin loss (Zhang et al., ICCV 2023, eq. 3; pml
  `ThresholdConsistentMarginLoss`).

    L = lambda_+ mean_{(a,p): s <= m_+} (m_+ - s_ap) + lambda_- mean_{(a,n): s >= m_-} (s_an - m_-)
  each mean over the ordered pairs inside its margin (0 if none). Scalar.
  """
  check_inputs(embeddings, labels, mask)
  s = cosine_similarity_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  in_p, in_n = pos & (s <= margin_plus), neg & (s >= margin_minus)
  return (lambda_plus * _masked_mean(margin_plus - s, in_p)
          + lambda_minus * _masked_mean(s - margin_minus, in_n))


# ----------------------------------------------------------------------------------------------
# Margin loss with distance-weighted sampling, centroid triplet
# ----------------------------------------------------------------------------------------------

SAMPLINGS = ("all", "distance_weighted")


def distance_weighted_negatives(key, embeddings, labels, cutoff=0.5, nonzero_loss_cutoff=1.4,
                                mask=None):
  """One negative per (anchor, positive) pair, drawn as Wu et al. (ICCV 2017, eq. 4) do.

  On the unit sphere in R^D the distance of two uniform points has density
    q(d) ~ d^{D-2} (1 - d^2/4)^{(D-3)/2};
  a negative n of anchor a is drawn with probability ~ 1/q(max(d_an, cutoff)), restricted to
  d_an < nonzero_loss_cutoff (farther ones give no loss), normalised by the row's largest
  weight as the authors' code; uniformly among the anchor's negatives when no weight is left.
  Returns [M, M] int32: entry [a, p] is the negative drawn for (a, p). Gumbel-max sampling over
  an [M, M, M] noise tensor (fixed shape, jit-able).
  """
  d = distance_matrix(embeddings)
  _, neg = pair_masks(labels, mask)
  dim = embeddings.shape[1]
  dc = jnp.maximum(d, cutoff)
  log_w = (2.0 - dim) * jnp.log(dc) - ((dim - 3) / 2.0) * jnp.log(
    jnp.maximum(1.0 - 0.25 * jnp.square(dc), 1e-8))
  allowed = neg & (d < nonzero_loss_cutoff)
  log_w = jnp.where(allowed, log_w, -jnp.inf)
  has = jnp.any(allowed, axis=1, keepdims=True)
  log_w = jax.lax.stop_gradient(jnp.where(has, log_w, jnp.where(neg, 0.0, -jnp.inf)))
  m = labels.shape[0]
  noise = jax.random.gumbel(key, (m, m, m), log_w.dtype)       # [a, p, n]
  return jnp.argmax(log_w[:, None, :] + noise, axis=2).astype(jnp.int32)


def margin_loss(embeddings, labels, margin=0.2, beta=1.2, sampling="all", key=None, mask=None,
                cutoff=0.5, nonzero_loss_cutoff=1.4):
  """Margin loss (Wu et al., ICCV 2017, eq. 5; pml `MarginLoss`, fixed beta, nu = 0).

  Over triplets (a, p, n), d the euclidean distance of the L2-normalised embeddings:
    l_apn = [d_ap - beta + margin]_+ + [beta - d_an + margin]_+
  L = sum l / (#{[d_ap - beta + margin]_+ > 0} + #{[beta - d_an + margin]_+ > 0}) counted per
  triplet (pml's `DivisorReducer`); 0 when the divisor is 0.
  sampling="all": every valid triplet (pml's triplets_per_anchor="all"), summed in O(M^2);
  sampling="distance_weighted": one negative per positive pair from
  `distance_weighted_negatives(key, ...)` (Wu et al.'s sampler; `key` required).
  `beta` may be a learnt scalar (traced).
  """
  check_inputs(embeddings, labels, mask)
  _checks.check_choice(sampling, "sampling", SAMPLINGS)
  if sampling == "distance_weighted" and key is None:
    raise ValueError("sampling='distance_weighted' draws negatives: pass a PRNG key as key=, "
                     "got key=None.")
  d = distance_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  margin, beta = _f(margin, d.dtype), _f(beta, d.dtype)
  pos_term = jax.nn.relu(d - beta + margin)        # [a, p]
  neg_term = jax.nn.relu(beta - d + margin)        # [a, n]
  if sampling == "all":
    n_neg = jnp.sum(neg, axis=1).astype(d.dtype)
    n_pos = jnp.sum(pos, axis=1).astype(d.dtype)
    p_t, n_t = jnp.where(pos, pos_term, 0.0), jnp.where(neg, neg_term, 0.0)
    total = jnp.sum(n_neg * jnp.sum(p_t, axis=1) + n_pos * jnp.sum(n_t, axis=1))
    count = jnp.sum(n_neg * jnp.sum(p_t > 0, axis=1) + n_pos * jnp.sum(n_t > 0, axis=1))
  else:
    chosen = distance_weighted_negatives(key, embeddings, labels, cutoff, nonzero_loss_cutoff,
                                         mask)
    valid = pos & jnp.any(neg, axis=1, keepdims=True)
    n_t = jnp.take_along_axis(neg_term, chosen, axis=1)
    p_t, n_t = jnp.where(valid, pos_term, 0.0), jnp.where(valid, n_t, 0.0)
    total = jnp.sum(p_t + n_t)
    count = jnp.sum(p_t > 0) + jnp.sum(n_t > 0)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def centroid_triplet(embeddings, labels, margin=0.2, mask=None, normalize=False,
                     reduction: str = "mean"):
  """Centroid triplet loss (Wieczorek et al., ICMR 2021, eq. 2), batch-hard over centroids.

  Per anchor a with >= 1 positive and >= 1 other label: c_P = mean of a's positives (a itself
  left out, as the paper's query), c_k = mean of the samples of label k != y_a, and
    l_a = [ |x_a - c_P| - min_k |x_a - c_k| + margin ]_+
  mean over those anchors. Euclidean distance of the raw embeddings (`normalize=True`: of the
  L2-normalised ones). `mask` restricts which samples enter an anchor's centroids. Not in
  pytorch-metric-learning 2.9; the reference is the paper's formula.
  """
  check_inputs(embeddings, labels, mask, reduction)
  x = embeddings.astype(_checks.compute_dtype(embeddings.dtype))
  if normalize:
    x = l2_normalize(x)
  pos, neg = pair_masks(labels, mask)
  wp = pos.astype(x.dtype)
  n_p = jnp.sum(wp, axis=1)
  c_p = (wp @ x) / jnp.maximum(n_p, 1)[:, None]                          # [a, D]
  d_p = safe_sqrt(jnp.sum(jnp.square(x - c_p), axis=1))
  # Negative centroids per (anchor, label k): one-hot of the column labels, restricted by neg.
  same_k = labels[None, :] == labels[:, None]                          # [k-of-row j, col i]
  wn = (neg[:, None, :] & same_k[None, :, :]).astype(x.dtype)         # [a, j, i]: i has j's label
  n_k = jnp.sum(wn, axis=2)                                            # [a, j]
  c_k = jnp.einsum("aji,id->ajd", wn, x) / jnp.maximum(n_k, 1)[..., None]
  d_k = safe_sqrt(jnp.sum(jnp.square(x[:, None, :] - c_k), axis=2))   # [a, j]
  far = jax.lax.stop_gradient(jnp.max(d_k) + 1.0)
  d_n = jnp.min(jnp.where(n_k > 0, d_k, far), axis=1)
  counted = (n_p > 0) & jnp.any(n_k > 0, axis=1)
  loss = jnp.where(counted, jax.nn.relu(d_p - d_n + _f(margin, x.dtype)), 0.0)
  return _checks.reduce_per_anchor(loss, counted.astype(loss.dtype), reduction)
