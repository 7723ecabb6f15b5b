"""Streaming NT-Xent and SupCon: the per-anchor `(num [N], den [N])` of the dense cores in
`sim_jax.losses.infonce`, without the [N, N] matrix (memory O(N*D + block_size^2)).

Two forms, both exact (same value and gradient as the dense cores):

* the blockwise bodies `_nt_xent_bodies` / `_supcon_bodies`, written against the sweeper
  interface of `sim_jax.losses.sweep`: on one device (SupCon) or around a ring of devices
  (`mesh=...`, both losses; `sim_jax.losses.distributed`);
* `sim_jax.losses.infonce_sorted.sorted_bodies`, single-device NT-Xent on label-sorted rows:
  one Gram block and one exp per pair forward and backward, the positives visited only where
  they lie. Measured in-process (D = 128, CPU time of a loaded 2-core machine): loss + grad
  from ~9 to ~5 ns per pair.

`sim_jax.losses.infonce.nt_xent_stats` / `supcon_stats` choose between these and the dense
cores (`sim_jax.losses.sweep.streams`); the functions here always stream.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.losses import _checks, sweep
from sim_jax.losses.distributed import pair_sums, run_bodies, whole_chunks
from sim_jax.losses.infonce_sorted import (
  BAND_TILE,
  FIXED_SHIFT_FLOOR,
  negative_weights,
  power_of_two_scale,
  shared_exp_factors,
  sorted_bodies,
  unsort,
)
from sim_jax.numerics import l2_normalize


class AnchorRows(NamedTuple):
  """An anchor's `Side` plus its statistics, for the second forward pass and the backward pass."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  lse: jax.Array                       # [n] log-sum-exp of the anchor's denominator terms
  weight: jax.Array | None = None      # NT-Xent: w_i = sum_p sigmoid(L_i - l_ip)
  num_pos: jax.Array | None = None     # SupCon: |P(i)|
  cotangent: jax.Array | None = None   # [n] d loss / d num_i


class PositiveTerms(NamedTuple):
  """NT-Xent's second pass: sum_p l_ip and w_i = sum_p sigmoid(L_i - l_ip) (kept for the bwd)."""
  loss: jax.Array
  weight: jax.Array


class GradRows(NamedTuple):
  """NT-Xent's ring backward: label-sorted unit rows (`Side`'s fields) with their statistics."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  lse: jax.Array                # [n] L_i (-inf for a row without negatives: every pair masked)
  g: jax.Array                  # [n] d loss / d num_i
  a: jax.Array                  # [n] 2^-k w_i g_i, the negatives' coefficient of the row side
  f: jax.Array                  # [n] exp(L_i - M), the row factor of the shared exp
  h: jax.Array | None = None    # [n] the column side's coefficient (the negatives' sweep)


class SupConGradSide(NamedTuple):
  """SupCon's backward: the rows (`Side`'s fields) with L_i (0 where infinite), the cotangent,
  1 / |P(i)| and the factors exp(L_i - M) and exp(M - L_i) of the shared exp."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  lse: jax.Array
  g: jax.Array
  inv_pos: jax.Array
  up: jax.Array
  down: jax.Array


# ----------------------------------------------------------------------------------------------
# NT-Xent (pytorch-metric-learning NTXentLoss semantics), blockwise
# ----------------------------------------------------------------------------------------------

def _negatives_sum(sweeper, side, inv_t):
  """NT-Xent's first pass over the ring: the negatives' log-sum-exp L_i of the local rows.

  Unit rows give l_ij = <z_i, z_j> / t <= 1/t, so 1/t is a fixed shift for every row: one exp
  per pair and a plain sum (no running max, no rescaling). When a row's sum could have lost
  terms to float32 underflow (s_i <= N 2^-100, possible only for t < ~0.03) the exact online
  log-sum-exp pass is run instead, on every device (the flag is summed over the ring). A row
  has a negative unless its label is the only one in the global batch (O(1) collectives).
  """
  n = side.x.shape[0]

  def terms(r, c):   # symmetric in the pair
    _, neg, _ = sweep.block_masks(r, c)
    return jnp.where(neg, jnp.exp((r.x @ c.x.T - 1.0) * inv_t), 0.0)

  total = sweeper.forward_symmetric(terms, jnp.zeros(n, side.x.dtype), side)
  has_neg = ((side.label != sweeper.pmin(jnp.min(side.label)))
             | (side.label != sweeper.pmax(jnp.max(side.label))))
  return _shifted_or_exact_lse(sweeper, side, inv_t, total, has_neg, mask=1)


