"""The previous ring / streaming forms, kept only as the A/B baselines of
`bench/loss_scaling.py --ring` (same values and gradients as the forms in sim_jax.losses).

NT-Xent's ring bodies here run the online (running-max) log-sum-exp, a positives pass over every
block with separate softplus and sigmoid, and a backward sweep with two transcendentals per pair
(`sim_jax.losses.infonce_streaming._nt_xent_bodies`: fixed shift, positive-free blocks skipped,
one exp per pair). Batch-hard triplet's ring bodies here mine on distances with arg-reductions
and recompute every block backward (`sim_jax.losses.triplet_streaming._batch_hard_bodies`: key
mining, one O(N D) backward tour).

CLIP here runs one online log-sum-exp sweep per direction (two forward sweeps, running max and
rescale, then two backward sweeps: 2 x (2 + 6) N^2 D = 16 N^2 D), SigLIP one forward sweep and
one backward sweep (2 + 6 = 8 N^2 D). `sim_jax.losses.two_tower` fuses them (8 and 6 N^2 D).
Same values and gradients; see the docstrings there for the formulas.

semi_hard / batch_all triplets here visit every column of a row strip as a candidate positive
(O(N^3); `bench/full_row_triplets.py` times them against the per-positive form).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.losses import sweep
from sim_jax.losses.distributed import run_bodies
from sim_jax.losses.infonce_sorted import FIXED_SHIFT_FLOOR as _FIXED_SHIFT_FLOOR
from sim_jax.losses.infonce_streaming import (
  AnchorRows,
  PositiveTerms,
  _unit_rows_and_inverse_temperature,
)
from sim_jax.losses.sweep import LogSumExp
from sim_jax.losses.triplet_streaming import (
  Hardest,
  _distance_block,
  _distance_block_vjp,
  _hardest_init,
  _keep_hardest,
  _semi_hard_select,
  _strip_bodies,
  _triplet_rows,
  _triplet_term,
)
from sim_jax.losses.two_tower import _normalized


class NegativeStats(NamedTuple):
  """NT-Xent's first pass: the negatives' running log-sum-exp and the positives' count."""
  lse: LogSumExp
  num_pos: jax.Array


def _nt_xent_bodies(sweeper):
  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    cols = sweep.side(z, labels, sweeper.index(z.shape[0]))

    def pass_negatives(st, r, c):
      logits = (r.x @ c.x.T) * inv_t
      pos, neg, _ = sweep.block_masks(r, c)
      return NegativeStats(sweep.lse_update(st.lse, logits, neg),
                           st.num_pos + jnp.sum(pos, axis=1).astype(z.dtype))

    init = NegativeStats(sweep.lse_init(z.shape[0], z.dtype), jnp.zeros(z.shape[0], z.dtype))
    st = sweeper.forward(pass_negatives, init, cols, cols)
    lse_neg = sweep.lse_value(st.lse)

    # Second pass: each positive needs the *final* negative log-sum-exp of its anchor.
    def pass_positives(acc, r, c):
      logits = (r.x @ c.x.T) * inv_t
      pos, _, _ = sweep.block_masks(r, c)
      gap = r.lse[:, None] - logits
      # l_ip = softplus(L_i - s_ip/t); sigmoid(L_i - s_ip/t) is -d l_ip / d(s_ip/t).
      return PositiveTerms(acc.loss + jnp.sum(jnp.where(pos, jax.nn.softplus(gap), 0.0), axis=1),
                           acc.weight + jnp.sum(jnp.where(pos, jax.nn.sigmoid(gap), 0.0), axis=1))

    zeros = jnp.zeros(z.shape[0], z.dtype)
    acc = sweeper.forward(pass_positives, PositiveTerms(zeros, zeros),
                          AnchorRows(*cols, lse=lse_neg), cols)
    return (acc.loss, st.num_pos), (lse_neg, acc.weight)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse_neg, w = residuals
    g = cotangents[0]
    cols = sweep.side(z, labels, sweeper.index(z.shape[0]))

    def grad_block(r, c):
      gram = r.x @ c.x.T
      logits = gram * inv_t
      pos, neg, _ = sweep.block_masks(r, c)
      lse = r.lse[:, None]
      # d num_i / d l_ip = -sigmoid(L_i - l_ip);  d num_i / d l_in = exp(l_in - L_i) * w_i.
      dl = jnp.where(pos, -jax.nn.sigmoid(lse - logits), 0.0)
      dl = dl + sweep.safe_exp_diff(logits, r.lse, neg) * r.weight[:, None]
      dl = dl * r.cotangent[:, None]
      # Row extra: each row's part of d loss / d inv_t; no column extra.
      return dl * inv_t, jnp.sum(dl * gram, axis=1), ()

    rows = AnchorRows(*cols, lse=lse_neg, weight=w, cotangent=g)
    dx_r, d_inv_t, dx_c, _ = sweeper.backward(grad_block, rows, cols)
    return (dx_r + dx_c,), (sweeper.psum(jnp.sum(d_inv_t)),)

  return fwd_local, bwd_local



