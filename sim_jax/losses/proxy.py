"""Proxy losses: each class is a learnt proxy (or K centres) that the embeddings are pulled to.

With x_i the L2-normalised embedding, p_c the L2-normalised proxy of class c, c_ic = <x_i, p_c>
the cosine (norms clamped at 1e-12), P+ the classes present in the batch, X_c+ the anchors of
class c and X_c- the others:

  proxy_nca     l_i = -log softmax_c(-s |x_i - p_c|^2)[y_i] = lse_c(2 s c_ic) - 2 s c_iy
                (Movshovitz-Attias et al. 2017, with the positive proxy in the denominator as
                ProxyNCA++ and pytorch-metric-learning `ProxyNCALoss`; mean over anchors)
  proxy_anchor  L = 1/|P+| sum_{c in P+} log(1 + sum_{i in X_c+} e^{-alpha (c_ic - delta)})
                  + 1/C    sum_c        log(1 + sum_{i in X_c-} e^{alpha (c_ic + delta)})
                (Kim et al., CVPR 2020, eq. 4; pml `ProxyAnchorLoss`)
  soft_triple   S_ic = sum_k softmax_k(c_ick / gamma) c_ick,
                l_i = -log softmax_c(lambda (S_ic - delta [c = y_i]))[y_i]
                  + tau * sum_c sum_{k < k'} sqrt(2 + 1e-5 - 2 <p_ck, p_ck'>) / (C K (K - 1))
                (Qian et al., ICCV 2019, eq. 9-10; the regulariser as the authors' code; pml
                `SoftTripleLoss` has no regulariser, i.e. tau = 0, the default here)

ProxyNCA and ProxyAnchor take `block_size`: the classes are visited in blocks of that many
proxies (a `lax.scan` whose body is rematerialised), so memory is O(N block_size + C D) rather
than O(N C), with the dense value and gradient (online log-sum-exp over class blocks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks
from sim_jax.losses.margin_softmax import (
  check_class_inputs,
  class_cosines,
  compute_dtype,
  cross_entropy,
)
from sim_jax.numerics import l2_normalize


def _normalized(embeddings, proxies):
  dtype = compute_dtype(embeddings, proxies)
  return l2_normalize(jnp.asarray(embeddings, dtype)), l2_normalize(jnp.asarray(proxies, dtype))


def class_blocks(proxies: jax.Array, block_size: int):
  """Proxies [C, D] as [nb, block_size, D] blocks (zero rows pad the last one), their class ids
  [nb, block_size] and a validity mask [nb, block_size]."""
  c, d = proxies.shape
  nb = -(-c // block_size)
  pad = nb * block_size - c
  blocks = jnp.pad(proxies, ((0, pad), (0, 0))).reshape(nb, block_size, d)
  ids = jnp.arange(nb * block_size).reshape(nb, block_size)
  return blocks, ids, ids < c


def _lse_over_class_blocks(logits_fn, blocks, valid, n: int, dtype) -> jax.Array:
  """logsumexp_c f_ic [N] with f of one block = logits_fn(block [b, D]) [N, b], one block at a
  time: a running max m_i (no gradient: the result does not depend on it) and sum of e^{f - m}."""
  low = jnp.finfo(dtype).min

  @jax.checkpoint
  def body(carry, blk):
    m, s = carry
    w, ok = blk
    f = jnp.where(ok[None, :], logits_fn(w), low)
    m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(f, axis=1)))
    s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(f - m_new[:, None]), axis=1)
    return (m_new, s), None

  init = (jnp.full((n,), low, dtype), jnp.zeros((n,), dtype))
  (m, s), _ = jax.lax.scan(body, init, (blocks, valid))
  return m + jnp.log(s)


def proxy_nca(embeddings: jax.Array, labels: jax.Array, proxies: jax.Array, scale=1.0,
              block_size=None, reduction: str = "mean") -> jax.Array:
  """ProxyNCA: softmax over the negative squared distances to every class proxy.

    l_i = -log( e^{-s |x_i - p_y|^2} / sum_c e^{-s |x_i - p_c|^2} ),  |x - p|^2 = 2 - 2 c_ic

  Args:
    embeddings: [N, D]; labels: [N] class ids in [0, C); proxies: [C, D].
    scale: s > 0, pml's `softmax_scale` (1).
    block_size: None (dense [N, C]) or a positive int: classes in blocks of that many.
    reduction: "mean" (over N), "sum" or "none" ([N]).
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  check_class_inputs(embeddings, labels, proxies, weights_ndim=2, name="proxies")
  _checks.check_block_size(block_size)
  _checks.check_scalar(scale, "scale")
  _checks.check_positive(scale, "scale")
  x, p = _normalized(embeddings, proxies)
  c = p.shape[0]
  if block_size is None or block_size >= c:
    return cross_entropy(2 * scale * (x @ p.T), labels, reduction)
  blocks, _, valid = class_blocks(p, block_size)
  lse = _lse_over_class_blocks(lambda w: 2 * scale * (x @ w.T), blocks, valid, x.shape[0],
                               x.dtype)
  # An out-of-range label (only possible under jit) gives NaN, as the dense form's gather does.
  target = p.at[jnp.asarray(labels)].get(mode="fill", fill_value=jnp.nan)
  picked = 2 * scale * jnp.sum(x * target, axis=1)
  return _checks.reduce_elements(lse - picked, reduction)


