"""Single-device streaming NT-Xent on label-sorted rows: one Gram block and one exp per pair
forward and backward, the positives visited only in the band of columns that holds them.

`sim_jax.losses.infonce_streaming.nt_xent_stats_streaming` uses `sorted_bodies` without a mesh
(its docstring states the formulas); the ring forms there share this module's constants.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.losses import sweep

# ----------------------------------------------------------------------------------------------
# Single-device NT-Xent: one exp per pair, positives visited only where they can be
# ----------------------------------------------------------------------------------------------

# A row's fixed-shift sum s_i = sum_n exp(l_in - |q_i|) is trusted when s_i > n * 2^-100: every
# term it may have lost to float32 underflow (flush-to-zero below 2^-126) then changes it by less
# than 2^-26 relative. Below that (possible only for t < ~0.023 or zero rows), the exact two-pass
# online log-sum-exp is run instead.
FIXED_SHIFT_FLOOR = 2.0 ** -100
# Largest spread max L - min L of the negatives' log-sum-exps for which the backward pass derives
# the column-side softmax from the row-side one (see `sorted_bodies`).
SHARED_EXP_SPREAD = 40.0
# Tile of the positives' band sweep when it divides block_size (else block_size itself).
BAND_TILE = 128


class LabelLayout(NamedTuple):
  """The rows of the single-device NT-Xent sorted by label and zero-padded to `npad` rows.

  In sorted order anchor i's class occupies the columns [start_i, end_i). Arrays are in sorted
  order; the sizes are Python ints (static under jit).
  """
  n: int                 # rows
  d: int                 # embedding size
  block: int             # rows / columns per sweep block: min(block_size, n)
  num_blocks: int        # npad / block
  npad: int              # rows after padding to a multiple of `block`
  padded: bool           # npad != n: the padding columns must be masked
  order: jax.Array       # [n] int32: sorted position -> original row (stable argsort)
  start: jax.Array       # [n] int32: first sorted column of each sorted row's class
  end: jax.Array         # [n] int32: one past its last
  z: jax.Array           # [npad, D] sorted unit embeddings
  q: jax.Array           # [npad, D] z / t
  labels: jax.Array      # [npad] sorted labels
  valid: jax.Array       # [npad] bool: real rows
  index: jax.Array       # [npad] int32 sorted positions
  band_tile: int         # tile of the positives' band sweep
  num_band_tiles: int    # npad / band_tile


class BandRows(NamedTuple):
  """Row data of the positives' band sweep ([npad] flat, [tiles, tile] once tiled)."""
  q: jax.Array
  label: jax.Array
  lse: jax.Array                       # L_i, the negatives' log-sum-exp
  cotangent: jax.Array | None = None   # backward: d loss / d num_i
  tile: jax.Array | None = None        # set by `_band`: the row tile's number
  lo: jax.Array | None = None          # set by `_band`: first column tile with a positive
  hi: jax.Array | None = None          # set by `_band`: one past the last


class BandCols(NamedTuple):
  """Column data of the positives' band sweep (flat [npad]; sliced to one tile per visit)."""
  z: jax.Array
  label: jax.Array
  valid: jax.Array
  lse: jax.Array | None = None         # backward only
  cotangent: jax.Array | None = None   # backward only