def nt_xent_stats(embeddings, labels, *, temperature, block_size, mesh):
  """The previous ring NT-Xent `(num [N], den [N])` (mesh required)."""
  z, inv_t, labels = _unit_rows_and_inverse_temperature(embeddings, labels, temperature)
  return run_bodies(_nt_xent_bodies, (z,), (inv_t,), labels, block_size=block_size, mesh=mesh)


def _negatives_sum_travelling(sweeper, z, labels, inv_t):
  """NT-Xent's first pass over the ring: the negatives' log-sum-exp L_i and the positives' count.

  Unit rows give l_ij = <z_i, z_j> / t <= 1/t, so 1/t is a fixed shift for every row: one exp
  per pair and a plain sum (no running max, no rescaling). When a row's sum could have lost
  terms to float32 underflow (s_i <= N 2^-100, possible only for t < ~0.03) the exact online
  log-sum-exp pass is run instead, on every device (the flag is summed over the ring).
  """
  n = z.shape[0]
  n_total = n * getattr(sweeper, "k", 1)
  cols = sweep.side(z, labels, sweeper.index(n))

  def fixed(st, r, c):
    pos, neg, _ = sweep.block_masks(r, c)
    e = jnp.where(neg, jnp.exp((r.x @ c.x.T - 1.0) * inv_t), 0.0)
    return (st[0] + jnp.sum(e, axis=1), st[1] + jnp.sum(pos, axis=1).astype(z.dtype))

  zeros = jnp.zeros(n, z.dtype)
  total, num_pos = sweeper.forward(fixed, (zeros, zeros), cols, cols)
  has_neg = num_pos < n_total - 1   # every other valid row is a positive or a negative
  under = has_neg & (total <= n_total * _FIXED_SHIFT_FLOOR)

  def exact(_):
    def online(st, r, c):
      _, neg, _ = sweep.block_masks(r, c)
      return sweep.lse_update(st, (r.x @ c.x.T) * inv_t, neg)

    return sweep.lse_value(sweeper.forward(online, sweep.lse_init(n, z.dtype), cols, cols))

  def shifted(_):
    return jnp.where(has_neg, inv_t + jnp.log(jnp.where(has_neg, total, 1.0)), -jnp.inf)

  lse = lax.cond(sweeper.psum(jnp.sum(under)) > 0, exact, shifted, None)
  return lse, num_pos


def _softplus_and_sigmoid(gap):
  """(softplus(gap), sigmoid(gap)) from one exp: e = exp(-|gap|)."""
  e = jnp.exp(-jnp.abs(gap))
  return jnp.maximum(gap, 0.0) + jnp.log1p(e), jnp.where(gap >= 0.0, 1.0, e) / (1.0 + e)


