"""InfoNCE-family losses over a batch with labels: NT-Xent (SimCLR) and SupCon (Khosla et al.).

Both are computed as two per-anchor arrays `(num [N], den [N])` by a dense core
(`nt_xent_stats_dense`, `supcon_stats_dense`) or by the streaming core in
`sim_jax.losses.infonce_streaming`; `nt_xent_stats` / `supcon_stats` choose between them
(`sim_jax.losses.sweep.streams`), and the public function applies the reduction
(`sim_jax.losses._checks.reduce_per_anchor`) in one place, so both paths reduce identically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sim_jax.losses import _checks, sweep
from sim_jax.losses.infonce_streaming import nt_xent_stats_streaming, supcon_stats_streaming
from sim_jax.losses.pairwise import cosine_similarity_matrix


def _check_inputs(embeddings, labels, temperature, reduction, block_size) -> None:
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  _checks.check_scalar(temperature, "temperature")
  _checks.check_positive(temperature, "temperature")
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  _checks.check_block_size(block_size)


def _scaled_similarities(embeddings, labels, temperature):
  """s_ij / t in float32 (or wider) and the masks: positives (same label, j != i), negatives."""
  sim = cosine_similarity_matrix(embeddings)
  logits = sim / jnp.asarray(temperature, sim.dtype)
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  return logits, same & ~eye, ~same


def _masked_logsumexp(logits: jax.Array, mask: jax.Array):
  """Row-wise log sum_{j: mask_ij} exp(logits_ij) -> ([N] value, [N] any(mask)).

  Rows with an empty mask return 0 (not -inf) with a zero gradient, so callers can select them
  away with `where` without NaNs leaking into the gradient.
  """
  masked = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(masked, axis=1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # exp of the *masked* logits: an excluded entry far above the row max would overflow to inf
  # and turn the gradient of where() into 0 * inf = NaN.
  total = jnp.sum(jnp.exp(masked - row_max), axis=1)
  nonempty = jnp.any(mask, axis=1)
  lse = jnp.log(jnp.where(nonempty, total, 1.0)) + row_max[:, 0]
  return jnp.where(nonempty, lse, 0.0), nonempty


def nt_xent_stats_dense(embeddings: jax.Array, labels: jax.Array, temperature=0.1):
  """Per-anchor NT-Xent terms `(num [N], den [N])` from the dense [N, N] similarity matrix.

  s_ij = <z_i, z_j> / (max(|z_i|, 1e-12) max(|z_j|, 1e-12)); for each positive pair (i, p),
  p != i, y_p == y_i:
    l_ip = -log( exp(s_ip/t) / (exp(s_ip/t) + sum_{n: y_n != y_i} exp(s_in/t)) )
         = softplus( logsumexp_{n: y_n != y_i}(s_in/t) - s_ip/t )
  num_i = sum_p l_ip, den_i = #positives of i. An anchor without negatives (only possible when
  the whole batch is one class) has l_ip = -log 1 = 0 for each positive, still counted in den.
  Inputs are not validated here (the public `nt_xent` does that). Returns float32 arrays (float64
  for float64 inputs).
  """
  logits, pos, neg = _scaled_similarities(embeddings, labels, temperature)
  lse_neg, has_neg = _masked_logsumexp(logits, neg)
  per_pair = jax.nn.softplus(lse_neg[:, None] - logits)
  per_pair = jnp.where(pos & has_neg[:, None], per_pair, 0.0)
  num = jnp.sum(per_pair, axis=1)
  den = jnp.sum(pos, axis=1).astype(num.dtype)
  return num, den


def supcon_stats_dense(embeddings: jax.Array, labels: jax.Array, temperature=0.1):
  """Per-anchor SupCon (L_out) terms `(num [N], den [N])` from the dense similarity matrix.

  For anchor i with positives P(i) = {p != i: y_p == y_i} non-empty:
    l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) )
  num_i = l_i, den_i = 1; anchors with P(i) empty get num_i = den_i = 0 (excluded from the mean,
  never counted as a zero loss). Not validated here (the public `supcon` does that).
  """
  logits, pos, _ = _scaled_similarities(embeddings, labels, temperature)
  others = ~jnp.eye(labels.shape[0], dtype=bool)
  lse_all, _ = _masked_logsumexp(logits, others)
  n_pos = jnp.sum(pos, axis=1)
  has_pos = n_pos > 0
  mean_pos_logit = jnp.sum(jnp.where(pos, logits, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  num = jnp.where(has_pos, lse_all - mean_pos_logit, 0.0)
  return num, has_pos.astype(num.dtype)


def nt_xent_stats(embeddings: jax.Array, labels: jax.Array, temperature=0.1, block_size=None,
                  mesh=None):
  """Per-anchor NT-Xent `(num [N], den [N])`: `nt_xent_stats_dense`, or the streaming
  `nt_xent_stats_streaming` (same values and gradient) when `sweep.streams` says so: a
  `block_size` below N on one device, or a `block_size` and a mesh. Arguments as `nt_xent`.
  """
  _check_inputs(embeddings, labels, temperature, "mean", block_size)
  if sweep.streams(embeddings.shape[0], block_size, mesh):
    return nt_xent_stats_streaming(embeddings, labels, temperature=temperature,
                                   block_size=block_size, mesh=mesh)
  return nt_xent_stats_dense(embeddings, labels, temperature)


def supcon_stats(embeddings: jax.Array, labels: jax.Array, temperature=0.1, block_size=None,
                 mesh=None):
  """Per-anchor SupCon `(num [N], den [N])`: `supcon_stats_dense` or `supcon_stats_streaming`,
  chosen as `nt_xent_stats` does. Arguments as `supcon`.
  """
  _check_inputs(embeddings, labels, temperature, "mean", block_size)
  if sweep.streams(embeddings.shape[0], block_size, mesh):
    return supcon_stats_streaming(embeddings, labels, temperature=temperature,
                                  block_size=block_size, mesh=mesh)
  return supcon_stats_dense(embeddings, labels, temperature)


def nt_xent(embeddings: jax.Array, labels: jax.Array, temperature=0.1, block_size=None,
            mesh=None, reduction: str = "mean") -> jax.Array:
  """NT-Xent (normalised temperature-scaled cross-entropy; Chen et al., SimCLR, ICML 2020).

  Cosine similarity s_ij (norms clamped at 1e-12, so zero vectors give s = 0, not NaN). For every
  positive pair (i, p), p != i, y_p == y_i:
    l_ip = -log( exp(s_ip/t) / (exp(s_ip/t) + sum_{n: y_n != y_i} exp(s_in/t)) )
  The denominator holds this positive and all negatives, *not* the other positives (as
  pytorch-metric-learning's `NTXentLoss`). With two views and unique labels (see `nt_xent_pairs`)
  every anchor has exactly one positive and this is SimCLR's loss over all 2N anchors, the
  denominator holding all 2N - 1 others; identical embeddings give log(2N - 1).

  reduction="mean": sum_{i,p} l_ip / #positive pairs (0 when there is no positive pair);
  "sum": sum_{i,p} l_ip; "none": [N] mean over each anchor's positives (0 for anchors without).
  A single-class batch has no negatives: every l_ip = 0.

  Args:
    embeddings: [N, D] (any float dtype; similarities computed in float32 or wider; need not be
      normalised).
    labels: [N] int; positives share a label.
    temperature: t > 0, Python float or scalar array (may be a learnable softplus-mapped value).
    block_size: None for the dense O(N^2) form; an int below N (or any int with a mesh) uses
      `sim_jax.losses.infonce_streaming.nt_xent_stats_streaming` (same value and gradient,
      O(N * block_size)); N <= block_size on one device is the dense core, a single block.
    mesh: optional `jax.sharding.Mesh` for the streaming form (global-batch negatives).
    reduction: "mean", "sum" or "none".
  """
  _check_inputs(embeddings, labels, temperature, reduction, block_size)
  num, den = nt_xent_stats(embeddings, labels, temperature, block_size, mesh)
  return _checks.reduce_per_anchor(num, den, reduction)


def nt_xent_pairs(z1: jax.Array, z2: jax.Array, temperature=0.1, block_size=None, mesh=None,
                  reduction: str = "mean") -> jax.Array:
  """SimCLR's two-view NT-Xent: `nt_xent(concat([z1, z2]), concat([arange(n), arange(n)]))`.

  z1[i] and z2[i] are two views of example i (the only positive of each other); every other of
  the 2n rows is a negative. Returns a scalar, or [2n] per-anchor losses for reduction="none"
  (rows of z1 first). Identical rows everywhere give log(2n - 1).
  """
  _checks.check_embeddings(z1, "z1")
  _checks.check_embeddings(z2, "z2")
  _checks.check_same_shape(z1, z2, "z1", "z2")
  n = z1.shape[0]
  labels = jnp.concatenate([jnp.arange(n, dtype=jnp.int32)] * 2)
  return nt_xent(jnp.concatenate([z1, z2]), labels, temperature=temperature,
                 block_size=block_size, mesh=mesh, reduction=reduction)


def supcon(embeddings: jax.Array, labels: jax.Array, temperature=0.1, block_size=None,
           mesh=None, reduction: str = "mean") -> jax.Array:
  """Supervised contrastive loss, L_out form (Khosla et al., NeurIPS 2020, eq. 2).

  For anchor i with positives P(i) = {p != i: y_p == y_i}:
    l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) )
  with s the cosine similarity (norms clamped at 1e-12). The denominator holds *all* other
  samples, positives included (unlike `nt_xent`). Anchors without a positive are excluded, never
  counted as zero: "mean" = mean of l_i over anchors with P(i) non-empty (0 if there is none),
  "sum" = sum of those l_i, "none" = [N] l_i (0 for excluded anchors). With one positive per
  anchor (two views, unique labels) it equals `nt_xent`. Same as pytorch-metric-learning's
  `SupConLoss` except that its `AvgNonZeroReducer` would also drop anchors whose loss is exactly 0.

  Args: as `nt_xent`; block_size uses
  `sim_jax.losses.infonce_streaming.supcon_stats_streaming`.
  """
  _check_inputs(embeddings, labels, temperature, reduction, block_size)
  num, den = supcon_stats(embeddings, labels, temperature, block_size, mesh)
  return _checks.reduce_per_anchor(num, den, reduction)