def _log1p_sum_exp(a: jax.Array, mask: jax.Array) -> jax.Array:
  """log(1 + sum_i mask_i e^{a_i}) over axis 0, shifted by max(0, max a) for stability."""
  low = jnp.finfo(a.dtype).min
  a = jnp.where(mask, a, low)
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(a, axis=0), 0.0))
  return m + jnp.log(jnp.exp(-m) + jnp.sum(jnp.where(mask, jnp.exp(a - m), 0.0), axis=0))


def _proxy_anchor_terms(x, w, ids, valid, labels, margin, alpha):
  """For the proxies w [b, D] of classes `ids` [b]: (sum of positive terms, sum of negative
  terms, number of those classes present in `labels`)."""
  cos = x @ w.T
  same = jnp.asarray(labels)[:, None] == ids[None, :]
  pos = _log1p_sum_exp(-alpha * (cos - margin), same)
  neg = _log1p_sum_exp(alpha * (cos + margin), ~same & valid[None, :])
  present = jnp.any(same, axis=0)
  return jnp.sum(pos), jnp.sum(neg), jnp.sum(present.astype(x.dtype))


def proxy_anchor(embeddings: jax.Array, labels: jax.Array, proxies: jax.Array, margin=0.1,
                 alpha=32.0, block_size=None) -> jax.Array:
  """Proxy-Anchor loss (Kim et al., CVPR 2020), a scalar:

    1/|P+| sum_{c in P+} log(1 + sum_{i: y_i = c} e^{-alpha (c_ic - delta)})
      + 1/C sum_c log(1 + sum_{i: y_i != c} e^{alpha (c_ic + delta)})

  Args:
    embeddings: [N, D]; labels: [N] class ids in [0, C); proxies: [C, D].
    margin: delta >= 0 (paper and pml 0.1); alpha: > 0 (paper and pml 32).
    block_size: None (dense [N, C]) or a positive int: classes in blocks of that many.
  """
  check_class_inputs(embeddings, labels, proxies, weights_ndim=2, name="proxies")
  _checks.check_block_size(block_size)
  for name, v in (("margin", margin), ("alpha", alpha)):
    _checks.check_scalar(v, name)
  _checks.check_non_negative(margin, "margin")
  _checks.check_positive(alpha, "alpha")
  x, p = _normalized(embeddings, proxies)
  c = p.shape[0]
  if block_size is None or block_size >= c:
    ids = jnp.arange(c)
    pos, neg, present = _proxy_anchor_terms(x, p, ids, ids < c, labels, margin, alpha)
  else:
    blocks, ids, valid = class_blocks(p, block_size)

    @jax.checkpoint
    def body(carry, blk):
      return tuple(a + b for a, b in zip(
          carry, _proxy_anchor_terms(x, *blk, labels, margin, alpha))), None

    zero = jnp.zeros((), x.dtype)
    (pos, neg, present), _ = jax.lax.scan(body, (zero, zero, zero), (blocks, ids, valid))
  return pos / jnp.maximum(present, 1) + neg / c


def soft_triple(embeddings: jax.Array, labels: jax.Array, centers: jax.Array, la=20.0, gamma=0.1,
                margin=0.01, tau=0.0, reduction: str = "mean") -> jax.Array:
  """SoftTriple loss (Qian et al., ICCV 2019): K centres per class, relaxed to one similarity
  S_ic = sum_k softmax_k(c_ick / gamma) c_ick, then a softmax with margin delta and scale lambda
  (formula in the module docstring).

  Args:
    embeddings: [N, D]; labels: [N] class ids in [0, C); centers: [C, K, D] (pml's `fc`
      [D, C*K], column c*K + k, transposed and reshaped).
    la: lambda > 0 (20); gamma: > 0 (0.1; pml stores 1/gamma); margin: delta >= 0 (0.01).
    tau: >= 0, weight of the centre regulariser (paper 0.2; pml none, 0). Added once to the
      reduced loss, so it needs reduction "mean" or "sum".
    reduction: "mean" (over N), "sum" or "none" ([N], tau = 0 only).
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  check_class_inputs(embeddings, labels, centers, weights_ndim=3, name="centers")
  for name, v in (("la", la), ("gamma", gamma), ("margin", margin), ("tau", tau)):
    _checks.check_scalar(v, name)
  _checks.check_positive(la, "la")
  _checks.check_positive(gamma, "gamma")
  _checks.check_non_negative(margin, "margin")
  _checks.check_non_negative(tau, "tau")
  if reduction == "none" and not (isinstance(tau, (int, float)) and tau == 0):
    raise ValueError(f"tau={tau!r}: the centre regulariser is one scalar for the batch; use "
                     f"reduction='mean' or 'sum' with tau > 0.")
  cos = class_cosines(embeddings, centers)  # [N, C, K]
  sim = jnp.sum(jax.nn.softmax(cos / gamma, axis=2) * cos, axis=2)
  onehot = jnp.arange(sim.shape[1])[None, :] == jnp.asarray(labels)[:, None]
  loss = cross_entropy(la * (sim - margin * onehot), labels, reduction)
  k = np.shape(centers)[1]
  if reduction == "none" or k < 2:
    return loss
  w = l2_normalize(jnp.asarray(centers, cos.dtype))
  gram = jnp.einsum("ckd,cjd->ckj", w, w)
  upper = np.triu(np.ones((k, k), bool), 1)
  reg = jnp.sum(jnp.where(upper, jnp.sqrt(jnp.where(upper, 2.0 + 1e-5 - 2.0 * gram, 1.0)), 0.0))
  return loss + tau * reg / (np.shape(centers)[0] * k * (k - 1))