def _nt_xent_travelling_bodies(sweeper):
  """The ring NT-Xent before the label-sorted band and the one-tour backward: a fixed-shift
  negatives pass that also counts positives, a positives pass over every block (the masks of
  all pairs, skipping the Gram block where none is positive), and a backward sweep whose
  column-side gradients (dG^T @ X_rows) travel around the ring with their chunk and come home
  on a last hop. (Its -1 / (1 + E), E = exp(l - finite_or_zero(L_i)), on positives is wrong for
  an anchor with no negative, L_i = -inf, whose gradient must be 0.)"""

  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    cols = sweep.side(z, labels, sweeper.index(z.shape[0]))
    lse_neg, num_pos = _negatives_sum_travelling(sweeper, z, labels, inv_t)

    # Second pass: each positive needs the *final* negative log-sum-exp of its anchor.
    def pass_positives(acc, r, c):
      pos, _, _ = sweep.block_masks(r, c)

      def visit(acc):
        # l_ip = softplus(L_i - s_ip/t); sigmoid(L_i - s_ip/t) is -d l_ip / d(s_ip/t).
        loss, weight = _softplus_and_sigmoid(r.lse[:, None] - (r.x @ c.x.T) * inv_t)
        return PositiveTerms(acc.loss + jnp.sum(jnp.where(pos, loss, 0.0), axis=1),
                             acc.weight + jnp.sum(jnp.where(pos, weight, 0.0), axis=1))

      return lax.cond(jnp.any(pos), visit, lambda acc: acc, acc)

    zeros = jnp.zeros(z.shape[0], z.dtype)
    acc = sweeper.forward(pass_positives, PositiveTerms(zeros, zeros),
                          AnchorRows(*cols, lse=lse_neg), cols)
    return (acc.loss, num_pos), (lse_neg, acc.weight)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse_neg, w = residuals
    g = cotangents[0]
    cols = sweep.side(z, labels, sweeper.index(z.shape[0]))

    def grad_block(r, c):
      logits = (r.x @ c.x.T) * inv_t
      pos, neg, _ = sweep.block_masks(r, c)
      # d num_i / d l_ip = -sigmoid(L_i - l_ip) = -1 / (1 + E);  d num_i / d l_in = E w_i, with
      # E = exp(l - L_i) the one exp of the pair (<= 1 on negatives; on a positive far above
      # L_i it may overflow, and -1 / (1 + inf) = 0 is the right limit).
      e = jnp.exp(logits - sweep.finite_or_zero(r.lse)[:, None])
      dl = jnp.where(pos, -1.0 / (1.0 + e), jnp.where(neg, e * r.weight[:, None], 0.0))
      return dl * (r.cotangent * inv_t)[:, None], (), ()

    rows = AnchorRows(*cols, lse=lse_neg, weight=w, cotangent=g)
    dx_r, _, dx_c, _ = sweeper.backward(grad_block, rows, cols)
    # l_ij = inv_t <z_i, z_j>: d loss / d inv_t = sum_ij dl_ij <z_i, z_j> = <z, dx_r> / inv_t,
    # O(N D) instead of a reduction over every pair.
    return (dx_r + dx_c,), (sweeper.psum(jnp.sum(z * dx_r)) / inv_t,)

  return fwd_local, bwd_local

def nt_xent_stats_travelling(embeddings, labels, *, temperature, block_size, mesh):
  """`_nt_xent_travelling_bodies`' `(num [N], den [N])` (mesh required)."""
  z, inv_t, labels = _unit_rows_and_inverse_temperature(embeddings, labels, temperature)
  return run_bodies(_nt_xent_travelling_bodies, (z,), (inv_t,), labels, block_size=block_size,
                    mesh=mesh)

class SupConStats(NamedTuple):
  """SupCon's running statistics: log-sum-exp over a != i, sum_p l_ip and |P(i)|."""
  lse: LogSumExp
  pos_logit_sum: jax.Array
  num_pos: jax.Array


def _supcon_bodies(sweeper):
  """SupCon before its fixed-shift forward and symmetric backward: an online (running-max)
  log-sum-exp forward and a backward sweep with a transposed product, whose column-side
  gradients travel the ring with their chunk."""
  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    n = z.shape[0]
    cols = sweep.side(z, labels, sweeper.index(n))

    def update(st, r, c):
      logits = (r.x @ c.x.T) * inv_t
      pos, _, others = sweep.block_masks(r, c)
      return SupConStats(sweep.lse_update(st.lse, logits, others),
                         st.pos_logit_sum + jnp.sum(jnp.where(pos, logits, 0.0), axis=1),
                         st.num_pos + jnp.sum(pos, axis=1).astype(z.dtype))

    zeros = jnp.zeros(n, z.dtype)
    st = sweeper.forward(update, SupConStats(sweep.lse_init(n, z.dtype), zeros, zeros),
                         cols, cols)
    lse = sweep.lse_value(st.lse)
    has_pos = st.num_pos > 0
    num = jnp.where(has_pos, lse - st.pos_logit_sum / jnp.maximum(st.num_pos, 1.0), 0.0)
    return (num, has_pos.astype(z.dtype)), (lse, st.num_pos)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse, n_pos = residuals
    g = jnp.where(n_pos > 0, cotangents[0], 0.0)
    cols = sweep.side(z, labels, sweeper.index(z.shape[0]))

    def grad_block(r, c):
      gram = r.x @ c.x.T
      logits = gram * inv_t
      pos, _, others = sweep.block_masks(r, c)
      # d l_i / d l_ij = softmax_ij over j != i  -  [j in P(i)] / |P(i)|.
      dl = (sweep.safe_exp_diff(logits, r.lse, others)
            - pos / jnp.maximum(r.num_pos, 1.0)[:, None])
      dl = dl * r.cotangent[:, None]
      return dl * inv_t, jnp.sum(dl * gram, axis=1), ()

    rows = AnchorRows(*cols, lse=lse, num_pos=n_pos, cotangent=g)
    dx_r, d_inv_t, dx_c, _ = sweeper.backward(grad_block, rows, cols)
    return (dx_r + dx_c,), (sweeper.psum(jnp.sum(d_inv_t)),)

  return fwd_local, bwd_local


