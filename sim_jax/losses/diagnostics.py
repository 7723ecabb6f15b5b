"""Scalar training diagnostics for a labelled batch of embeddings (the trainer logs them).

No gradient flows through them (`stop_gradient`), they are jit-safe and cost O(N^2 log N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sim_jax.losses import _checks
from sim_jax.losses.pairwise import cosine_similarity_matrix, safe_sqrt, squared_euclidean_matrix
from sim_jax.numerics import l2_normalize


def _masked_mean(values, mask):
  # 0 (not NaN) when the mask is empty, so a logged curve never breaks on a single-class batch.
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _active_triplet_fraction(dist, pos, neg, margin):
  """#{valid (a, p, n): d_ap - d_an + m > 0} / #valid, without the [N, N, N] tensor.

  Per anchor, sort its negative distances (non-negatives pushed to +inf); for each positive p
  the active negatives are those with d_an < d_ap + m, counted by a binary search.
  """
  neg_sorted = jnp.sort(jnp.where(neg, dist, jnp.inf), axis=1)
  active = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="left"))(
      neg_sorted, dist + margin)                                        # [a, p]
  n_active = jnp.sum(jnp.where(pos, active, 0))
  n_valid = jnp.sum(jnp.sum(pos, axis=1) * jnp.sum(neg, axis=1))
  return n_active / jnp.maximum(n_valid, 1)


def diagnostics(embeddings: jax.Array, labels: jax.Array, margin=0.2,
                pair_margin=1.0) -> dict[str, jax.Array]:
  """Scalar health checks of a batch: activity of the losses, similarity gaps, collapse.

  With z the L2-normalised embeddings (norm clamped at 1e-12), cosine s_ij = <z_i, z_j> and
  Euclidean d_ij = |x_i - x_j| on the raw embeddings; positive pairs i != j with y_i == y_j,
  negative pairs y_i != y_j (ordered pairs; means over an empty set are 0):
    active_triplet_fraction: #{valid (a, p, n): d_ap - d_an + margin > 0} / #valid triplets,
      the share of triplets a batch_all triplet loss with `margin` still trains on;
    active_pair_fraction: share of negative pairs with d < pair_margin (non-zero negative term of
      the contrastive loss with that margin);
    mean_pos_cosine, mean_neg_cosine: mean s over positive / negative pairs;
    mean_pos_distance, mean_neg_distance: mean d over positive / negative pairs;
    embedding_std: mean over features of the batch std of z; collapse drives it to 0, while
      directions spread uniformly on the sphere give ~1/sqrt(D);
    embedding_std_normalized: embedding_std * sqrt(D) (~1 healthy, ~0 collapsed);
    mean_norm: mean |x_i| of the raw embeddings.

  Args:
    embeddings: [N, D] any float dtype; labels: [N] int; margin >= 0, pair_margin > 0 scalars.
  Returns:
    dict of float32 (float64 for float64 inputs) scalars.
  """
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  _checks.check_non_negative(margin, "margin")
  _checks.check_positive(pair_margin, "pair_margin")
  x = jax.lax.stop_gradient(embeddings.astype(_checks.compute_dtype(embeddings.dtype)))
  n, d = x.shape
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(n, dtype=bool)
  pos, neg = same & ~eye, ~same
  cos = cosine_similarity_matrix(x)
  dist = safe_sqrt(squared_euclidean_matrix(x))
  z = l2_normalize(x)
  std = jnp.mean(jnp.std(z, axis=0))
  return {
    "active_triplet_fraction": _active_triplet_fraction(dist, pos, neg, margin).astype(x.dtype),
    "active_pair_fraction": _masked_mean((dist < pair_margin).astype(x.dtype), neg),
    "mean_pos_cosine": _masked_mean(cos, pos),
    "mean_neg_cosine": _masked_mean(cos, neg),
    "mean_pos_distance": _masked_mean(dist, pos),
    "mean_neg_distance": _masked_mean(dist, neg),
    "embedding_std": std,
    "embedding_std_normalized": std * jnp.sqrt(jnp.asarray(d, x.dtype)),
    "mean_norm": jnp.mean(jnp.sqrt(jnp.sum(jnp.square(x), axis=1))),
  }
