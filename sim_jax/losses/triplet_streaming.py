"""Streaming triplet loss: the per-anchor `(num [N], den [N])` of
`sim_jax.losses.triplet.triplet_stats_dense` without the [N, N] distance matrix.

* batch_hard: running max / min with the winning column over column blocks (memory
  O(N*D + block_size^2)); on one device it mines on a monotone key with plain reductions and has
  an O(N D) backward (`_batch_hard_local_bodies`, ~5x faster than the blockwise sweep measured
  in-process, D = 128, on a loaded 2-core machine); across devices `_batch_hard_bodies` mine the
  same way around the ring (`sim_jax.losses.distributed`) and make one O(N D) backward tour.
* semi_hard and batch_all need an anchor's complete row of distances: row strips of
  `block_size` anchors against the full row (memory O(N*D + N*block_size)), every row's
  positives taken one at a time (`_full_row_bodies`: O(N^2 M) for at most M positives per row).

`sim_jax.losses.triplet.triplet` chooses between these and the dense core
(`sim_jax.losses.sweep.streams`); `triplet_stats_streaming` always streams.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.losses import _checks, distributed, sweep
from sim_jax.losses.distributed import run_bodies
from sim_jax.losses.pairwise import DISTANCES, SQ_DIST_EPS, safe_sqrt
from sim_jax.numerics import l2_normalize

MININGS = ("batch_hard", "semi_hard", "batch_all")
# Minings whose selection needs an anchor's complete row of distances (row strips, full width).
FULL_ROW_MININGS = ("semi_hard", "batch_all")


class TripletRows(NamedTuple):
  """A `Side` plus the squared norms (and, in the backward pass, an anchor's cotangents)."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  sq_norm: jax.Array                   # [n] |x|^2 (the gram form of the euclidean distances)
  dz: jax.Array | None = None          # batch_hard bwd: d loss / d (d_ap - d_an)
  pos_col: jax.Array | None = None     # batch_hard bwd: the hardest positive's column
  neg_col: jax.Array | None = None     # batch_hard bwd: the hardest negative's column
  cotangent: jax.Array | None = None   # full-row bwd: d loss / d num_a


class Hardest(NamedTuple):
  """Running batch-hard selection of each anchor (values are distances or mining keys)."""
  pos_value: jax.Array   # [n] hardest (largest) positive, -inf while none was seen
  pos_col: jax.Array     # [n] int32 its column, -1 while none was seen
  neg_value: jax.Array   # [n] hardest (smallest) negative, +inf while none was seen
  neg_col: jax.Array     # [n] int32 its column


class FullRowPartials(NamedTuple):
  """Per-row extra cotangents of the full-row backward pass."""
  sq_norm: jax.Array     # d loss / d |x_a|^2
  margin: jax.Array      # the anchor's part of d loss / d margin


def _safe_sqrt_vjp(dd, sq):
  """d loss / d sq from d loss / d `safe_sqrt(sq)`."""
  positive = sq > SQ_DIST_EPS
  return jnp.where(positive, dd * 0.5 / jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _distance_block(r, c, distance):
  """Distances of a block from the Gram form (cosine: x are unit vectors, d = 1 - <x, y>)."""
  gram = r.x @ c.x.T
  if distance == "cosine":
    return 1.0 - gram
  sq = jnp.maximum(r.sq_norm[:, None] + c.sq_norm[None, :] - 2.0 * gram, 0.0)
  return sq if distance == "squared_euclidean" else safe_sqrt(sq)


def _distance_block_vjp(dd, r, c, distance):
  """(dG, d sq_rows, d sq_cols) from d loss / d distance of a block (same cuts as the forward)."""
  gram = r.x @ c.x.T
  if distance == "cosine":
    zr, zc = jnp.zeros(dd.shape[0], dd.dtype), jnp.zeros(dd.shape[1], dd.dtype)
    return -dd, zr, zc
  sq = r.sq_norm[:, None] + c.sq_norm[None, :] - 2.0 * gram
  dsq = jnp.where(sq > 0, dd, 0.0) if distance == "squared_euclidean" else _safe_sqrt_vjp(dd, sq)
  return -2.0 * dsq, jnp.sum(dsq, axis=1), jnp.sum(dsq, axis=0)


def _triplet_term(z, margin, soft):
  """l(z) for z = d_ap - d_an and its derivative dl/dz (relu' = [z + m > 0], as jax.nn.relu)."""
  if soft:
    return jax.nn.softplus(z), jax.nn.sigmoid(z)
  return jax.nn.relu(z + margin), (z + margin > 0).astype(z.dtype)


def _triplet_rows(x, labels, index) -> TripletRows:
  return TripletRows(*sweep.side(x, labels, index), sq_norm=jnp.sum(x * x, axis=1))


def _hardest_init(n: int, dtype) -> Hardest:
  return Hardest(jnp.full(n, -jnp.inf, dtype), jnp.full(n, -1, jnp.int32),
                 jnp.full(n, jnp.inf, dtype), jnp.full(n, -1, jnp.int32))


def _keep_hardest(st: Hardest, block: Hardest) -> Hardest:
  """Merges a block's hardest (value, column) into the running selection. Strict comparison:
  on ties the first column swept keeps the selection."""
  take_p, take_n = block.pos_value > st.pos_value, block.neg_value < st.neg_value
  return Hardest(jnp.where(take_p, block.pos_value, st.pos_value),
                 jnp.where(take_p, block.pos_col, st.pos_col),
                 jnp.where(take_n, block.neg_value, st.neg_value),
                 jnp.where(take_n, block.neg_col, st.neg_col))


_NO_COLUMN = jnp.iinfo(jnp.int32).max


def _mining_key(r, c, distance):
  """Monotone mining key k of a block, d = `_key_to_distance(k)` non-decreasing in k: the
  squared distance (euclidean: no sqrt over the pairs; squared: d = k) or, for cosine (unit
  rows), k = -<a, b> (d = 1 + k)."""
  gram = r.x @ c.x.T
  if distance == "cosine":
    return -gram
  return jnp.maximum(r.sq_norm[:, None] + c.sq_norm[None, :] - 2.0 * gram, 0.0)


def _key_to_distance(k, distance):
  if distance == "cosine":
    return 1.0 + k
  return k if distance == "squared_euclidean" else safe_sqrt(k)


def _d_key(dd, k, distance):
  """d loss / d key from d loss / d distance (the cuts of `_distance_block_vjp`)."""
  if distance == "squared_euclidean":
    return jnp.where(k > 0, dd, 0.0)
  return _safe_sqrt_vjp(dd, k) if distance == "euclidean" else dd


def _hardest_block(r, c, distance) -> Hardest:
  """A block's hardest positive / negative keys and the first (lowest) column attaining each:
  plain max / min reductions and a second plain reduction instead of a variadic arg-reduction."""
  k = _mining_key(r, c, distance)
  pos, neg, _ = sweep.block_masks(r, c)
  bp = jnp.max(jnp.where(pos, k, -jnp.inf), axis=1)
  bn = jnp.min(jnp.where(neg, k, jnp.inf), axis=1)
  col_index = c.index[None, :]
  ip = jnp.min(jnp.where(pos & (k == bp[:, None]), col_index, _NO_COLUMN), axis=1)
  i_n = jnp.min(jnp.where(neg & (k == bn[:, None]), col_index, _NO_COLUMN), axis=1)
  return Hardest(bp, ip, bn, i_n)


def _keep_hardest_lowest(st: Hardest, block: Hardest) -> Hardest:
  """`_keep_hardest`, a tie going to the lower column whatever the order the columns come in
  (around the ring a device sees the chunks in its own order)."""
  take_p = (block.pos_value > st.pos_value) | ((block.pos_value == st.pos_value)
                                               & (block.pos_col < st.pos_col))
  take_n = (block.neg_value < st.neg_value) | ((block.neg_value == st.neg_value)
                                               & (block.neg_col < st.neg_col))
  return Hardest(jnp.where(take_p, block.pos_value, st.pos_value),
                 jnp.where(take_p, block.pos_col, st.pos_col),
                 jnp.where(take_n, block.neg_value, st.neg_value),
                 jnp.where(take_n, block.neg_col, st.neg_col))


def _hardest_result(st: Hardest, margin, distance, soft, dtype):
  """(outputs, residuals) of batch-hard from the final selection (keys and global columns)."""
  valid = jnp.isfinite(st.pos_value) & jnp.isfinite(st.neg_value)
  k_p = jnp.where(valid, st.pos_value, 0.0)
  k_n = jnp.where(valid, st.neg_value, 0.0)
  z = jnp.where(valid, _key_to_distance(k_p, distance) - _key_to_distance(k_n, distance), 0.0)
  loss, _ = _triplet_term(z, margin, soft)
  ip, i_n = jnp.where(valid, st.pos_col, 0), jnp.where(valid, st.neg_col, 0)
  return (jnp.where(valid, loss, 0.0), valid.astype(dtype)), (z, valid, ip, i_n, k_p, k_n)


def _selected_grads(residuals, margin, cotangent, distance, soft):
  """[(selected column [n], d loss / d key [n])] of the hardest positive and negative."""
  z, valid, ip, i_n, k_p, k_n = residuals
  _, dz = _triplet_term(z, margin, soft)
  dz = jnp.where(valid, dz * cotangent, 0.0)
  return dz, ((ip, _d_key(dz, k_p, distance)), (i_n, _d_key(-dz, k_n, distance)))


def _pair_grads(a, other, dk, distance):
  """(d/d a, d/d other) of dk * key(a, other) for rows a, other [n, D] and dk [n]."""
  if distance == "cosine":   # key = -<a, b>
    return -dk[:, None] * other, -dk[:, None] * a
  da = 2.0 * dk[:, None] * (a - other)   # key = |a|^2 + |b|^2 - 2 <a, b>
  return da, -da


class SelectedRows(NamedTuple):
  """Batch-hard backward around the ring: an anchor, its two selected columns, their d key."""
  x: jax.Array
  cols: tuple
  d_keys: tuple


def _batch_hard_bodies(sweeper, distance, soft):
  """Batch-hard around the ring: key mining as `_batch_hard_local_bodies`, and an O(N D) backward.

  Only the 2N selected pairs (a, p_a), (a, n_a) carry gradient. The backward makes one tour of
  the ring with whole chunks: when the chunk holding a selected column visits, the anchor takes
  that row, adds d/d a to its own gradient and scatter-adds d/d x_p into the chunk's gradient
  accumulator, which travels with the chunk and is brought home by the last hop
  (`distributed.pair_sums`). O(N D) work per hop instead of a recomputed Gram block.
  """

  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    cols = _triplet_rows(x, labels, sweeper.index(n))

    def update(st, r, c):
      return _keep_hardest_lowest(st, _hardest_block(r, c, distance))

    st = sweeper.forward(update, _hardest_init(n, x.dtype), cols, cols)
    return _hardest_result(st, margin, distance, soft, x.dtype)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    dz, selected = _selected_grads(residuals, margin, cotangents[0], distance, soft)
    rows = SelectedRows(x, tuple(c for c, _ in selected), tuple(k for _, k in selected))
    chunk = sweep.side(x, labels, sweeper.index(n))

    def visit(r, c):
      first, size = c.index[0], c.x.shape[0]   # shards are contiguous along "data"
      da, db = jnp.zeros_like(r.x), jnp.zeros_like(c.x)
      for col, dk in zip(r.cols, r.d_keys):
        j = col - first
        here = ((j >= 0) & (j < size))[:, None]
        j = jnp.clip(j, 0, size - 1)
        d_a, d_other = _pair_grads(r.x, c.x[j], dk, distance)
        da = da + jnp.where(here, d_a, 0.0)
        db = db.at[j].add(jnp.where(here, d_other, 0.0))
      return da, db

    da, db = distributed.pair_sums(distributed.whole_chunks(sweeper, n), visit, rows, chunk)
    d_margin = jnp.zeros((), x.dtype) if soft else sweeper.psum(jnp.sum(dz))
    return (da + db,), (d_margin,)

  return fwd_local, bwd_local


def _batch_hard_local_bodies(block_size: int, distance: str, soft: bool):
  """Single-device batch-hard triplet: mining on a monotone key, an O(N D) backward.

  Mining key k with d = f(k), f non-decreasing (`_mining_key`). Per block the hardest key is a
  plain max / min reduction and its column the first index attaining it (a second plain
  reduction), instead of a variadic arg-reduction. Only the N selected pairs (a, p_a) and
  (a, n_a) carry gradient, so the backward pass gathers those rows and scatter-adds their
  O(N D) contributions instead of recomputing every block.
  """

  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    cols = _triplet_rows(x, labels, jnp.arange(n, dtype=jnp.int32))

    def update(st, r, c):
      return _keep_hardest(st, _hardest_block(r, c, distance))

    st = sweep.forward_sweep(update, _hardest_init(n, x.dtype), cols, cols, block_size,
                             block_size)
    return _hardest_result(st, margin, distance, soft, x.dtype)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    dz, selected = _selected_grads(residuals, margin, cotangents[0], distance, soft)
    dx = jnp.zeros_like(x)
    for idx, dk in selected:
      da, db = _pair_grads(x, x[idx], dk, distance)
      dx = (dx + da).at[idx].add(db)
    d_margin = jnp.zeros((), x.dtype) if soft else jnp.sum(dz)
    return (dx,), (d_margin,)

  return fwd_local, bwd_local


def _semi_hard_select(d, d_ap, has_pos, neg):
  """TF Addons' semi-hard negative of one positive per row of a full-row strip.

  d [br, N] distances, d_ap [br] the row's positive distance, has_pos [br] whether the row has
  that positive. Returns (z = d_ap - d_an*, n* column, valid): n* is the closest negative
  strictly farther than d_ap, or the farthest negative when none is farther (ties: the lowest
  column, as argmin / argmax); valid = the positive exists and the row has a negative.
  """
  outside = neg & (d > d_ap[:, None])
  cand = jnp.where(outside, d, jnp.inf)
  far = jnp.where(neg, d, -jnp.inf)
  has_outside = jnp.any(outside, axis=1)
  d_an = jnp.where(has_outside, jnp.min(cand, axis=1), jnp.max(far, axis=1))
  col = jnp.where(has_outside, jnp.argmin(cand, axis=1), jnp.argmax(far, axis=1))
  valid = has_pos & jnp.any(neg, axis=1)
  return jnp.where(valid, d_ap - d_an, 0.0), col, valid


def _per_positive_strip(mining, distance, soft):
  """semi_hard / batch_all terms of a row strip against the full row, positives one at a time.

  Step t handles every row's t-th positive (in column order), for t < the strip's largest
  positive count M: O(N^2 M) work instead of visiting all N columns as candidate positives
  (O(N^3)). With K examples per class, M = K - 1. The terms and their order of summation are
  those of a column-by-column pass.
  """

  def per_strip(r, c, margin, g=None):
    """Forward (num, den) of a strip, or (g given) (d loss / d distances, d loss / d margin)."""
    d = _distance_block(r, c, distance)
    pos, neg, _ = sweep.block_masks(r, c)
    br = d.shape[0]
    rows = jnp.arange(br)
    rank = jnp.cumsum(pos, axis=1, dtype=jnp.int32) - 1   # a positive's rank within its row
    n_pos = jnp.sum(pos, axis=1, dtype=jnp.int32)

    def step(t, carry):
      has = n_pos > t
      j = jnp.argmax(pos & (rank == t), axis=1)          # the row's t-th positive column
      d_ap = d[rows, j]
      if mining == "semi_hard":
        z, col, valid = _semi_hard_select(d, d_ap, has, neg)
        loss, dz = _triplet_term(z, margin, soft)
        if g is None:
          return carry[0] + jnp.where(valid, loss, 0.0), carry[1] + valid
        dz = jnp.where(valid, dz * g, 0.0)
        return carry[0].at[rows, j].add(dz).at[rows, col].add(-dz), carry[1] + dz
      # batch_all: every negative n of the anchor against its t-th positive.
      valid = has[:, None] & neg
      loss, dz = _triplet_term(d_ap[:, None] - d, margin, soft)
      if g is None:
        counted = valid if soft else valid & (loss > 0)
        return (carry[0] + jnp.sum(jnp.where(valid, loss, 0.0), axis=1),
                carry[1] + jnp.sum(counted, axis=1))
      dz = jnp.where(valid, dz * g[:, None], 0.0)
      return carry[0].at[rows, j].add(jnp.sum(dz, axis=1)) - dz, carry[1] + jnp.sum(dz, axis=1)

    zeros = jnp.zeros(br, d.dtype)
    init = (zeros, zeros) if g is None else (jnp.zeros_like(d), zeros)
    return lax.fori_loop(0, jnp.max(n_pos, initial=0), step, init)

  return per_strip


def _strip_bodies(sweeper, per_strip, distance, soft):
  """Sweep bodies of a full-row triplet loss from its `per_strip(r, c, margin, g=None)`: forward
  (num, den) of a row strip, or with the strip's cotangent g (d loss / d distances, d loss /
  d margin)."""

  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    cols = _triplet_rows(x, labels, sweeper.index(n))

    def update(st, r, c):
      num, den = per_strip(r, c, margin)
      return st[0] + num, st[1] + den

    zeros = jnp.zeros(n, x.dtype)
    num, den = sweeper.forward(update, (zeros, zeros), cols, cols)
    return (num, den), ()

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    cols = _triplet_rows(x, labels, sweeper.index(x.shape[0]))

    def grad_block(r, c):
      dd, d_margin = per_strip(r, c, margin, g=r.cotangent)
      dg, dsq_r, dsq_c = _distance_block_vjp(dd, r, c, distance)
      return dg, FullRowPartials(dsq_r, d_margin), dsq_c

    rows = cols._replace(cotangent=cotangents[0])
    dx_r, extra_r, dx_c, dsq_c = sweeper.backward(grad_block, rows, cols)
    dx = dx_r + dx_c + 2.0 * x * (extra_r.sq_norm + dsq_c)[:, None]
    d_margin = jnp.zeros((), x.dtype) if soft else sweeper.psum(jnp.sum(extra_r.margin))
    return (dx,), (d_margin,)

  return fwd_local, bwd_local


def _full_row_bodies(sweeper, mining, distance, soft):
  """semi_hard / batch_all: row strips against the full row, each row's positives only."""
  return _strip_bodies(sweeper, _per_positive_strip(mining, distance, soft), distance, soft)


def triplet_stats_streaming(embeddings, labels, *, margin, mining, distance, soft, block_size,
                            mesh=None):
  """Streaming per-anchor triplet terms `(num [N], den [N])`, equal to `triplet_stats_dense`.

  d: "euclidean" sqrt(max(|a|^2 + |b|^2 - 2<a, b>, 0)) with the safe sqrt (0 at or below 1e-12,
  zero gradient there), "squared_euclidean" (the same without sqrt), "cosine" 1 - cos sim.
  l(z) = [z + margin]_+ (soft: softplus(z)) for z = d_ap - d_an.
  * batch_hard (Hermans et al. 2017): z_a = max_p d_ap - min_n d_an over anchors with >= 1
    positive and >= 1 negative; num_a = l(z_a), den_a = 1. Running max / min with the winning
    column (ties: the lowest column index, as argmax; the dense core instead splits a tied max's
    gradient evenly); the backward pass sends the gradient to those two columns. On one device
    it mines on the squared distance (no sqrt over the N^2 pairs) with plain max / min
    reductions and a first-index pass, and the backward is O(N D): only the 2N selected pairs
    carry gradient, so their rows are gathered and scatter-added instead of recomputing blocks.
  * semi_hard (TF Addons triplet_semihard_loss): for each positive (a, p) the negative with the
    smallest d_an > d_ap, else the farthest negative; num_a = sum_p l, den_a = #positives
    (0 for anchors without negatives).
  * batch_all: num_a = sum over valid (a, p, n) of l; den_a = #(l > 0) (soft: #valid).
  semi_hard and batch_all compute row strips of `block_size` anchors against the full row
  (memory O(N*D + N*block_size)) and take each row's positives one at a time: O(N^2 M) time
  for at most M positives per anchor (O(N^3) at worst, as the dense forms), without the dense
  [N, N, N] tensor.

  Args: embeddings [N, D] float; labels [N] int; margin scalar >= 0 (differentiated, may be
    traced); mining, distance as above; soft bool; block_size int (None only with a mesh);
    mesh optional Mesh whose "data" axis shards the batch.
  """
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  if block_size is None and mesh is None:
    raise ValueError("block_size must be a positive int for the streaming form, got None; "
                     "use the dense core (block_size=None in the public loss) instead.")
  _checks.check_block_size(block_size)
  _checks.check_choice(mining, "mining", MININGS)
  _checks.check_choice(distance, "distance", DISTANCES)
  _checks.check_scalar(margin, "margin")
  _checks.check_non_negative(margin, "margin")
  dtype = _checks.compute_dtype(embeddings.dtype)
  x = embeddings.astype(dtype)
  if distance == "cosine":
    x = l2_normalize(x)
  soft = bool(soft)
  margin = jnp.asarray(margin, dtype)
  if mining in FULL_ROW_MININGS:
    bodies = lambda sw: _full_row_bodies(sw, mining, distance, soft)
  elif mesh is None:
    fwd_local, bwd_local = _batch_hard_local_bodies(block_size, distance, soft)
    return sweep.custom_loss(fwd_local, bwd_local)((x,), (margin,),
                                                   jnp.asarray(labels).astype(jnp.int32))
  else:
    bodies = lambda sw: _batch_hard_bodies(sw, distance, soft)
  return run_bodies(bodies, (x,), (margin,), labels.astype(jnp.int32), block_size=block_size,
                    mesh=mesh, full_row=mining in FULL_ROW_MININGS)