def supcon_stats(embeddings, labels, *, temperature, block_size, mesh):
  """The previous streaming SupCon `(num [N], den [N])` (mesh None: one device)."""
  z, inv_t, labels = _unit_rows_and_inverse_temperature(embeddings, labels, temperature)
  return run_bodies(_supcon_bodies, (z,), (inv_t,), labels, block_size=block_size, mesh=mesh)

class TowerRows(NamedTuple):
  """A `sweep.Side` of one tower plus, in the backward pass, each row's statistics."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  lse: jax.Array | None = None         # CLIP: the row's log-sum-exp over all columns
  cotangent: jax.Array | None = None   # d loss / d (per-row output)


class SigLipPartials(NamedTuple):
  """Per-row parts of the gradients of SigLIP's scalar parameters."""
  scale: jax.Array
  bias: jax.Array


def _row_lse_bodies(sweeper):
  """Row-wise log sum_j exp(<a_i, b_j> * inv_t) over all columns: one sweep, custom backward."""

  def fwd_local(xs, params, labels):
    (a, b), (inv_t,) = xs, params
    rows = sweep.side(a, labels, sweeper.index(a.shape[0]))
    cols = sweep.side(b, labels, sweeper.index(b.shape[0]))

    def update(st, r, c):
      return sweep.lse_update(st, (r.x @ c.x.T) * inv_t,
                              jnp.broadcast_to(c.valid[None, :], (r.x.shape[0], c.x.shape[0])))

    st = sweeper.forward(update, sweep.lse_init(a.shape[0], a.dtype), rows, cols)
    lse = sweep.lse_value(st)
    return (lse,), (lse,)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (a, b), (inv_t,) = xs, params
    rows = TowerRows(*sweep.side(a, labels, sweeper.index(a.shape[0])), lse=residuals[0],
                     cotangent=cotangents[0])
    cols = sweep.side(b, labels, sweeper.index(b.shape[0]))

    def grad_block(r, c):
      gram = r.x @ c.x.T
      mask = jnp.broadcast_to(c.valid[None, :], gram.shape)
      # d lse_i / d l_ij = softmax_ij. Row extra: each row's part of d loss / d inv_t.
      dl = sweep.safe_exp_diff(gram * inv_t, r.lse, mask) * r.cotangent[:, None]
      return dl * inv_t, jnp.sum(dl * gram, axis=1), ()

    da, d_inv_t, db, _ = sweeper.backward(grad_block, rows, cols)
    return (da, db), (sweeper.psum(jnp.sum(d_inv_t)),)

  return fwd_local, bwd_local


