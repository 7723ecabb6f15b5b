"""Ranking and distribution losses of pytorch-metric-learning's set: FastAP, Histogram,
Ranked-list, PNP, Dynamic soft margin, and P2SGrad (cosine regression onto class weights).

Same conventions as `sim_jax.losses.tuple_losses`: embeddings [M, D], integer labels [M],
optional miner `mask` (bool [M, M], or a miner's (pos, neg) weights: pairs outside it take part
in no term), computation in
float32 (float64 for float64 inputs), fixed shapes only (histograms are triangular kernels over
fixed bins, never data-dependent index lists). The reductions follow pml's defaults and are
pinned in docs/losses.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks
from sim_jax.losses.pairwise import cosine_similarity_matrix
from sim_jax.losses.tuple_losses import (
  check_inputs,
  distance_matrix,
  pair_masks,
)
from sim_jax.numerics import l2_normalize

PNP_VARIANTS = ("Ds", "Dq", "Iu", "Ib", "O")


def _triangle(x, centers, width):
  """[L, ...] triangular kernel weights [1 - |x - c_l| / width]_+ (linear interpolation)."""
  shape = (-1,) + (1,) * x.ndim
  return jax.nn.relu(1 - jnp.abs(x[None] - centers.reshape(shape)) / width)


def fast_ap(embeddings, labels, num_bins=10, mask=None, reduction: str = "mean"):
  """FastAP (Cakir et al., CVPR 2019, eq. 9 with triangular bins; pml `FastAPLoss`).

  d^2: squared euclidean distance of the L2-normalised embeddings, in [0, 4], binned at
  L = num_bins + 1 centres z_l = 4 l / num_bins with triangular kernels of width 4 / num_bins.
  Per anchor a with |P(a)| > 0: h+_l, h_l = soft counts of its positives / of all its pairs
  (pos + neg) in bin l, H+, H their cumulative sums, and
    FastAP_a = (1 / |P(a)|) sum_l h+_l H+_l / H_l   (terms with h+_l H+_l = 0 or H_l = 0 dropped)
    l_a = 1 - FastAP_a
  mean over the anchors with a positive. Memory O(L M^2).
  """
  check_inputs(embeddings, labels, mask, reduction)
  if int(num_bins) < 1:
    raise ValueError(f"num_bins must be a positive int, got {num_bins!r}.")
  d2 = distance_matrix(embeddings, squared=True)
  pos, neg = pair_masks(labels, mask)
  centers = jnp.linspace(0.0, 4.0, int(num_bins) + 1, dtype=d2.dtype)
  pulse = _triangle(d2, centers, 4.0 / num_bins)                      # [L, a, j]
  h_pos = jnp.sum(pulse * pos, axis=2).T                              # [a, L]
  h_all = h_pos + jnp.sum(pulse * neg, axis=2).T
  big_pos, big_all = jnp.cumsum(h_pos, axis=1), jnp.cumsum(h_all, axis=1)
  prod = h_pos * big_pos
  safe = (prod > 0) & (big_all > 0)
  ap = jnp.sum(jnp.where(safe, prod / jnp.where(safe, big_all, 1.0), 0.0), axis=1)
  n_pos = jnp.sum(pos, axis=1).astype(ap.dtype)
  counted = n_pos > 0
  loss = jnp.where(counted, 1 - ap / jnp.maximum(n_pos, 1), 0.0)
  return _checks.reduce_per_anchor(loss, counted.astype(loss.dtype), reduction)


def histogram(embeddings, labels, num_bins=100, mask=None):
  """Histogram loss (Ustinova & Lempitsky, NeurIPS 2016, eq. 4; pml `HistogramLoss`).

  Over the unordered pairs {i, j} (each once), s the cosine similarity, R = num_bins + 1 nodes
  t_r = -1 + 2 r / num_bins with triangular kernels of width Delta = 2 / num_bins:
    p+_r = (1/|S+|) sum_{pos pairs} [1 - |s_ij - t_r| / Delta]_+,  p-_r likewise over negatives,
    L = sum_r p-_r Phi+_r,   Phi+_r = sum_{q <= r} p+_q
  Pairs are those pml's "all triplets" touch: a positive pair counts when its label has a
  negative, a negative pair when one of its two samples has a positive (both halves of `mask`
  must allow the pair). 0 when there is no such positive or negative pair. Scalar.
  """
  check_inputs(embeddings, labels, mask)
  if int(num_bins) < 1:
    raise ValueError(f"num_bins must be a positive int, got {num_bins!r}.")
  s = cosine_similarity_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  if mask is not None:   # an unordered pair is in a set when either ordering is
    pos, neg = pos | pos.T, neg | neg.T
  upper = jnp.triu(jnp.ones(s.shape, bool), k=1)
  has_pos, has_neg = jnp.any(pos, axis=1), jnp.any(neg, axis=1)
  pos_u = pos & upper & has_neg[:, None]
  neg_u = neg & upper & (has_pos[:, None] | has_pos[None, :])
  nodes = jnp.linspace(-1.0, 1.0, int(num_bins) + 1, dtype=s.dtype)
  pulse = _triangle(s, nodes, 2.0 / num_bins)                        # [R, i, j]
  n_pos, n_neg = jnp.sum(pos_u), jnp.sum(neg_u)
  p_pos = jnp.sum(pulse * pos_u, axis=(1, 2)) / jnp.maximum(n_pos, 1)
  p_neg = jnp.sum(pulse * neg_u, axis=(1, 2)) / jnp.maximum(n_neg, 1)
  value = jnp.sum(p_neg * jnp.cumsum(p_pos))
  return jnp.where((n_pos > 0) & (n_neg > 0), value, 0.0)


def ranked_list(embeddings, labels, margin=0.4, t_neg=10.0, imbalance=0.5, alpha=None,
                t_pos=0.0, eps=1e-5, mask=None, reduction: str = "mean"):
  """Ranked list loss (Wang et al., CVPR 2019, eqs. 5-9; pml `RankedListLoss`).

  d: euclidean distance of the L2-normalised embeddings, alpha defaults to 1 + margin / 2.
  P*(a) = positives with d > alpha - margin, N*(a) = negatives with d < alpha (and d > 0), and
    L_P(a) = sum_{P*} w_p (d_ap - (alpha - m)) / (sum_{P*} w_p + M eps),
    L_N(a) = sum_{N*} w_n (alpha - d_an) / (sum_{N*} w_n + M eps),
    w_p = e^{t_pos (d_ap - (alpha - m))},  w_n = e^{t_neg (alpha - d_an)},
    l_a = (1 - imbalance) L_P(a) + imbalance L_N(a)
  (the M eps: pml adds eps to every entry of the row); mean over all M anchors. The weights
  are differentiated, as in pml.
  """
  check_inputs(embeddings, labels, mask, reduction)
  if not 0 <= imbalance <= 1:
    raise ValueError(f"imbalance must be in [0, 1], got {imbalance}.")
  alpha = 1 + margin / 2 if alpha is None else alpha
  d = distance_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  n = d.shape[0]
  p_star = pos & (d > alpha - margin)
  n_star = neg & (d < alpha) & (d > 0)
  w_p = jnp.where(p_star, jnp.exp(t_pos * (d - (alpha - margin))), 0.0)
  w_n = jnp.where(n_star, jnp.exp(t_neg * (alpha - d)), 0.0)
  l_p = jnp.sum(w_p * (d - (alpha - margin)), axis=1) / (jnp.sum(w_p, axis=1) + n * eps)
  l_n = jnp.sum(w_n * (alpha - d), axis=1) / (jnp.sum(w_n, axis=1) + n * eps)
  loss = (1 - imbalance) * l_p + imbalance * l_n
  return _checks.reduce_elements(loss, reduction)


def pnp(embeddings, labels, b=2.0, alpha=1.0, anneal=0.01, variant="O", mask=None,
        reduction: str = "mean"):
  """Rank-based PNP loss (Li et al., AAAI 2022; pml `PNPLoss`).

  For a query a with positives, every j in P'(a) = P(a) + {a} has the smoothed number of
  negatives ranked above it
    R_aj = sum_{n in N(a)} sigmoid(clip((s_an - s_aj) / anneal, -50, 50))
  (the clip as pml, which zeroes its gradient beyond it), transformed by the variant:
    O: R,  Ds: log(1 + R),  Dq: 1 / (1 + R)^alpha,  Iu: (1 + R) log(1 + R),
    Ib: (b R - log(1 + b R)) / b^2
  and l_a = mean_{j in P'(a)} f(R_aj); L = mean over the queries with a positive (Dq: 1 - that
  mean). Dense: O(M^3) memory.
  """
  check_inputs(embeddings, labels, mask, reduction)
  _checks.check_choice(variant, "variant", PNP_VARIANTS)
  _checks.check_positive(anneal, "anneal")
  s = cosine_similarity_matrix(embeddings)
  pos, neg = pair_masks(labels, mask)
  has_pos = jnp.any(pos, axis=1)
  pos_self = pos | (jnp.eye(s.shape[0], dtype=bool) & has_pos[:, None])
  z = jnp.clip((s[:, None, :] - s[:, :, None]) / anneal, -50.0, 50.0)   # [a, j, n]
  rank = jnp.sum(jax.nn.sigmoid(z) * neg[:, None, :], axis=2)             # [a, j]
  if variant == "Ds":
    rank = jnp.log1p(rank)
  elif variant == "Dq":
    rank = 1 / (1 + rank) ** alpha
  elif variant == "Iu":
    rank = (1 + rank) * jnp.log1p(rank)
  elif variant == "Ib":
    rank = (b * rank - jnp.log1p(b * rank)) / b ** 2
  n_pos = jnp.sum(pos_self, axis=1).astype(s.dtype)
  per = jnp.sum(jnp.where(pos_self, rank, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  per = jnp.where(has_pos, per, 0.0)
  if variant == "Dq":
    per = jnp.where(has_pos, 1 - per, 0.0)
  return _checks.reduce_per_anchor(per, has_pos.astype(per.dtype), reduction)


def dynamic_soft_margin(embeddings, labels, histogram_state, min_val=-2.0, momentum=0.01,
                        mask=None):
  """Dynamic soft margin loss (Zhang & Rusinkiewicz, ICCV 2019; pml `DynamicSoftMarginLoss`).

  x = d_ap - d_an over all valid triplets, d the euclidean distance of the L2-normalised
  embeddings. A histogram h of x over num_bins = len(histogram_state) bins of width
  delta = 2 |min_val| / num_bins starting at min_val is kept across steps:
    h <- (1 - mu) h + mu * hist_batch(x)   (linear split between bins idx, idx + 1; mu = 1 while
    h is all zeros), then normalised to sum 1;
    L = mean_x CDF_h(idx(x)) * x,   idx(x) = floor((x - min_val) / delta)
  The CDF is a constant of the gradient (an index lookup). Indices are clipped to the bins
  (pml would index out of range for x >= -min_val - delta).
  Returns (loss, new_histogram_state); histogram_state [num_bins] (zeros to start).
  """
  check_inputs(embeddings, labels, mask)
  hist = jnp.asarray(histogram_state)
  if hist.ndim != 1 or hist.shape[0] < 1:
    raise ValueError(f"histogram_state must have shape [num_bins], got {hist.shape}.")
  num_bins = hist.shape[0]
  d = distance_matrix(embeddings)
  hist = hist.astype(d.dtype)
  pos, neg = pair_masks(labels, mask)
  valid = pos[:, :, None] & neg[:, None, :]                              # [a, p, n]
  x = d[:, :, None] - d[:, None, :]
  delta = 2 * abs(min_val) / num_bins
  u = jax.lax.stop_gradient((x - min_val) / delta)
  idx = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, num_bins - 1)
  frac = u - jnp.floor(u)
  w = valid.astype(d.dtype)
  lo = jnp.zeros(num_bins, d.dtype).at[idx.ravel()].add(((1 - frac) * w).ravel())
  hi = jnp.zeros(num_bins, d.dtype).at[jnp.minimum(idx + 1, num_bins - 1).ravel()].add(
    (frac * w).ravel())
  mu = jnp.where(jnp.sum(hist) != 0, momentum, 1.0)
  new = (1 - mu) * hist + mu * (lo + hi)
  new = new / jnp.where(jnp.sum(new) > 0, jnp.sum(new), 1.0)
  cdf = jax.lax.stop_gradient(jnp.cumsum(new))
  count = jnp.sum(w)
  loss = jnp.sum(jnp.where(valid, cdf[idx] * x, 0.0)) / jnp.maximum(count, 1)
  return loss, jax.lax.stop_gradient(new)


def p2sgrad(embeddings, labels, weights):
  """P2SGrad loss (Zhang et al., CVPR 2019, eq. 11 as a loss; pml `P2SGradLoss`).

    L = (1 / (M C)) sum_i sum_c (cos(x_i, w_c) - [c = y_i])^2
  with w_c the c-th column of `weights` [D, C] (normalised to unit length inside the loss;
  pml renormalises its stored weights in place instead) and cos clipped to [-1, 1].
  Class weights are a parameter: the trainer keeps them in params["loss"]["p2s_weights"].
  """
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  shape = np.shape(weights)
  if len(shape) != 2 or shape[0] != embeddings.shape[1]:
    raise ValueError(f"weights must have shape [D={embeddings.shape[1]}, C], got {shape}.")
  dtype = _checks.compute_dtype(jnp.result_type(embeddings, weights))
  x = l2_normalize(embeddings.astype(dtype))
  w = l2_normalize(jnp.asarray(weights, dtype).T).T
  cos = jnp.clip(x @ w, -1.0, 1.0)
  target = jax.nn.one_hot(labels, shape[1], dtype=dtype)
  return jnp.mean(jnp.square(cos - target))