def _shifted_or_exact_lse(sweeper, side, inv_t, total, has_terms, mask: int):
  """L_i = 1/t + log(total_i) from the fixed-shift sums total_i = sum exp(l_ij - 1/t) (-inf
  where a row has no term), or the exact online log-sum-exp pass over the same terms on every
  device when some sum may have lost terms to float32 underflow (total_i <= N 2^-100; the flag
  is summed over the ring). `mask` picks the terms from `sweep.block_masks`: 1 negatives,
  2 every other sample."""
  n = side.x.shape[0]
  n_total = n * getattr(sweeper, "k", 1)
  under = has_terms & (total <= n_total * FIXED_SHIFT_FLOOR)

  def exact(_):
    def online(st, r, c):
      return sweep.lse_update(st, (r.x @ c.x.T) * inv_t, sweep.block_masks(r, c)[mask])

    return sweep.lse_value(sweeper.forward(online, sweep.lse_init(n, side.x.dtype), side, side))

  def shifted(_):
    return jnp.where(has_terms, inv_t + jnp.log(jnp.where(has_terms, total, 1.0)), -jnp.inf)

  return lax.cond(sweeper.psum(jnp.sum(under)) > 0, exact, shifted, None)


def _softplus_and_sigmoid(gap):
  """(softplus(gap), sigmoid(gap)) from one exp: e = exp(-|gap|)."""
  e = jnp.exp(-jnp.abs(gap))
  return jnp.maximum(gap, 0.0) + jnp.log1p(e), jnp.where(gap >= 0.0, 1.0, e) / (1.0 + e)