def _siglip_bodies(sweeper):
  """Row-wise sum_j softplus(-z_ij (<a_i, b_j> * scale + bias)), z_ij = +1 if i == j else -1."""

  def logits_and_sign(r, c, scale, bias):
    gram = r.x @ c.x.T
    sign = jnp.where(r.index[:, None] == c.index[None, :], 1.0, -1.0).astype(gram.dtype)
    return gram, gram * scale + bias, sign

  def fwd_local(xs, params, labels):
    (a, b), (scale, bias) = xs, params
    rows = sweep.side(a, labels, sweeper.index(a.shape[0]))
    cols = sweep.side(b, labels, sweeper.index(b.shape[0]))

    def update(total, r, c):
      _, logits, sign = logits_and_sign(r, c, scale, bias)
      return total + jnp.sum(jnp.where(c.valid[None, :], jax.nn.softplus(-sign * logits), 0.0),
                             axis=1)

    total = sweeper.forward(update, jnp.zeros(a.shape[0], a.dtype), rows, cols)
    return (total,), ()

  def bwd_local(xs, params, labels, residuals, cotangents):
    (a, b), (scale, bias) = xs, params
    rows = TowerRows(*sweep.side(a, labels, sweeper.index(a.shape[0])), cotangent=cotangents[0])
    cols = sweep.side(b, labels, sweeper.index(b.shape[0]))

    def grad_block(r, c):
      gram, logits, sign = logits_and_sign(r, c, scale, bias)
      # d softplus(-z l) / d l = -z sigmoid(-z l).
      dl = jnp.where(c.valid[None, :], -sign * jax.nn.sigmoid(-sign * logits), 0.0)
      dl = dl * r.cotangent[:, None]
      return dl * scale, SigLipPartials(jnp.sum(dl * gram, axis=1), jnp.sum(dl, axis=1)), ()

    da, extra, db, _ = sweeper.backward(grad_block, rows, cols)
    return (da, db), (sweeper.psum(jnp.sum(extra.scale)), sweeper.psum(jnp.sum(extra.bias)))

  return fwd_local, bwd_local


def _streamed(bodies_fn, a, b, params, block_size, mesh):
  # Labels are unused by these kernels (the pairing is by index); int zeros keep one signature.
  labels = jnp.zeros(a.shape[0], jnp.int32)
  return run_bodies(bodies_fn, (a, b), params, labels, block_size=block_size, mesh=mesh)[0]


def clip_infonce(img_emb, txt_emb, temperature, *, block_size, mesh=None):
  """CLIP's symmetric InfoNCE, two sweeps (one per direction)."""
  a, b, dtype = _normalized(img_emb, txt_emb)
  inv_t = 1.0 / jnp.asarray(temperature, dtype)
  diag = jnp.sum(a * b, axis=1) * inv_t
  lse_i2t = _streamed(_row_lse_bodies, a, b, (inv_t,), block_size, mesh)
  lse_t2i = _streamed(_row_lse_bodies, b, a, (inv_t,), block_size, mesh)
  return 0.5 * (jnp.mean(lse_i2t - diag) + jnp.mean(lse_t2i - diag))


def siglip(img_emb, txt_emb, log_temperature, bias, *, block_size, mesh=None):
  """SigLIP's sigmoid loss, a forward sweep and a separate backward sweep."""
  a, b, dtype = _normalized(img_emb, txt_emb)
  scale = jnp.exp(jnp.asarray(log_temperature, dtype))
  per_row = _streamed(_siglip_bodies, a, b, (scale, jnp.asarray(bias, dtype)), block_size, mesh)
  return jnp.sum(per_row) / a.shape[0]


def _batch_hard_bodies(sweeper, distance, soft):
  """Blockwise batch-hard (the cross-device form): running max / min with the winning column."""

  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    cols = _triplet_rows(x, labels, sweeper.index(n))

    def update(st, r, c):
      d = _distance_block(r, c, distance)
      pos, neg, _ = sweep.block_masks(r, c)
      dp = jnp.where(pos, d, -jnp.inf)
      dn = jnp.where(neg, d, jnp.inf)
      block = Hardest(jnp.max(dp, axis=1), c.index[jnp.argmax(dp, axis=1)],
                      jnp.min(dn, axis=1), c.index[jnp.argmin(dn, axis=1)])
      return _keep_hardest(st, block)

    st = sweeper.forward(update, _hardest_init(n, x.dtype), cols, cols)
    valid = jnp.isfinite(st.pos_value) & jnp.isfinite(st.neg_value)
    z = jnp.where(valid, st.pos_value - st.neg_value, 0.0)
    loss, _ = _triplet_term(z, margin, soft)
    return (jnp.where(valid, loss, 0.0), valid.astype(x.dtype)), (z, valid, st.pos_col,
                                                                   st.neg_col)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    z, valid, pos_col, neg_col = residuals
    _, dz = _triplet_term(z, margin, soft)
    dz = jnp.where(valid, dz * cotangents[0], 0.0)
    cols = _triplet_rows(x, labels, sweeper.index(x.shape[0]))

    def grad_block(r, c):
      col_index = c.index[None, :]
      real = c.valid[None, :]
      # Only the selected hardest positive (+) and hardest negative (-) receive gradient.
      dd = r.dz[:, None] * ((real & (col_index == r.pos_col[:, None])).astype(x.dtype)
                            - (real & (col_index == r.neg_col[:, None])).astype(x.dtype))
      return _distance_block_vjp(dd, r, c, distance)   # (dG, d sq_rows, d sq_cols)

    rows = cols._replace(dz=dz, pos_col=pos_col, neg_col=neg_col)
    dx_r, dsq_r, dx_c, dsq_c = sweeper.backward(grad_block, rows, cols)
    dx = dx_r + dx_c + 2.0 * x * (dsq_r + dsq_c)[:, None]
    d_margin = jnp.zeros((), x.dtype) if soft else sweeper.psum(jnp.sum(dz))
    return (dx,), (d_margin,)

  return fwd_local, bwd_local



