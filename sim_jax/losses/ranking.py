"""Ranking-flavoured losses: SNR contrastive (Yuan et al. 2019, seed 004) and the Recall@k
surrogate (Patel, Tolias & Matas, CVPR 2022, seed 001)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sim_jax.losses import _checks
from sim_jax.losses.pairwise import cosine_similarity_matrix
from sim_jax.numerics import l2_normalize

# Anchor variances are clamped here so a constant (e.g. zero) embedding gives a large but finite
# SNR distance instead of 0/0.
VAR_EPS = 1e-12


def snr_distance_matrix(x: jax.Array) -> jax.Array:
  """[N, D] -> [N, N] signal-to-noise distances d_ij = var(x_j - x_i) / var(x_i) (Yuan et al.).

  var is the variance over the D features; the 1/(D-1) vs 1/D convention cancels in the ratio.
  Computed without the [N, N, D] difference tensor: var(x_j - x_i) = var(x_i) + var(x_j)
  - 2 cov(x_i, x_j). Not symmetric (normalised by the anchor's variance).
  """
  x = x.astype(_checks.compute_dtype(x.dtype))
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  d = x.shape[1]
  var = jnp.sum(jnp.square(xc), axis=1) / d
  cov = (xc @ xc.T) / d
  noise = jnp.maximum(var[:, None] + var[None, :] - 2.0 * cov, 0.0)
  noise = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, noise)
  return noise / jnp.maximum(var, VAR_EPS)[:, None]


def snr_contrastive(embeddings: jax.Array, labels: jax.Array, pos_margin=0.0, neg_margin=1.0,
                    regularization=0.0, normalize: bool = True,
                    reduction: str = "mean") -> jax.Array:
  """SNR contrastive loss (Yuan et al., "Signal-to-noise ratio: a robust distance metric for deep
  metric learning", CVPR 2019), as pytorch-metric-learning's
  `SignalToNoiseRatioContrastiveLoss(pos_margin, neg_margin)` computes it (seed 004 used it).

  With x_i the embeddings, L2-normalised first when `normalize` (pytorch-metric-learning's
  default, norm clamped at 1e-12; Yuan et al. use raw features: `normalize=False`), and over all
  ordered pairs (i, j), i != j, with the SNR distance d_ij = var(x_j - x_i) / var(x_i):
    positive pair (y_i == y_j): l_ij = [d_ij - pos_margin]_+
    negative pair (y_i != y_j): l_ij = [neg_margin - d_ij]_+
  reduction="mean" (pytorch-metric-learning's AvgNonZeroReducer per sub-loss, then summed):
    L = mean_{pos pairs, l > 0} l + mean_{neg pairs, l > 0} l + lambda * mean_i |sum_k x_ik|
  where an empty average is 0 and the last term is Yuan et al.'s zero-mean regulariser on the
  raw (unnormalised) embeddings (lambda = `regularization`; 0 by default as in
  pytorch-metric-learning, where it is `ZeroMeanRegularizer` with `embedding_reg_weight`).
  reduction="sum": sum of all l_ij + lambda * sum_i |sum_k x_ik|.
  reduction="none": the [N, N] matrix of l_ij (0 on the diagonal), without the regulariser.

  Edge cases: a constant anchor (var = 0) has its variance clamped at 1e-12 (huge but finite
  distances); a batch without positive (negative) pairs just has no such term.

  Args:
    embeddings: [N, D] (D >= 2), any float dtype; labels: [N] int; pos_margin >= 0,
    neg_margin > 0, regularization >= 0 (scalars); normalize: see above;
    reduction: "mean", "sum" or "none".
  """
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  if embeddings.shape[1] < 2:
    raise ValueError(f"embeddings must have D >= 2 features for a variance, got shape "
                     f"{embeddings.shape}.")
  for value, name in ((pos_margin, "pos_margin"), (neg_margin, "neg_margin"),
                      (regularization, "regularization")):
    _checks.check_scalar(value, name)
  _checks.check_non_negative(pos_margin, "pos_margin")
  _checks.check_positive(neg_margin, "neg_margin")
  _checks.check_non_negative(regularization, "regularization")
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)

  x = embeddings.astype(_checks.compute_dtype(embeddings.dtype))
  dist = snr_distance_matrix(l2_normalize(x) if normalize else x)
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  pos, neg = same & ~eye, ~same
  pos_loss = jnp.where(pos, jax.nn.relu(dist - pos_margin), 0.0)
  neg_loss = jnp.where(neg, jax.nn.relu(neg_margin - dist), 0.0)
  if reduction == "none":
    return pos_loss + neg_loss
  reg = jnp.abs(jnp.sum(x, axis=1))
  if reduction == "sum":
    return jnp.sum(pos_loss) + jnp.sum(neg_loss) + regularization * jnp.sum(reg)

  def avg_nonzero(loss):
    return jnp.sum(loss) / jnp.maximum(jnp.sum(loss > 0), 1)

  return avg_nonzero(pos_loss) + avg_nonzero(neg_loss) + regularization * jnp.mean(reg)


def _sigmoid(u, temperature):
  return jax.nn.sigmoid(u / temperature)


def _smooth_ranks_dense(sim, eye, temperature):
  """[q, x] smooth rank r(q, x) = 1 + sum_{z != q, x} sigmoid((s_qz - s_qx) / tau2) for every x
  (O(N^3): the [q, x, z] tensor)."""
  others = ~eye[:, None, :] & ~eye[None, :, :]
  beats = _sigmoid(sim[:, None, :] - sim[:, :, None], temperature)
  return 1.0 + jnp.sum(jnp.where(others, beats, 0.0), axis=2)


def _smooth_ranks_of_positives(sim, pos, m, temperature):
  """([N, m] smooth ranks, [N, m] valid mask) of the first m positives of each query (by index;
  padded with non-positives, valid False): the dense ranks at those entries, in O(N^2 m)."""
  n = sim.shape[0]
  # A stable sort of "not positive" puts a query's positives first, in index order.
  idx = jnp.argsort(~pos, axis=1, stable=True)[:, :m]                        # [q, j]
  valid = jnp.take_along_axis(pos, idx, axis=1)
  s_qx = jnp.take_along_axis(sim, idx, axis=1)                               # [q, j]
  z = jnp.arange(n)
  others = (z[None, None, :] != z[:, None, None]) & (z[None, None, :] != idx[:, :, None])
  beats = _sigmoid(sim[:, None, :] - s_qx[:, :, None], temperature)          # [q, j, z]
  return 1.0 + jnp.sum(jnp.where(others, beats, 0.0), axis=2), valid


def recall_at_k_surrogate(embeddings: jax.Array, labels: jax.Array,
                          k_values: Sequence[int] = (1, 2, 4, 8, 16),
                          rank_temperature=0.01, k_temperature=1.0,
                          reduction: str = "mean", max_positives: int | None = None) -> jax.Array:
  """Recall@k surrogate loss (Patel, Tolias & Matas, CVPR 2022, eqs. 4-7), seed 001.

  Every sample q is a query against the rest of the batch Omega_q = {z != q}, with cosine
  similarity s. For a positive x in P_q = {x != q: y_x == y_q} its smooth rank is
    r(q, x) = 1 + sum_{z in Omega_q, z != x} sigmoid((s_qz - s_qx) / tau2)
  and the smooth Recall@k of q is
    R_k(q) = min( sum_{x in P_q} sigmoid((k - r(q, x)) / tau1), m_k ) / m_k,  m_k = min(k, |P_q|)
  (the clamp at m_k is the official implementation's; it keeps R_k <= 1 as the true recall).
  The loss of q is l_q = 1 - (1/|K|) sum_{k in K} R_k(q); reduction="mean" averages l_q over the
  queries that have a positive (queries without are excluded, never counted; 0 if none), "sum"
  sums them, "none" returns [N] (0 for excluded queries). The paper's defaults: K = {1, 2, 4, 8,
  16}, tau1 = 1, tau2 = 0.01. Unlike the official code, the query itself is not in Omega_q
  (its self-similarity would add ~1 to every rank) and any batch layout works (no P x K
  assumption). O(N^3) time and memory in this dense form (max_positives=None).

  With `max_positives = M` only the ranks of the (first, by index) M positives of each query are
  computed: O(N^2 M) time and memory, the same value and gradient whenever no query has more
  than M positives (a P x K batch: M = K - 1), which makes batches of thousands affordable.
  A query with more than M positives would lose some of them silently, so the loss is NaN then
  (the trainer halts on a non-finite loss) instead of a wrong number.

  Args:
    embeddings: [N, D] any float dtype (normalised internally); labels: [N] int;
    k_values: non-empty tuple of positive ints (static); rank_temperature (tau2) > 0;
    k_temperature (tau1) > 0; reduction: "mean", "sum" or "none"; max_positives: None (dense)
    or a positive int (static).
  """
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  k_values = tuple(k_values)
  if not k_values or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0
                             for k in k_values):
    raise ValueError(f"k_values must be a non-empty sequence of positive ints, got {k_values!r}.")
  for value, name in ((rank_temperature, "rank_temperature"), (k_temperature, "k_temperature")):
    _checks.check_scalar(value, name)
    _checks.check_positive(value, name)
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)

  if max_positives is not None and (isinstance(max_positives, bool)
                                    or not isinstance(max_positives, int) or max_positives < 1):
    raise ValueError(f"max_positives must be None or a positive int, got {max_positives!r}.")

  n = labels.shape[0]
  sim = cosine_similarity_matrix(embeddings)
  eye = jnp.eye(n, dtype=bool)
  pos = (labels[:, None] == labels[None, :]) & ~eye
  n_pos = jnp.sum(pos, axis=1)
  if max_positives is None:
    rank, valid = _smooth_ranks_dense(sim, eye, rank_temperature), pos      # [q, x] over all x
  else:
    rank, valid = _smooth_ranks_of_positives(sim, pos, min(max_positives, n), rank_temperature)
  recalls = []
  for k in k_values:
    hits = jnp.sum(jnp.where(valid, _sigmoid(k - rank, k_temperature), 0.0), axis=1)
    m_k = jnp.maximum(jnp.minimum(k, n_pos), 1).astype(hits.dtype)
    recalls.append(jnp.minimum(hits, m_k) / m_k)
  has_pos = n_pos > 0
  num = jnp.where(has_pos, 1.0 - sum(recalls) / len(k_values), 0.0)
  if max_positives is not None:
    # Positives beyond the first max_positives were not ranked: refuse loudly (NaN).
    num = jnp.where(n_pos > max_positives, jnp.nan, num)
  return _checks.reduce_per_anchor(num, has_pos.astype(num.dtype), reduction)