def _chunk_band(rows, cols, inv_t, init, body):
  """`body(logits, pos, r, c, acc)` over the column tiles of a label-sorted chunk `cols` that
  hold a positive of a row tile of the label-sorted local `rows`; returns the accumulators of
  every row ([n, ...], from `init(tile)`).

  Both sides sorted by label, a row tile's positives lie in one contiguous band of the chunk's
  columns (found by binary search), so only the column tiles meeting it are visited: with two
  views one or two per row tile, instead of the whole chunk.
  """
  n, nc = rows.x.shape[0], cols.x.shape[0]
  tile = BAND_TILE if n % BAND_TILE == 0 and nc % BAND_TILE == 0 else None
  tr, tc = (tile, tile) if tile else (n, nc)
  tiles = jax.tree.map(lambda v: v.reshape((n // tr, tr) + v.shape[1:]), rows)

  def row_tile(r):
    first = jnp.searchsorted(cols.label, r.label[0], side="left")
    last = jnp.searchsorted(cols.label, r.label[-1], side="right")
    lo = jnp.where(last > first, first // tc, 0)
    hi = jnp.where(last > first, (last - 1) // tc + 1, 0)

    def col(cb, acc):
      c = jax.tree.map(lambda v: lax.dynamic_slice_in_dim(v, cb * tc, tc), cols)
      pos = ((r.label[:, None] == c.label[None, :]) & (r.index[:, None] != c.index[None, :])
             & c.valid[None, :])
      return body((r.x @ c.x.T) * inv_t, pos, r, c, acc)

    return lax.fori_loop(lo, hi, col, init(tr))

  out = lax.map(row_tile, tiles)
  return jax.tree.map(lambda v: v.reshape((n,) + v.shape[2:]), out)


def _sorted_side(sweeper, z, labels):
  """The local rows sorted by label (stable) as a `Side` with their global indices, and the
  order (sorted position -> local row); the chunks then travel the ring sorted."""
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  return sweep.side(z[order], labels[order], sweeper.index(z.shape[0])[order]), order


def _nt_xent_bodies(sweeper):
  """NT-Xent's ring bodies on label-sorted local rows: a fixed-shift negatives pass, a positives
  pass that visits only the column tiles holding an anchor's positives (a binary search in each
  sorted chunk), and a backward with one exp per pair, each unordered pair of chunks once."""

  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    side, order = _sorted_side(sweeper, z, labels)
    lse = _negatives_sum(sweeper, side, inv_t)

    # Second pass: each positive needs the *final* negative log-sum-exp of its anchor.
    def positives(r, c):
      def body(logits, pos, rt, ct, acc):
        # l_ip = softplus(L_i - s_ip/t); sigmoid(L_i - s_ip/t) is -d l_ip / d(s_ip/t).
        loss, weight = _softplus_and_sigmoid(rt.lse[:, None] - logits)
        return (acc[0] + jnp.sum(jnp.where(pos, loss, 0.0), axis=1),
                acc[1] + jnp.sum(jnp.where(pos, weight, 0.0), axis=1),
                acc[2] + jnp.sum(pos, axis=1).astype(z.dtype))

      init = lambda t: (jnp.zeros(t, z.dtype),) * 3
      return _chunk_band(r, c, inv_t, init, body), ()

    rows = AnchorRows(*side, lse=lse)
    (loss, weight, num_pos), _ = pair_sums(whole_chunks(sweeper, z.shape[0]), positives,
                                           rows, side)
    return (unsort(loss, order), unsort(num_pos, order)), (lse, weight)

  def bwd_local(xs, params, labels, residuals, cotangents):
    # l_ij = l_ji, so the block of a device's rows j against a visiting chunk i holds both
    # d num_j / d l_ji (row side) and d num_i / d l_ij (column side, with the chunk's L_i and
    # coefficients travelling along); their per-element sum W = dl + dl^T takes one
    # [b, b] @ [b, D] product (`RingSweeper.symmetric_products`: each unordered pair of blocks
    # and of chunks once, the chunk's column sums travelling with it). On negatives one exp per
    # pair serves both sides (as `infonce_sorted.sorted_bodies`, whose comment has the bounds
    # and the 2^-k scaling; a spread of L above 40 takes two exps per pair). Positives
    # (d num_i / d l_ip = -sigmoid(L_i - l_ip) g_i) are visited in their band only, in a second
    # tour.
    (z,), (inv_t,) = xs, params
    lse, w = residuals                        # in sorted order, as `fwd_local` left them
    side, order = _sorted_side(sweeper, z, labels)
    n, d = z.shape
    g = cotangents[0][order]
    coef = w * g
    k = power_of_two_scale(coef, sweeper.pmax)
    a = jnp.ldexp(coef, -k)
    row_f, col_f, shared = shared_exp_factors(sweep.finite_or_zero(lse), jnp.isfinite(lse),
                                              sweeper.pmin, sweeper.pmax)

    def negatives(shared):
      def weights(r, c):
        _, neg, _ = sweep.block_masks(r, c)
        return negative_weights((r.x @ c.x.T) * inv_t, neg, r, c, shared)

      rows = GradRows(*side, lse=lse, g=g, a=a, f=row_f, h=col_f * a if shared else a)
      return sweeper.symmetric_products(weights, rows)

    def positives(logits, pos, rt, ct, acc):
      p_row = jnp.where(pos, jax.nn.sigmoid(rt.lse[:, None] - logits), 0.0) * rt.g[:, None]
      p_col = jnp.where(pos, jax.nn.sigmoid(ct.lse[None, :] - logits), 0.0) * ct.g[None, :]
      return acc - (p_row + p_col) @ ct.x

    def band(r, c):
      return _chunk_band(r, c, inv_t, lambda t: jnp.zeros((t, d), z.dtype), positives), ()

    rows = GradRows(*side, lse=lse, g=g, a=a, f=row_f)
    pos, _ = pair_sums(whole_chunks(sweeper, n), band, rows, rows)
    neg = lax.cond(shared, lambda _: negatives(True), lambda _: negatives(False), None)
    both = jnp.ldexp(neg, k) + pos
    dz, d_inv_t = sweep.symmetric_logit_grads(side.x, inv_t, both, sweeper.psum)
    return (unsort(dz, order),), (d_inv_t,)

  return fwd_local, bwd_local


# ----------------------------------------------------------------------------------------------
# SupCon (Khosla et al. 2020, L_out), blockwise
# ----------------------------------------------------------------------------------------------

def _supcon_bodies(sweeper):
  """SupCon's bodies (one device or the ring): a fixed-shift forward (one exp per pair; the exact
  online log-sum-exp when a sum could have underflowed) and a backward with one exp per pair and
  no transposed product (the symmetry l_ij = l_ji). Both sides' cotangents of a pair are summed
  per element into the symmetric W = dl + dl^T, so d z = inv_t W z, with each unordered pair of
  blocks and of chunks visited once (`symmetric_products`): 3 N^2 D with the Gram blocks."""

  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    n = z.shape[0]
    n_total = n * getattr(sweeper, "k", 1)
    cols = sweep.side(z, labels, sweeper.index(n))

    def terms(r, c):   # symmetric in the pair (shift 1/t >= l_ij for unit rows)
      logits = (r.x @ c.x.T) * inv_t
      pos, _, others = sweep.block_masks(r, c)
      return (jnp.where(others, jnp.exp(logits - inv_t), 0.0), jnp.where(pos, logits, 0.0),
              pos.astype(z.dtype))

    zeros = jnp.zeros(n, z.dtype)
    total, pos_logit_sum, num_pos = sweeper.forward_symmetric(terms, (zeros, zeros, zeros), cols)
    has_other = jnp.full(n, n_total > 1)
    lse = _shifted_or_exact_lse(sweeper, cols, inv_t, total, has_other, mask=2)
    has_pos = num_pos > 0
    num = jnp.where(has_pos, lse - pos_logit_sum / jnp.maximum(num_pos, 1.0), 0.0)
    return (num, has_pos.astype(z.dtype)), (lse, num_pos)

  def bwd_local(xs, params, labels, residuals, cotangents):
    # d l_i / d l_ij = p_ij - [j in P(i)] / |P(i)|, p_ij = exp(l_ij - L_i) over j != i. The block
    # of rows j against columns i holds both d l_j / d l_ji (row side) and d l_i / d l_ij
    # (column side) since l_ij = l_ji; their per-element sum W is symmetric
    # (`symmetric_products`). p_ij = p_ji exp(L_j - M) exp(M - L_i) gives the column side's
    # softmax from the row side's exp when the spread of L is <= 40 (else a second exp). Each
    # side's difference p - [pos] / |P| is formed per element: for tight classes the two terms
    # nearly cancel, and summing them apart loses float32 accuracy.
    (z,), (inv_t,) = xs, params
    lse, n_pos = residuals
    n = z.shape[0]
    g = jnp.where(n_pos > 0, cotangents[0], 0.0)
    lse_f = sweep.finite_or_zero(lse)
    up, down, shared = shared_exp_factors(lse_f, jnp.isfinite(lse), sweeper.pmin, sweeper.pmax)
    side = SupConGradSide(*sweep.side(z, labels, sweeper.index(n)), lse=lse_f, g=g,
                          inv_pos=1.0 / jnp.maximum(n_pos, 1.0), up=up, down=down)

    def weights(shared):
      def fn(r, c):
        logits = (r.x @ c.x.T) * inv_t
        pos, _, others = sweep.block_masks(r, c)
        e = jnp.where(others, jnp.exp(logits - r.lse[:, None]), 0.0)
        if shared:
          e_col = e * r.up[:, None] * c.down[None, :]
        else:
          e_col = jnp.where(others, jnp.exp(logits - c.lse[None, :]), 0.0)
        # dl_ij + dl_ji, each side's difference formed per element (see above).
        return ((e - pos * r.inv_pos[:, None]) * r.g[:, None]
                + (e_col - pos * c.inv_pos[None, :]) * c.g[None, :])

      return fn

    both = lax.cond(shared, lambda _: sweeper.symmetric_products(weights(True), side),
                    lambda _: sweeper.symmetric_products(weights(False), side), None)
    dz, d_inv_t = sweep.symmetric_logit_grads(z, inv_t, both, sweeper.psum)
    return (dz,), (d_inv_t,)

  return fwd_local, bwd_local


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

def _check_streaming(embeddings, labels, temperature, block_size, mesh):
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  if block_size is None and mesh is None:
    raise ValueError("block_size must be a positive int for the streaming form, got None; "
                     "use the dense core (block_size=None in the public loss) instead.")
  _checks.check_block_size(block_size)
  _checks.check_scalar(temperature, "temperature")
  _checks.check_positive(temperature, "temperature")


def _unit_rows_and_inverse_temperature(embeddings, labels, temperature):
  dtype = _checks.compute_dtype(embeddings.dtype)
  z = l2_normalize(embeddings.astype(dtype))
  inv_t = 1.0 / jnp.asarray(temperature, dtype)
  return z, inv_t, jnp.asarray(labels).astype(jnp.int32)


def nt_xent_stats_streaming(embeddings, labels, *, temperature, block_size, mesh=None):
  """Streaming per-anchor NT-Xent terms `(num [N], den [N])`, equal to `nt_xent_stats_dense`.

  s_ij = <z_i, z_j> with z = x / max(|x|, 1e-12); for each positive pair (i, p), p != i,
  y_p == y_i:  l_ip = softplus(L_i - s_ip/t),  L_i = log sum_{n: y_n != y_i} exp(s_in/t)
  (pytorch-metric-learning NTXentLoss; l_ip = 0 when i has no negative). num_i = sum_p l_ip,
  den_i = #positives of i.

  Gradient: d num_i / d(s_ip/t) = -sigmoid(L_i - s_ip/t),  d num_i / d(s_in/t) =
  exp(s_in/t - L_i) w_i with w_i = sum_p sigmoid(L_i - s_ip/t), so no exp(s/t) ever overflows,
  even at t = 0.01.

  Single device (mesh=None): the rows are sorted by label once (O(N log N) + an O(N D) gather),
  so that each anchor's positives form a contiguous band [start_i, end_i) of columns, and 1/t is
  folded into the row copy q = z/t. The negatives' sweep then costs one Gram block and one exp
  per unordered pair (l_in = l_ni: block (r, c) gives rows r their row sums and rows c their
  column sums, `sweep.symmetric_forward_sweep`): L_i = M + log sum_n exp(l_in - M) with the
  fixed shift M = max_i |q_i| >= l_in (unit columns) needs no running max (a second pass over
  every block); rows whose sum could have lost
  terms to float32 underflow (only possible for t < ~0.023) are redone exactly by the two-pass
  online log-sum-exp. The positive terms visit only the 128-wide column tiles meeting a row
  tile's band. The backward sweep uses the symmetry l_ij = l_ji: a block of rows i against
  columns j holds both d num_i / d l_ij and d num_j / d l_ji, whose per-element sum takes one
  product with the columns z_j (no transposed product), one exp per pair serves both sides
  when the spread of L is <= 40, and the temperature gradient is
  (1/2) sum_i <z_i, sum_j (dl_ij + dl_ji) z_j>, O(N D) instead of a reduction over every pair.
  Across devices (mesh given) two forward sweeps and one backward sweep run over the ring.

  Args:
    embeddings: [N, D] float; labels: [N] int; temperature: scalar > 0 (may be traced, and is
      differentiated); block_size: rows/columns per block (need not divide N; None only with a
      mesh: N / #shards); mesh: optional Mesh whose "data" axis shards the batch (ring over
      devices, global-batch negatives).
  Returns float32 (float64 for float64 inputs) arrays num [N], den [N].
  Memory: O(N*D + block_size^2) per device for loss and gradient.
  """
  _check_streaming(embeddings, labels, temperature, block_size, mesh)
  z, inv_t, labels = _unit_rows_and_inverse_temperature(embeddings, labels, temperature)
  if mesh is None:
    fwd_local, bwd_local = sorted_bodies(block_size)
    return sweep.custom_loss(fwd_local, bwd_local)((z,), (inv_t,), labels)
  return run_bodies(_nt_xent_bodies, (z,), (inv_t,), labels, block_size=block_size, mesh=mesh)


def supcon_stats_streaming(embeddings, labels, *, temperature, block_size, mesh=None):
  """Streaming per-anchor SupCon (L_out) terms `(num [N], den [N])`, = `supcon_stats_dense`.

  l_i = log sum_{a != i} exp(s_ia/t) - (1/|P(i)|) sum_{p in P(i)} s_ip/t  (Khosla et al. 2020,
  L_out), s = cosine similarity (norms clamped at 1e-12); num_i = l_i, den_i = 1 for anchors with
  P(i) non-empty, num_i = den_i = 0 otherwise. One forward sweep and one backward sweep
  (d l_i / d(s_ij/t) = softmax_ij - [j in P(i)]/|P(i)|), on one device or over the ring. The
  forward's sums are symmetric in the pair, so each unordered pair of a device's own blocks is
  visited once (`sweep.symmetric_forward_sweep`).
  (The label-sorted form of `nt_xent_stats_streaming` with the positive part as O(N D) class
  sums ran 1.4x faster at N = 8192 but, for tight classes, its separately accumulated softmax and
  class-mean terms cancel in float32: gradient errors up to 3.6e-4 of the largest entry against
  float64 where dense and this form stay below 6e-5.)
  Arguments and memory as `nt_xent_stats_streaming`.
  """
  _check_streaming(embeddings, labels, temperature, block_size, mesh)
  z, inv_t, labels = _unit_rows_and_inverse_temperature(embeddings, labels, temperature)
  return run_bodies(_supcon_bodies, (z,), (inv_t,), labels, block_size=block_size, mesh=mesh)