def triplet_stats(x, labels, *, margin, mining, distance, soft, block_size, mesh):
  """The previous ring batch-hard `(num [N], den [N])` (mesh required, mining="batch_hard")."""
  assert mining == "batch_hard" and distance != "cosine", (mining, distance)
  return run_bodies(lambda sw: _batch_hard_bodies(sw, distance, bool(soft)), (x,),
                    (jnp.asarray(margin, x.dtype),), labels, block_size=block_size, mesh=mesh)


def _semi_hard_select_column(d, pos, neg, j):
  """The semi-hard negative for the positive column j of every row (the previous form's call)."""
  return _semi_hard_select(d, d[:, j], pos[:, j], neg)


def _by_column_strip(mining, distance, soft):
  """The previous `per_strip` of `triplet_streaming._strip_bodies`: every column of the strip
  visited as a candidate positive j, the non-positives masked."""

  def per_strip(r, c, margin, g=None):
    """Forward (num, den) of a strip, or (g given) (d loss / d distances, d loss / d margin)."""
    d = _distance_block(r, c, distance)
    pos, neg, _ = sweep.block_masks(r, c)
    n_cols = d.shape[1]
    br = d.shape[0]

    def step(carry, j):
      if mining == "semi_hard":
        z, col, valid = _semi_hard_select_column(d, pos, neg, j)
        loss, dz = _triplet_term(z, margin, soft)
        if g is None:
          return (carry[0] + jnp.where(valid, loss, 0.0), carry[1] + valid), None
        dz = jnp.where(valid, dz * g, 0.0)
        dd = carry[0].at[:, j].add(dz).at[jnp.arange(br), col].add(-dz)
        return (dd, carry[1] + dz), None
      # batch_all: every negative n of the anchor against positive j.
      valid = pos[:, j][:, None] & neg
      loss, dz = _triplet_term(d[:, j][:, None] - d, margin, soft)
      if g is None:
        counted = valid if soft else valid & (loss > 0)
        return (carry[0] + jnp.sum(jnp.where(valid, loss, 0.0), axis=1),
                carry[1] + jnp.sum(counted, axis=1)), None
      dz = jnp.where(valid, dz * g[:, None], 0.0)
      dd = carry[0].at[:, j].add(jnp.sum(dz, axis=1)) - dz
      return (dd, carry[1] + jnp.sum(dz, axis=1)), None

    zeros = jnp.zeros(br, d.dtype)
    init = (zeros, zeros) if g is None else (jnp.zeros_like(d), zeros)
    out, _ = lax.scan(step, init, jnp.arange(n_cols))
    return out

  return per_strip


def triplet_stats_full_row(x, labels, *, margin, mining, distance, soft, block_size, mesh=None):
  """The previous semi_hard / batch_all streaming `(num [N], den [N])`: every column of a row
  strip visited as a candidate positive, O(N^3) (`triplet_streaming._full_row_bodies` visits
  each row's positives only)."""
  assert mining in ("semi_hard", "batch_all") and distance != "cosine", (mining, distance)
  soft = bool(soft)
  return run_bodies(
      lambda sw: _strip_bodies(sw, _by_column_strip(mining, distance, soft), distance, soft),
      (x,), (jnp.asarray(margin, x.dtype),), labels, block_size=block_size, mesh=mesh,
      full_row=True)