class GradSide(NamedTuple):
  """The negatives' backward sweep: the sorted rows (`sweep.Side`'s fields, x = z) with q = z / t
  and the statistics of `sorted_bodies`' backward ([npad] each)."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  q: jax.Array
  lse: jax.Array     # L_i (0 for a row without negatives)
  a: jax.Array       # 2^-k w_i g_i
  f: jax.Array       # exp(L_i - M)
  h: jax.Array       # the column side's coefficient: exp(M - L_i) a_i (shared exp) or a_i


def shared_exp_factors(lse, finite, pmin=lambda x: x, pmax=lambda x: x):
  """(exp(L_i - M), exp(M - L_i), shared) for the backward's one exp per pair.

  exp(l_ij - L_j) = exp(L_i - M) exp(l_ij - L_i) exp(M - L_j) gives the column side's softmax
  from the row side's exp. M is the mid-point of the finite L's range (over every device:
  `pmin` / `pmax`), so the factors stay within e^+-20, and `shared` says whether that range is
  at most SHARED_EXP_SPREAD (else two exps per pair are taken). `lse`: L with 0 where infinite.
  """
  lo = pmin(jnp.min(jnp.where(finite, lse, jnp.inf)))
  hi = pmax(jnp.max(jnp.where(finite, lse, -jnp.inf)))
  mid = jnp.where(hi >= lo, 0.5 * (lo + hi), 0.0)
  return (jnp.exp(jnp.clip(lse - mid, -80.0, 80.0)), jnp.exp(jnp.clip(mid - lse, -80.0, 80.0)),
          hi - lo <= SHARED_EXP_SPREAD)


def power_of_two_scale(coef, pmax=lambda x: x):
  """k with 2^k <= max |coef| < 2^(k+1) (0 when every coef is 0), over every device (`pmax`)."""
  cmax = pmax(jnp.max(jnp.abs(coef)))
  k = jnp.where(cmax > 0, jnp.floor(jnp.log2(jnp.where(cmax > 0, cmax, 1.0))), 0.0)
  return k.astype(jnp.int32)


def negative_weights(logits, neg, r, c, shared: bool):
  """dl_ij + dl_ji of NT-Xent's negatives in a block of rows r against columns c (fields lse,
  a = 2^-k w g, f = exp(L - M), h): e_ij (a_i + f_i h_j) with e_ij = exp(l_ij - L_i) and
  h = exp(M - L) a when `shared`, else e_ij a_i + exp(l_ij - L_j) h_j with h = a."""
  e = jnp.where(neg, jnp.exp(logits - r.lse[:, None]), 0.0)
  if shared:
    return e * (r.a[:, None] + r.f[:, None] * c.h[None, :])
  return e * r.a[:, None] + jnp.where(neg, jnp.exp(logits - c.lse[None, :]), 0.0) * c.h[None, :]


def _label_layout(labels):
  """Stable sort by label; in sorted order anchor i's class occupies columns [start_i, end_i)."""
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  ys = labels[order]
  start = jnp.searchsorted(ys, ys, side="left").astype(jnp.int32)
  end = jnp.searchsorted(ys, ys, side="right").astype(jnp.int32)
  return order, ys, start, end


def unsort(values, order):
  return jnp.zeros_like(values).at[order].set(values)


def _band_bounds(start, end, n, bs, nb):
  """First / one-past-last column block holding a positive of any row of each row block."""
  first = jnp.arange(nb, dtype=jnp.int32) * bs
  last = jnp.minimum(first + bs, n) - 1
  return start[first] // bs, (end[last] - 1) // bs + 1


def _layout(z, labels, inv_t, block_size: int) -> LabelLayout:
  n, d = z.shape
  bs = min(block_size, n)
  nb = -(-n // bs)
  npad = nb * bs
  order, ys, start, end = _label_layout(labels)
  pad = lambda a: jnp.pad(a, [(0, npad - n)] + [(0, 0)] * (a.ndim - 1))
  zs = pad(z[order])
  # The band sweep uses its own, smaller tile: a class of k members costs about k + tile
  # columns per row instead of k + block_size.
  bt = BAND_TILE if bs % BAND_TILE == 0 else bs
  return LabelLayout(n=n, d=d, block=bs, num_blocks=nb, npad=npad, padded=npad != n,
                     order=order, start=start, end=end, z=zs, q=zs * inv_t, labels=pad(ys),
                     valid=jnp.arange(npad) < n, index=jnp.arange(npad, dtype=jnp.int32),
                     band_tile=bt, num_band_tiles=npad // bt)


def _lse_mask(lay: LabelLayout, r, c):
  """The log-sum-exp's terms of a block: the negatives (another label).

  r = (labels, indices) of the rows, c = (labels, indices, valid) of the columns."""
  mask = r[0][:, None] != c[0][None, :]
  return mask & c[2][None, :] if lay.padded else mask


def _has_negatives(lay: LabelLayout):
  """[n] whether each sorted row has a negative (its class is not the whole batch)."""
  return (lay.end - lay.start) < lay.n


def _blocks(lay: LabelLayout, *arrays):
  return tuple(a.reshape((lay.num_blocks, lay.block) + a.shape[1:]) for a in arrays)


def _negatives_lse(lay: LabelLayout):
  """L_i = log sum_{j in mask} exp(l_ij): one Gram block and one exp per unordered pair.

  Fixed shift: M = max_i |q_i| >= l_ij for unit columns (= 1/t unless a row is zero), so
  L_i = M + log s_i needs no running max, and one shift for every row lets block (r, c) serve
  rows r by its row sums and rows c by its column sums (l_ij = l_ji and the mask is symmetric:
  `sweep.LocalSweeper.forward_symmetric`).
  """
  shift = jnp.max(jnp.sqrt(jnp.sum(lay.q * lay.q, axis=1)))

  def terms(r, c):
    q_r, _, y_r, _ = r
    _, z_c, y_c, v_c = c
    return jnp.where(_lse_mask(lay, (y_r, None), (y_c, None, v_c)),
                     jnp.exp(q_r @ z_c.T - shift), 0.0)

  s = sweep.LocalSweeper(lay.block, lay.block).forward_symmetric(
      terms, jnp.zeros(lay.npad, lay.q.dtype), (lay.q, lay.z, lay.labels, lay.valid))[:lay.n]
  has_neg = _has_negatives(lay)
  fixed = jnp.where(has_neg, shift + jnp.log(jnp.where(has_neg, s, 1.0)), -jnp.inf)
  bs, npad = lay.block, lay.npad
  cols = _blocks(lay, lay.z, lay.labels, lay.index, lay.valid)

  def exact(_):
    def exact_row(r):
      q_r, y_r, i_r = r

      def col(st, c):
        return sweep.lse_update(st, q_r @ c[0].T, _lse_mask(lay, (y_r, i_r), c[1:])), None

      return sweep.lse_value(lax.scan(col, sweep.lse_init(bs, q_r.dtype), cols)[0])

    rows = _blocks(lay, lay.q, lay.labels, lay.index)
    return lax.map(exact_row, rows).reshape(npad)[:lay.n]

  underflow = has_neg & (s <= lay.n * FIXED_SHIFT_FLOOR)
  return lax.cond(jnp.any(underflow), exact, lambda _: fixed, None)


def _band(lay: LabelLayout, rows: BandRows, cols: BandCols, init, body):
  """`body(logits, pos, r, c, carry)` on the column tiles c holding row tile r's positives.

  In label-sorted order the positives of a row tile lie in one contiguous band of columns, so
  only the (usually one or two) column tiles meeting that band are visited. `r` and `c` are the
  row tile's / column tile's slices of `rows` / `cols` (flat [npad]).
  Returns (row_step(carry, r), tiled rows) for `lax.map` / `lax.scan`.
  """
  bs, nb = lay.band_tile, lay.num_band_tiles   # band tiles (see `_layout`), not the sweep blocks
  lo, hi = _band_bounds(lay.start, lay.end, lay.n, bs, nb)
  idx = jnp.arange(bs, dtype=jnp.int32)

  def row_step(carry, r):
    def col(cb, inner):
      c = jax.tree.map(lambda v: lax.dynamic_slice_in_dim(v, cb * bs, bs), cols)
      logits = r.q @ c.z.T
      pos = (r.label[:, None] == c.label[None, :]) & ((r.tile * bs + idx)[:, None]
                                                      != (cb * bs + idx)[None, :])
      if lay.padded:
        pos = pos & c.valid[None, :]
      return body(logits, pos, r, c, inner)

    return lax.fori_loop(r.lo, r.hi, col, init(carry, r))

  tiles = jax.tree.map(lambda v: v.reshape((nb, bs) + v.shape[1:]), rows)
  return row_step, tiles._replace(tile=jnp.arange(nb, dtype=jnp.int32), lo=lo, hi=hi)


def sorted_bodies(block_size: int):
  """fwd / bwd bodies of the single-device NT-Xent on label-sorted rows (see
  `nt_xent_stats_streaming`).

  The log-sum-exp runs over the negatives; the positive terms visit only the band of columns
  holding the anchor's class. (SupCon keeps the blockwise `_supcon_bodies`: its softmax and
  positive terms nearly cancel for tight classes, and only a per-element difference
  p_ij - [j in P(i)]/|P(i)| inside one block keeps float32 gradients as accurate as dense.)
  """

  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    lay = _layout(z, labels, inv_t, block_size)
    n, npad = lay.n, lay.npad
    lse = _negatives_lse(lay)
    lse_pad = jnp.pad(lse, (0, npad - n))
    n_pos = (lay.end - lay.start - 1).astype(z.dtype)
    order = lay.order

    def body(logits, pos, r, c, acc):
      gap = r.lse[:, None] - logits
      # l_ip = softplus(L_i - l_ip); sigmoid(L_i - l_ip) = -d l_ip / d l_ip (kept for the bwd).
      return (acc[0] + jnp.sum(jnp.where(pos, jax.nn.softplus(gap), 0.0), axis=1),
              acc[1] + jnp.sum(jnp.where(pos, jax.nn.sigmoid(gap), 0.0), axis=1))

    zeros = lambda carry, r: (jnp.zeros(lay.band_tile, z.dtype),
                              jnp.zeros(lay.band_tile, z.dtype))
    row_step, rows = _band(lay, BandRows(lay.q, lay.labels, lse_pad),
                           BandCols(lay.z, lay.labels, lay.valid), zeros, body)
    a, w = lax.map(lambda r: row_step(None, r), rows)
    a, w = a.reshape(npad)[:n], w.reshape(npad)[:n]
    return (unsort(a, order), unsort(n_pos, order)), (lse, w)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse, w = residuals
    lay = _layout(z, labels, inv_t, block_size)
    n, d, bs, npad = lay.n, lay.d, lay.block, lay.npad
    pad = lambda a: jnp.pad(a, (0, npad - n))
    g = pad(cotangents[0][lay.order])
    lse_f = pad(sweep.finite_or_zero(lse))
    coef = pad(w) * g
    q = lay.q

    # d num_i / d l_ij is  exp(l_ij - L_i) w_i g_i  on negatives and  -sigmoid(L_i - l_ij) g_i
    # on positives. Since l is symmetric (l_ij = inv_t <z_i, z_j>), d loss / d z_i =
    # inv_t sum_j (dl_ij + dl_ji) z_j: the block of rows i against columns j holds both
    # cotangents, and their per-element sum W takes one [bs, bs] @ [bs, D] product, the same
    # columns z_j serving both sides. W is symmetric, so each unordered pair of blocks is
    # visited once (`sweep.symmetric_products`).
    # One exp per pair gives both sides' softmax (`shared_exp_factors`): dl_ij + dl_ji =
    # e_ij (c_i + exp(L_i - M) exp(M - L_j) c_j) with c = w g. A flushed exp(l - L_i) < 2^-126
    # errs by < 2^-126 e^40 (absolute) when the spread of L is <= 40, always the case for
    # t >= 0.06; otherwise two exps per pair are taken.
    # The coefficients c are ~1e-28 once the positives dominate (a converged batch at small t);
    # times the softmax values and the e^+-20 factors, the products would then fall into
    # float32's flushed-to-zero denormal range. Scaling them by 2^-k, with 2^k about their
    # largest magnitude, is exact and is undone on the result.
    k = power_of_two_scale(coef)
    a = jnp.ldexp(coef, -k)
    has_neg = jnp.pad(_has_negatives(lay), (0, npad - n))
    row_f, col_f, shared = shared_exp_factors(lse_f, has_neg)

    def negatives(shared):
      def weights(r, c):
        neg = _lse_mask(lay, (r.label, r.index), (c.label, c.index, c.valid))
        return negative_weights(r.q @ c.x.T, neg, r, c, shared)

      side = GradSide(lay.z, lay.labels, lay.index, lay.valid, q, lse_f, a, row_f,
                      col_f * a if shared else a)
      return sweep.LocalSweeper(bs, bs).symmetric_products(weights, side)

    neg = lax.cond(shared, lambda _: negatives(True), lambda _: negatives(False), None)

    def body(logits, pos, r, c, acc):
      p_row = jnp.where(pos, jax.nn.sigmoid(r.lse[:, None] - logits), 0.0) * r.cotangent[:, None]
      p_col = jnp.where(pos, jax.nn.sigmoid(c.lse[None, :] - logits), 0.0) * c.cotangent[None, :]
      return acc - (p_row + p_col) @ c.z

    zeros = lambda carry, r: jnp.zeros((lay.band_tile, d), z.dtype)
    lse_p = pad(lse)
    row_step, rows = _band(lay, BandRows(q, lay.labels, lse_p, cotangent=g),
                           BandCols(lay.z, lay.labels, lay.valid, lse=lse_p, cotangent=g),
                           zeros, body)
    pos = lax.map(lambda r: row_step(None, r), rows)
    both = jnp.ldexp(neg, k) + pos.reshape(npad, d)
    dz_sorted, d_inv_t = sweep.symmetric_logit_grads(lay.z, inv_t, both)
    return (unsort(dz_sorted[:n], lay.order),), (d_inv_t,)

  return fwd_local, bwd_local
