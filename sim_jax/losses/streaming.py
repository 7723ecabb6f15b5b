"""Streaming (blockwise) forms of the all-pairs losses: memory O(N*D + N*block_size).

The dense losses build the [N, N] similarity / distance matrix and let autodiff keep it (and
several same-sized temporaries) for the backward pass. Here the matrix is never materialised:

* the forward pass sweeps row blocks of `block_size` anchors against column blocks of
  `block_size` candidates (`jax.lax.map` over row blocks, `jax.lax.scan` over column blocks, so
  the program size does not grow with N) and keeps per-anchor running statistics only: an online
  log-sum-exp (max, rescaled sum), running max / min with the winning column, counts and sums;
* a `jax.custom_vjp` backward pass recomputes each block from the embeddings and the saved
  per-anchor statistics, forms d loss / d block analytically and contracts it straight back into
  d embeddings (`dX_rows += dG @ X_cols`, `dX_cols += dG^T @ X_rows`).

Peak memory for loss *and* gradient is therefore O(N*D + block_size^2) for the column-blocked
losses (nt_xent, supcon, batch-hard triplet, the two-tower losses) and O(N*D + N*block_size) for
semi-hard and batch-all triplet mining, which need an anchor's whole row of distances at once
(row strips of `block_size` anchors, the positives enumerated one column at a time).

Every function returns the per-anchor `(num [N], den [N])` arrays pinned by the dense cores
(`sim_jax.losses.infonce.nt_xent_stats_dense`, `supcon_stats_dense`,
`sim_jax.losses.triplet.triplet_stats_dense`); the public losses apply the reduction. Block sizes
that do not divide N are padded and the padding is masked out. With `mesh=...` the same kernels
run across devices (`sim_jax.losses.distributed`): every anchor sees the global batch.

The sweep is written against a small "sweeper" interface (`forward`, `backward`, `index`, `psum`)
so that one definition of each loss serves the single-device sweep here and the ring / gather
sweeps across devices.

On one device (no mesh) the losses take faster, equally exact forms: NT-Xent and SupCon at
N <= block_size run the dense core (a single block); otherwise NT-Xent sorts the rows by label once
(`_sorted_bodies`: one Gram block and one exp per pair forward and backward, positives only
where they lie); batch-hard triplet mines on a monotone key with plain reductions and has an
O(N D) backward (`_batch_hard_local_bodies`). Measured in-process (D = 128, CPU time of a loaded
2-core machine): NT-Xent loss + grad from ~9 to ~5 ns per pair, batch-hard triplet ~5x faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.losses import _checks, infonce
from sim_jax.losses.pairwise import DISTANCES, NORM_EPS, SQ_DIST_EPS

MININGS = ("batch_hard", "semi_hard", "batch_all")
# Minings whose selection needs an anchor's complete row of distances (row strips, full width).
FULL_ROW_MININGS = ("semi_hard", "batch_all")


# ----------------------------------------------------------------------------------------------
# Blocking helpers
# ----------------------------------------------------------------------------------------------

def _num_rows(tree) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def _pad_rows(tree, multiple: int):
  """Zero-pads every leaf along axis 0 to a multiple of `multiple` (bool pads with False)."""
  n = _num_rows(tree)
  pad = (-n) % multiple
  if pad == 0:
    return tree
  return jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), tree)


def _to_blocks(tree, b: int):
  return jax.tree.map(lambda a: a.reshape((a.shape[0] // b, b) + a.shape[1:]), tree)


def _from_blocks(tree, n: int):
  return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], tree)


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def forward_sweep(update, stats, rows, cols, row_block: int, col_block: int | None):
  """Folds `update(stats_blk, rows_blk, cols_blk) -> stats_blk` over all (row, column) blocks.

  Args:
    update: per-block update of the per-row statistics (a pytree of [row_block, ...] arrays).
    stats: initial per-row statistics, leaves [Nr, ...].
    rows, cols: dicts of per-row / per-column arrays with leading dims Nr / Nc; `cols["v"]`
      marks real columns (padding is added with v = False and must be masked by `update`).
    row_block, col_block: block sizes (None = all columns in one block).
  Returns the final statistics, leaves [Nr, ...]. Padded rows are computed and dropped.
  """
  nr, nc = _num_rows(rows), _num_rows(cols)
  br = min(row_block, nr)
  bc = nc if col_block is None else min(col_block, nc)
  row_blocks = _to_blocks(_pad_rows((rows, stats), br), br)
  col_blocks = _to_blocks(_pad_rows(cols, bc), bc)

  def per_row_block(args):
    r, s = args
    s, _ = lax.scan(lambda s, c: (update(s, r, c), None), s, col_blocks)
    return s

  return _from_blocks(lax.map(per_row_block, row_blocks), nr)


def backward_sweep(grad_block, rows, cols, row_block: int, col_block: int | None):
  """Recomputes every block and contracts its cotangent back into the embeddings.

  `grad_block(rows_blk, cols_blk) -> (dG [br, bc], row_extra, col_extra)` returns d loss / d G for
  the Gram block G = X_rows X_cols^T plus per-row / per-column extra cotangents (pytrees of
  [br] / [bc] arrays, e.g. of squared norms or per-row parameter partials), which are summed.
  Returns (dX_rows [Nr, D], row_extra [Nr], dX_cols [Nc, D], col_extra [Nc]).
  """
  nr, nc = _num_rows(rows), _num_rows(cols)
  br = min(row_block, nr)
  bc = nc if col_block is None else min(col_block, nc)
  row_blocks = _to_blocks(_pad_rows(rows, br), br)
  col_blocks = _to_blocks(_pad_rows(cols, bc), bc)
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  _, row_shape, col_shape = jax.eval_shape(grad_block, first(row_blocks), first(col_blocks))
  zeros = lambda shapes, lead: jax.tree.map(
    lambda s: jnp.zeros(lead + s.shape, s.dtype), shapes)
  x_dtype = rows["x"].dtype

  def row_step(col_acc, r):
    def col_step(row_acc, c):
      dg, row_extra, col_extra = grad_block(r, c)
      dx_r, extra_r = row_acc
      row_acc = (dx_r + dg @ c["x"], _tree_add(extra_r, row_extra))
      return row_acc, (dg.T @ r["x"], col_extra)

    init = (jnp.zeros(r["x"].shape, x_dtype), zeros(row_shape, ()))
    row_acc, col_part = lax.scan(col_step, init, col_blocks)
    return _tree_add(col_acc, col_part), row_acc

  n_col_blocks, d = col_blocks["x"].shape[0], rows["x"].shape[1]
  col_init = (jnp.zeros((n_col_blocks, bc, d), x_dtype), zeros(col_shape, (n_col_blocks,)))
  (dx_c, extra_c), (dx_r, extra_r) = lax.scan(row_step, col_init, row_blocks)
  return (_from_blocks(dx_r, nr), _from_blocks(extra_r, nr), _from_blocks(dx_c, nc),
          _from_blocks(extra_c, nc))


class LocalSweeper:
  """Single-device sweep: rows and columns are the same local arrays."""

  def __init__(self, row_block: int, col_block: int | None):
    self.row_block, self.col_block = row_block, col_block

  def index(self, n: int) -> jax.Array:
    return jnp.arange(n, dtype=jnp.int32)

  def psum(self, x):
    return x

  def forward(self, update, stats, rows, cols):
    return forward_sweep(update, stats, rows, cols, self.row_block, self.col_block)

  def backward(self, grad_block, rows, cols):
    return backward_sweep(grad_block, rows, cols, self.row_block, self.col_block)


# ----------------------------------------------------------------------------------------------
# The custom VJP shared by every loss
# ----------------------------------------------------------------------------------------------

def custom_loss(fwd_local, bwd_local, wrap=None):
  """Builds `f(xs, params, labels) -> outputs` with a custom VJP from local fwd / bwd bodies.

  fwd_local(xs, params, labels) -> (outputs, residuals), all per-row arrays [n, ...];
  bwd_local(xs, params, labels, residuals, cotangents) -> (d xs, d params).
  `wrap(fn, kind)` runs a body across devices (`sim_jax.losses.distributed`); None = as is.
  Labels are integers: they get no cotangent.
  """
  wrap = wrap or (lambda fn, kind: fn)

  @jax.custom_vjp
  def f(xs, params, labels):
    return wrap(fwd_local, "fwd")(xs, params, labels)[0]

  def f_fwd(xs, params, labels):
    outputs, residuals = wrap(fwd_local, "fwd")(xs, params, labels)
    return outputs, (xs, params, labels, residuals)

  def f_bwd(saved, cotangents):
    xs, params, labels, residuals = saved
    d_xs, d_params = wrap(bwd_local, "bwd")(xs, params, labels, residuals, cotangents)
    return d_xs, d_params, None

  f.defvjp(f_fwd, f_bwd)
  return f


def _side(x, labels, idx, **extra):
  """Per-row data of one side of the all-pairs matrix (v marks real, i.e. unpadded, rows)."""
  return dict(x=x, y=labels, i=idx, v=jnp.ones(x.shape[0], bool), **extra)


def _masks(r, c):
  """Block masks: positives (same label, other sample), negatives (other label), non-self."""
  valid = c["v"][None, :]
  same = r["y"][:, None] == c["y"][None, :]
  other = r["i"][:, None] != c["i"][None, :]
  return same & other & valid, ~same & valid, other & valid


def _lse_init(n: int, dtype):
  return {"m": jnp.full((n,), -jnp.inf, dtype), "s": jnp.zeros((n,), dtype)}


def _lse_update(st, logits, mask):
  """Online log-sum-exp over the masked entries: running max m and sum s of exp(l - m)."""
  block_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=1)
  m = jnp.maximum(st["m"], block_max)
  # m = -inf while nothing was seen: shift by 0 instead (exp(-inf - 0) = 0, no NaN).
  shift = jnp.where(jnp.isfinite(m), m, 0.0)
  s = st["s"] * jnp.exp(st["m"] - shift) + jnp.sum(
    jnp.exp(jnp.where(mask, logits, -jnp.inf) - shift[:, None]), axis=1)
  return {"m": m, "s": s}


def _lse_value(st):
  """log sum exp of everything seen; -inf for rows that saw no entry."""
  return jnp.where(st["s"] > 0, st["m"] + jnp.log(jnp.where(st["s"] > 0, st["s"], 1.0)),
                   -jnp.inf)


def _finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _safe_exp_diff(logits, lse, mask):
  """exp(l - L) on the mask, 0 elsewhere; never inf*0 (L = -inf rows have an empty mask)."""
  return jnp.where(mask, jnp.exp(jnp.where(mask, logits - _finite_or_zero(lse)[:, None],
                                           -jnp.inf)), 0.0)


# ----------------------------------------------------------------------------------------------
# NT-Xent (pytorch-metric-learning NTXentLoss semantics)
# ----------------------------------------------------------------------------------------------

def _nt_xent_bodies(sweeper):
  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    side = _side(z, labels, sweeper.index(z.shape[0]))

    def pass_negatives(st, r, c):
      logits = (r["x"] @ c["x"].T) * inv_t
      pos, neg, _ = _masks(r, c)
      out = _lse_update(st, logits, neg)
      out["np"] = st["np"] + jnp.sum(pos, axis=1).astype(z.dtype)
      return out

    st = sweeper.forward(pass_negatives, dict(_lse_init(z.shape[0], z.dtype),
                                              np=jnp.zeros(z.shape[0], z.dtype)), side, side)
    lse_neg = _lse_value(st)

    # Second pass: each positive needs the *final* negative log-sum-exp of its anchor.
    def pass_positives(acc, r, c):
      logits = (r["x"] @ c["x"].T) * inv_t
      pos, _, _ = _masks(r, c)
      gap = r["lse"][:, None] - logits
      # l_ip = softplus(L_i - s_ip/t); sigmoid(L_i - s_ip/t) is -d l_ip / d(s_ip/t).
      return {"a": acc["a"] + jnp.sum(jnp.where(pos, jax.nn.softplus(gap), 0.0), axis=1),
              "w": acc["w"] + jnp.sum(jnp.where(pos, jax.nn.sigmoid(gap), 0.0), axis=1)}

    zeros = jnp.zeros(z.shape[0], z.dtype)
    acc = sweeper.forward(pass_positives, {"a": zeros, "w": zeros}, dict(side, lse=lse_neg), side)
    return (acc["a"], st["np"]), (lse_neg, acc["w"])

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse_neg, w = residuals
    g = cotangents[0]
    side = _side(z, labels, sweeper.index(z.shape[0]))

    def grad_block(r, c):
      gram = r["x"] @ c["x"].T
      logits = gram * inv_t
      pos, neg, _ = _masks(r, c)
      lse = r["lse"][:, None]
      # d num_i / d l_ip = -sigmoid(L_i - l_ip);  d num_i / d l_in = exp(l_in - L_i) * w_i.
      dl = jnp.where(pos, -jax.nn.sigmoid(lse - logits), 0.0)
      dl = dl + _safe_exp_diff(logits, r["lse"], neg) * r["w"][:, None]
      dl = dl * r["g"][:, None]
      return dl * inv_t, {"t": jnp.sum(dl * gram, axis=1)}, {}

    rows = dict(side, lse=lse_neg, w=w, g=g)
    dx_r, extra_r, dx_c, _ = sweeper.backward(grad_block, rows, side)
    return (dx_r + dx_c,), (sweeper.psum(jnp.sum(extra_r["t"])),)

  return fwd_local, bwd_local


# ----------------------------------------------------------------------------------------------
# SupCon (Khosla et al. 2020, L_out)
# ----------------------------------------------------------------------------------------------

def _supcon_bodies(sweeper):
  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    n = z.shape[0]
    side = _side(z, labels, sweeper.index(n))

    def update(st, r, c):
      logits = (r["x"] @ c["x"].T) * inv_t
      pos, _, others = _masks(r, c)
      out = _lse_update(st, logits, others)
      out["sp"] = st["sp"] + jnp.sum(jnp.where(pos, logits, 0.0), axis=1)
      out["np"] = st["np"] + jnp.sum(pos, axis=1).astype(z.dtype)
      return out

    zeros = jnp.zeros(n, z.dtype)
    st = sweeper.forward(update, dict(_lse_init(n, z.dtype), sp=zeros, np=zeros), side, side)
    lse = _lse_value(st)
    has_pos = st["np"] > 0
    num = jnp.where(has_pos, lse - st["sp"] / jnp.maximum(st["np"], 1.0), 0.0)
    return (num, has_pos.astype(z.dtype)), (lse, st["np"])

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse, n_pos = residuals
    g = jnp.where(n_pos > 0, cotangents[0], 0.0)
    side = _side(z, labels, sweeper.index(z.shape[0]))

    def grad_block(r, c):
      gram = r["x"] @ c["x"].T
      logits = gram * inv_t
      pos, _, others = _masks(r, c)
      # d l_i / d l_ij = softmax_ij over j != i  -  [j in P(i)] / |P(i)|.
      dl = _safe_exp_diff(logits, r["lse"], others) - pos / jnp.maximum(r["np"], 1.0)[:, None]
      dl = dl * r["g"][:, None]
      return dl * inv_t, {"t": jnp.sum(dl * gram, axis=1)}, {}

    rows = dict(side, lse=lse, np=n_pos, g=g)
    dx_r, extra_r, dx_c, _ = sweeper.backward(grad_block, rows, side)
    return (dx_r + dx_c,), (sweeper.psum(jnp.sum(extra_r["t"])),)

  return fwd_local, bwd_local


# ----------------------------------------------------------------------------------------------
# Triplet (batch_hard, semi_hard, batch_all)
# ----------------------------------------------------------------------------------------------

def _safe_sqrt(sq):
  """sqrt(sq), 0 at or below SQ_DIST_EPS (where the gradient is cut to 0, as the dense form)."""
  positive = sq > SQ_DIST_EPS
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _safe_sqrt_vjp(dd, sq):
  """d loss / d sq from d loss / d `_safe_sqrt(sq)`."""
  positive = sq > SQ_DIST_EPS
  return jnp.where(positive, dd * 0.5 / jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _distance_block(r, c, distance):
  """Distances of a block from the Gram form (cosine: x are unit vectors, d = 1 - <x, y>)."""
  gram = r["x"] @ c["x"].T
  if distance == "cosine":
    return 1.0 - gram
  sq = jnp.maximum(r["sq"][:, None] + c["sq"][None, :] - 2.0 * gram, 0.0)
  return sq if distance == "squared_euclidean" else _safe_sqrt(sq)


def _distance_block_vjp(dd, r, c, distance):
  """(dG, d sq_rows, d sq_cols) from d loss / d distance of a block (same cuts as the forward)."""
  gram = r["x"] @ c["x"].T
  if distance == "cosine":
    zr, zc = jnp.zeros(dd.shape[0], dd.dtype), jnp.zeros(dd.shape[1], dd.dtype)
    return -dd, zr, zc
  sq = r["sq"][:, None] + c["sq"][None, :] - 2.0 * gram
  dsq = jnp.where(sq > 0, dd, 0.0) if distance == "squared_euclidean" else _safe_sqrt_vjp(dd, sq)
  return -2.0 * dsq, jnp.sum(dsq, axis=1), jnp.sum(dsq, axis=0)


def _triplet_term(z, margin, soft):
  """l(z) for z = d_ap - d_an and its derivative dl/dz (relu' = [z + m > 0], as jax.nn.relu)."""
  if soft:
    return jax.nn.softplus(z), jax.nn.sigmoid(z)
  return jax.nn.relu(z + margin), (z + margin > 0).astype(z.dtype)


def _triplet_side(x, labels, idx, distance):
  return _side(x, labels, idx, sq=jnp.sum(x * x, axis=1))


def _hardest_init(n: int, dtype):
  """Running batch-hard selection: hardest positive (max) / negative (min) value and column."""
  return {"hp": jnp.full(n, -jnp.inf, dtype), "ip": jnp.full(n, -1, jnp.int32),
          "hn": jnp.full(n, jnp.inf, dtype), "in": jnp.full(n, -1, jnp.int32)}


def _keep_hardest(st, bp, ip, bn, i_n):
  """Merges a block's hardest (value, column) into the running selection. Strict comparison:
  on ties the first column swept keeps the selection."""
  take_p, take_n = bp > st["hp"], bn < st["hn"]
  return {"hp": jnp.where(take_p, bp, st["hp"]), "ip": jnp.where(take_p, ip, st["ip"]),
          "hn": jnp.where(take_n, bn, st["hn"]), "in": jnp.where(take_n, i_n, st["in"])}


def _batch_hard_bodies(sweeper, distance, soft):
  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    side = _triplet_side(x, labels, sweeper.index(n), distance)

    def update(st, r, c):
      d = _distance_block(r, c, distance)
      pos, neg, _ = _masks(r, c)
      dp = jnp.where(pos, d, -jnp.inf)
      dn = jnp.where(neg, d, jnp.inf)
      bp, bn = jnp.max(dp, axis=1), jnp.min(dn, axis=1)
      ip, i_n = c["i"][jnp.argmax(dp, axis=1)], c["i"][jnp.argmin(dn, axis=1)]
      return _keep_hardest(st, bp, ip, bn, i_n)

    st = sweeper.forward(update, _hardest_init(n, x.dtype), side, side)
    valid = jnp.isfinite(st["hp"]) & jnp.isfinite(st["hn"])
    z = jnp.where(valid, st["hp"] - st["hn"], 0.0)
    loss, _ = _triplet_term(z, margin, soft)
    return (jnp.where(valid, loss, 0.0), valid.astype(x.dtype)), (z, valid, st["ip"], st["in"])

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    z, valid, ip, i_n = residuals
    _, dz = _triplet_term(z, margin, soft)
    dz = jnp.where(valid, dz * cotangents[0], 0.0)
    side = _triplet_side(x, labels, sweeper.index(x.shape[0]), distance)

    def grad_block(r, c):
      cols = c["i"][None, :]
      real = c["v"][None, :]
      # Only the selected hardest positive (+) and hardest negative (-) receive gradient.
      dd = r["dz"][:, None] * ((real & (cols == r["ip"][:, None])).astype(x.dtype)
                               - (real & (cols == r["in"][:, None])).astype(x.dtype))
      dg, dsq_r, dsq_c = _distance_block_vjp(dd, r, c, distance)
      return dg, {"sq": dsq_r}, {"sq": dsq_c}

    rows = dict(side, dz=dz, ip=ip, **{"in": i_n})
    dx_r, extra_r, dx_c, extra_c = sweeper.backward(grad_block, rows, side)
    dx = dx_r + dx_c + 2.0 * x * (extra_r["sq"] + extra_c["sq"])[:, None]
    d_margin = jnp.zeros((), x.dtype) if soft else sweeper.psum(jnp.sum(dz))
    return (dx,), (d_margin,)

  return fwd_local, bwd_local


def _batch_hard_local_bodies(block_size: int, distance: str, soft: bool):
  """Single-device batch-hard triplet: mining on a monotone key, an O(N D) backward.

  Mining key k with d = f(k), f non-decreasing: the squared distance (euclidean: d = safe
  sqrt(k), so no sqrt over the N^2 pairs; squared: d = k) or, for cosine, k = -<a, b> (d = 1 + k).
  Per block the hardest key is a plain max / min reduction and its column the first index
  attaining it (a second plain reduction), instead of a variadic arg-reduction. Only the N
  selected pairs (a, p_a) and (a, n_a) carry gradient, so the backward pass gathers those rows
  and scatter-adds their O(N D) contributions instead of recomputing every block.
  """
  big = jnp.iinfo(jnp.int32).max

  def key_block(r, c):
    gram = r["x"] @ c["x"].T
    if distance == "cosine":
      return -gram
    return jnp.maximum(r["sq"][:, None] + c["sq"][None, :] - 2.0 * gram, 0.0)

  def to_distance(k):
    if distance == "cosine":
      return 1.0 + k
    return k if distance == "squared_euclidean" else _safe_sqrt(k)

  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    side = _triplet_side(x, labels, jnp.arange(n, dtype=jnp.int32), distance)

    def update(st, r, c):
      k = key_block(r, c)
      pos, neg, _ = _masks(r, c)
      bp = jnp.max(jnp.where(pos, k, -jnp.inf), axis=1)
      bn = jnp.min(jnp.where(neg, k, jnp.inf), axis=1)
      cols = c["i"][None, :]
      # The first column attaining the block's max / min (as argmax / argmin would pick).
      ip = jnp.min(jnp.where(pos & (k == bp[:, None]), cols, big), axis=1)
      i_n = jnp.min(jnp.where(neg & (k == bn[:, None]), cols, big), axis=1)
      return _keep_hardest(st, bp, ip, bn, i_n)

    st = forward_sweep(update, _hardest_init(n, x.dtype), side, side, block_size, block_size)
    valid = jnp.isfinite(st["hp"]) & jnp.isfinite(st["hn"])
    k_p = jnp.where(valid, st["hp"], 0.0)
    k_n = jnp.where(valid, st["hn"], 0.0)
    z = jnp.where(valid, to_distance(k_p) - to_distance(k_n), 0.0)
    loss, _ = _triplet_term(z, margin, soft)
    ip, i_n = jnp.where(valid, st["ip"], 0), jnp.where(valid, st["in"], 0)
    return (jnp.where(valid, loss, 0.0), valid.astype(x.dtype)), (z, valid, ip, i_n, k_p, k_n)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    z, valid, ip, i_n, k_p, k_n = residuals
    _, dz = _triplet_term(z, margin, soft)
    dz = jnp.where(valid, dz * cotangents[0], 0.0)

    def d_key(dd, k):
      """d loss / d key from d loss / d distance (the cuts of `_distance_block_vjp`)."""
      if distance == "squared_euclidean":
        return jnp.where(k > 0, dd, 0.0)
      return _safe_sqrt_vjp(dd, k) if distance == "euclidean" else dd

    dx = jnp.zeros_like(x)
    for idx, dk in ((ip, d_key(dz, k_p)), (i_n, d_key(-dz, k_n))):
      other = x[idx]
      if distance == "cosine":   # key = -<a, b>
        da, db = -dk[:, None] * other, -dk[:, None] * x
      else:                      # key = |a|^2 + |b|^2 - 2 <a, b>
        da = 2.0 * dk[:, None] * (x - other)
        db = -da
      dx = (dx + da).at[idx].add(db)
    d_margin = jnp.zeros((), x.dtype) if soft else jnp.sum(dz)
    return (dx,), (d_margin,)

  return fwd_local, bwd_local


def _semi_hard_select(d, pos, neg, j):
  """TF Addons' semi-hard negative for the positive column j of every row of a full-row strip.

  Returns (z = d_aj - d_an*, n* column, valid): n* is the closest negative strictly farther than
  d_aj, or the farthest negative when none is farther; valid = (a, j) positive and a has a negative.
  """
  d_ap = d[:, j]
  outside = neg & (d > d_ap[:, None])
  cand = jnp.where(outside, d, jnp.inf)
  far = jnp.where(neg, d, -jnp.inf)
  has_outside = jnp.any(outside, axis=1)
  d_an = jnp.where(has_outside, jnp.min(cand, axis=1), jnp.max(far, axis=1))
  col = jnp.where(has_outside, jnp.argmin(cand, axis=1), jnp.argmax(far, axis=1))
  valid = pos[:, j] & jnp.any(neg, axis=1)
  return jnp.where(valid, d_ap - d_an, 0.0), col, valid


def _full_row_bodies(sweeper, mining, distance, soft):
  """semi_hard / batch_all: row strips against the full row, positives one column at a time."""

  def per_strip(r, c, margin, g=None):
    """Forward statistics of a strip, or (g given) d loss / d distances of the strip."""
    d = _distance_block(r, c, distance)
    pos, neg, _ = _masks(r, c)
    n_cols = d.shape[1]
    br = d.shape[0]

    def step(carry, j):
      if mining == "semi_hard":
        z, col, valid = _semi_hard_select(d, pos, neg, j)
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

  def fwd_local(xs, params, labels):
    (x,), (margin,) = xs, params
    n = x.shape[0]
    side = _triplet_side(x, labels, sweeper.index(n), distance)

    def update(st, r, c):
      num, den = per_strip(r, c, margin)
      return {"num": st["num"] + num, "den": st["den"] + den}

    zeros = jnp.zeros(n, x.dtype)
    st = sweeper.forward(update, {"num": zeros, "den": zeros}, side, side)
    return (st["num"], st["den"]), ()

  def bwd_local(xs, params, labels, residuals, cotangents):
    (x,), (margin,) = xs, params
    side = _triplet_side(x, labels, sweeper.index(x.shape[0]), distance)

    def grad_block(r, c):
      dd, d_margin = per_strip(r, c, margin, g=r["g"])
      dg, dsq_r, dsq_c = _distance_block_vjp(dd, r, c, distance)
      return dg, {"sq": dsq_r, "m": d_margin}, {"sq": dsq_c}

    rows = dict(side, g=cotangents[0])
    dx_r, extra_r, dx_c, extra_c = sweeper.backward(grad_block, rows, side)
    dx = dx_r + dx_c + 2.0 * x * (extra_r["sq"] + extra_c["sq"])[:, None]
    d_margin = jnp.zeros((), x.dtype) if soft else sweeper.psum(jnp.sum(extra_r["m"]))
    return (dx,), (d_margin,)

  return fwd_local, bwd_local


# ----------------------------------------------------------------------------------------------
# Single-device NT-Xent: one exp per pair, positives visited only where they can be
# ----------------------------------------------------------------------------------------------

# A row's fixed-shift sum s_i = sum_n exp(l_in - |q_i|) is trusted when s_i > n * 2^-100: every
# term it may have lost to float32 underflow (flush-to-zero below 2^-126) then changes it by less
# than 2^-26 relative. Below that (possible only for t < ~0.023 or zero rows), the exact two-pass
# online log-sum-exp is run instead.
_FIXED_SHIFT_FLOOR = 2.0 ** -100
# Largest spread max L - min L of the negatives' log-sum-exps for which the backward pass derives
# the column-side softmax from the row-side one (see `_sorted_bodies`).
_SHARED_EXP_SPREAD = 40.0
# Tile of the positives' band sweep when it divides block_size (else block_size itself).
_BAND_TILE = 128


def _label_layout(labels):
  """Stable sort by label; in sorted order anchor i's class occupies columns [start_i, end_i)."""
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  ys = labels[order]
  start = jnp.searchsorted(ys, ys, side="left").astype(jnp.int32)
  end = jnp.searchsorted(ys, ys, side="right").astype(jnp.int32)
  return order, ys, start, end


def _unsort(values, order):
  return jnp.zeros_like(values).at[order].set(values)


def _band_bounds(start, end, n, bs, nb):
  """First / one-past-last column block holding a positive of any row of each row block."""
  first = jnp.arange(nb, dtype=jnp.int32) * bs
  last = jnp.minimum(first + bs, n) - 1
  return start[first] // bs, (end[last] - 1) // bs + 1


def _sorted_bodies(block_size: int):
  """fwd / bwd bodies of the single-device NT-Xent on label-sorted rows (see `nt_xent_stats`).

  The log-sum-exp runs over the negatives; the positive terms visit only the band of columns
  holding the anchor's class. (SupCon keeps the blockwise `_supcon_bodies`: its softmax and
  positive terms nearly cancel for tight classes, and only a per-element difference
  p_ij - [j in P(i)]/|P(i)| inside one block keeps float32 gradients as accurate as dense.)
  """

  def layout(z, labels, inv_t):
    n, d = z.shape
    bs = min(block_size, n)
    nb = -(-n // bs)
    npad = nb * bs
    padded = npad != n
    order, ys, start, end = _label_layout(labels)
    pad = lambda a: jnp.pad(a, [(0, npad - n)] + [(0, 0)] * (a.ndim - 1))
    zs = pad(z[order])
    # The band sweep uses its own, smaller tile: a class of k members costs about k + tile
    # columns per row instead of k + block_size.
    bt = _BAND_TILE if bs % _BAND_TILE == 0 else bs
    return dict(n=n, d=d, bs=bs, nb=nb, npad=npad, padded=padded, order=order, start=start,
                end=end, zs=zs, q=zs * inv_t, ys=pad(ys), valid=jnp.arange(npad) < n,
                idx=jnp.arange(npad, dtype=jnp.int32), bt=bt, nbt=npad // bt)

  def lse_mask(lay, r, c):
    """The log-sum-exp's terms of a block: the negatives (another label).

    r = (y, i) of the rows, c = (y, i, valid) of the columns."""
    mask = r[0][:, None] != c[0][None, :]
    return mask & c[2][None, :] if lay["padded"] else mask

  def has_terms(lay):
    return (lay["end"] - lay["start"]) < lay["n"]

  def blocks(lay, *arrays):
    return tuple(a.reshape((lay["nb"], lay["bs"]) + a.shape[1:]) for a in arrays)

  def negatives_lse(lay):
    """L_i = log sum_{j in mask} exp(l_ij): one Gram block and one exp per pair."""
    bs, npad = lay["bs"], lay["npad"]
    cols = blocks(lay, lay["zs"], lay["ys"], lay["idx"], lay["valid"])
    shift = jnp.sqrt(jnp.sum(lay["q"] * lay["q"], axis=1))   # |q_i| >= l_ij for unit z_j

    def fixed_row(r):
      q_r, y_r, i_r, sh_r = r

      def col(s, c):
        e = jnp.exp(q_r @ c[0].T - sh_r[:, None])
        return s + jnp.sum(jnp.where(lse_mask(lay, (y_r, i_r), c[1:]), e, 0.0), axis=1), None

      return lax.scan(col, jnp.zeros(bs, q_r.dtype), cols)[0]

    s = lax.map(fixed_row, blocks(lay, lay["q"], lay["ys"], lay["idx"], shift))
    s = s.reshape(npad)[:lay["n"]]
    has_neg = has_terms(lay)
    fixed = jnp.where(has_neg, shift[:lay["n"]] + jnp.log(jnp.where(has_neg, s, 1.0)), -jnp.inf)

    def exact(_):
      def exact_row(r):
        q_r, y_r, i_r = r

        def col(st, c):
          return _lse_update(st, q_r @ c[0].T, lse_mask(lay, (y_r, i_r), c[1:])), None

        return _lse_value(lax.scan(col, _lse_init(bs, q_r.dtype), cols)[0])

      rows = blocks(lay, lay["q"], lay["ys"], lay["idx"])
      return lax.map(exact_row, rows).reshape(npad)[:lay["n"]]

    underflow = has_neg & (s <= lay["n"] * _FIXED_SHIFT_FLOOR)
    return lax.cond(jnp.any(underflow), exact, lambda _: fixed, None)

  def band(lay, row_data, col_data, init, body):
    """`body(c, logits, pos, r, carry)` on the column blocks c holding row block r's positives.

    In label-sorted order the positives of a row block lie in one contiguous band of columns,
    so only the (usually one or two) column blocks meeting that band are visited. `r` and `c`
    are dicts of the row block's / column block's slices of `row_data` / `col_data` (flat [npad]).
    Returns (row_step(carry, r), stacked row blocks) for `lax.map` / `lax.scan`.
    """
    bs, nb = lay["bt"], lay["nbt"]   # band tiles (see `layout`), not the sweep's blocks
    lo, hi = _band_bounds(lay["start"], lay["end"], lay["n"], bs, nb)
    idx = jnp.arange(bs, dtype=jnp.int32)
    col_data = dict(col_data, z=lay["zs"], y=lay["ys"], v=lay["valid"])

    def row_step(carry, r):
      def col(cb, inner):
        c = {k: lax.dynamic_slice_in_dim(v, cb * bs, bs) for k, v in col_data.items()}
        logits = r["q"] @ c["z"].T
        pos = (r["y"][:, None] == c["y"][None, :]) & ((r["b"] * bs + idx)[:, None]
                                                      != (cb * bs + idx)[None, :])
        if lay["padded"]:
          pos = pos & c["v"][None, :]
        return body(logits, pos, r, c, inner)

      return lax.fori_loop(r["lo"], r["hi"], col, init(carry, r))

    rows = {k: v.reshape((nb, bs) + v.shape[1:]) for k, v in row_data.items()}
    rows.update(b=jnp.arange(nb, dtype=jnp.int32), lo=lo, hi=hi)
    return row_step, rows

  def fwd_local(xs, params, labels):
    (z,), (inv_t,) = xs, params
    lay = layout(z, labels, inv_t)
    n, npad = lay["n"], lay["npad"]
    lse = negatives_lse(lay)
    lse_pad = jnp.pad(lse, (0, npad - n))
    n_pos = (lay["end"] - lay["start"] - 1).astype(z.dtype)
    order = lay["order"]

    def body(logits, pos, r, c, acc):
      gap = r["lse"][:, None] - logits
      # l_ip = softplus(L_i - l_ip); sigmoid(L_i - l_ip) = -d l_ip / d l_ip (kept for the bwd).
      return (acc[0] + jnp.sum(jnp.where(pos, jax.nn.softplus(gap), 0.0), axis=1),
              acc[1] + jnp.sum(jnp.where(pos, jax.nn.sigmoid(gap), 0.0), axis=1))

    zeros = lambda carry, r: (jnp.zeros(lay["bt"], z.dtype), jnp.zeros(lay["bt"], z.dtype))
    row_step, rows = band(lay, dict(q=lay["q"], y=lay["ys"], lse=lse_pad), {}, zeros, body)
    a, w = lax.map(lambda r: row_step(None, r), rows)
    a, w = a.reshape(npad)[:n], w.reshape(npad)[:n]
    return (_unsort(a, order), _unsort(n_pos, order)), (lse, w)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (z,), (inv_t,) = xs, params
    lse, w = residuals
    lay = layout(z, labels, inv_t)
    n, d, bs, npad = lay["n"], lay["d"], lay["bs"], lay["npad"]
    pad = lambda a: jnp.pad(a, (0, npad - n))
    g = pad(cotangents[0][lay["order"]])
    lse_f = pad(_finite_or_zero(lse))
    coef = pad(w) * g
    q = lay["q"]

    # d num_i / d l_ij is  exp(l_ij - L_i) w_i g_i  on negatives and  -sigmoid(L_i - l_ij) g_i
    # on positives. Row side: dq_i = sum_j dl_ij z_j. Column side: dz_j = sum_i dl_ij q_i, and
    # since l is symmetric (l_ij = inv_t <z_i, z_j>), the block (j rows, i columns) already holds
    # l_ji = l_ij: dz_j = sum_i dl(l_ji; L_i, w_i, g_i) q_i is a plain [bs, bs] @ [bs, D] product
    # of that block with the column's statistics, not a transposed one (dl^T @ q, which XLA:CPU
    # measured slower here), and no [N, D] column accumulator is carried through the sweep.
    # Moreover exp(l - L_c) = exp(L_r - M) exp(l - L_r) exp(M - L_c): with the row factor applied
    # to the [bs, D] result and the column factor folded into the right-hand side, one exp per
    # pair and one [bs, bs] @ [bs, 2D] product serve both sides. The factors stay within e^+-20
    # and a flushed exp(l - L_r) < 2^-126 errs by < 2^-126 e^40 (absolute) when the spread of
    # L is <= 40, always the case for t >= 0.06; otherwise two exps per pair are taken.
    # The column coefficients w_i g_i are ~1e-28 once the positives dominate (a converged
    # batch at small t); times the softmax values and the e^+-20 factors, the column-side
    # products would then fall into float32's flushed-to-zero denormal range. Scaling them by
    # 2^-k, with 2^k about their largest magnitude, is exact and is undone on the result.
    cmax = jnp.max(jnp.abs(coef))
    k = jnp.where(cmax > 0, jnp.floor(jnp.log2(jnp.where(cmax > 0, cmax, 1.0))), 0.0)
    k = k.astype(jnp.int32)
    cq = jnp.ldexp(coef, -k)[:, None] * q
    has_neg = jnp.pad(has_terms(lay), (0, npad - n))
    lo_l = jnp.min(jnp.where(has_neg, lse_f, jnp.inf))
    hi_l = jnp.max(jnp.where(has_neg, lse_f, -jnp.inf))
    mid = jnp.where(hi_l >= lo_l, 0.5 * (lo_l + hi_l), 0.0)
    row_f = jnp.exp(jnp.clip(lse_f - mid, -80.0, 80.0))
    col_f = jnp.exp(jnp.clip(mid - lse_f, -80.0, 80.0))
    rhs = jnp.concatenate([lay["zs"], col_f[:, None] * cq], axis=1)

    def shared_row(r):
      q_r, y_r, i_r, l_r, c_r, f_r = r

      def col_step(acc, c):
        y_c, i_c, v_c, rhs_c = c
        e = jnp.where(lse_mask(lay, (y_r, i_r), (y_c, i_c, v_c)),
                      jnp.exp(q_r @ rhs_c[:, :d].T - l_r[:, None]), 0.0)
        return acc + e @ rhs_c, None

      acc, _ = lax.scan(col_step, jnp.zeros((bs, 2 * d), z.dtype),
                        blocks(lay, lay["ys"], lay["idx"], lay["valid"], rhs))
      return acc[:, :d] * c_r[:, None], acc[:, d:] * f_r[:, None]

    def two_exp_row(r):
      q_r, y_r, i_r, l_r, c_r, _ = r

      def col_step(acc, c):
        z_c, y_c, i_c, v_c, l_c, cq_c = c
        logits = q_r @ z_c.T
        neg = lse_mask(lay, (y_r, i_r), (y_c, i_c, v_c))
        e_row = jnp.where(neg, jnp.exp(logits - l_r[:, None]), 0.0)
        e_col = jnp.where(neg, jnp.exp(logits - l_c[None, :]), 0.0)
        return (acc[0] + e_row @ z_c, acc[1] + e_col @ cq_c), None

      zeros = jnp.zeros((bs, d), z.dtype)
      (dq_r, dz_r), _ = lax.scan(col_step, (zeros, zeros),
                                 blocks(lay, lay["zs"], lay["ys"], lay["idx"], lay["valid"],
                                        lse_f, cq))
      return dq_r * c_r[:, None], dz_r

    row_blocks = blocks(lay, q, lay["ys"], lay["idx"], lse_f, coef, row_f)
    dq, dz_cols = lax.cond(hi_l - lo_l <= _SHARED_EXP_SPREAD,
                           lambda rb: lax.map(shared_row, rb),
                           lambda rb: lax.map(two_exp_row, rb), row_blocks)
    dq, dz_cols = dq.reshape(npad, d), jnp.ldexp(dz_cols.reshape(npad, d), k)
    def body(logits, pos, r, c, acc):
      p_row = jnp.where(pos, jax.nn.sigmoid(r["lse"][:, None] - logits), 0.0) * r["g"][:, None]
      p_col = jnp.where(pos, jax.nn.sigmoid(c["lse"][None, :] - logits), 0.0) * c["g"][None, :]
      return acc[0] - p_row @ c["z"], acc[1] - p_col @ c["q"]

    zeros = lambda carry, r: (jnp.zeros((lay["bt"], d), z.dtype),) * 2
    lse_p = pad(lse)
    row_step, rows = band(lay, dict(q=q, y=lay["ys"], lse=lse_p, g=g),
                          dict(q=q, lse=lse_p, g=g), zeros, body)
    dq_band, dz_band = lax.map(lambda r: row_step(None, r), rows)
    dq = dq + dq_band.reshape(npad, d)
    dz_cols = dz_cols + dz_band.reshape(npad, d)
    # l_ij = inv_t <z_i, z_j>: d/d z_i = inv_t dq_i + (column part), d/d inv_t = sum_i <z_i, dq_i>.
    dz_sorted = (inv_t * dq + dz_cols)[:n]
    d_inv_t = jnp.sum(lay["zs"] * dq)
    return (_unsort(dz_sorted, lay["order"]),), (d_inv_t,)

  return fwd_local, bwd_local


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def l2_normalize(x):
  """x / max(|x|, 1e-12) row-wise, finite gradient at 0 (as `sim_jax.losses.l2_normalize`)."""
  sq = jnp.sum(jnp.square(x), axis=1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, NORM_EPS * NORM_EPS))


def _check_common(embeddings, labels, block_size, mesh):
  _checks.check_embeddings(embeddings)
  _checks.check_labels(labels, embeddings.shape[0])
  if block_size is None and mesh is None:
    raise ValueError("block_size must be a positive int for the streaming form, got None; "
                     "use the dense core (block_size=None in the public loss) instead.")
  _checks.check_block_size(block_size)


def _one_block(embeddings, block_size, mesh) -> bool:
  """N <= block_size on one device: the whole matrix is one block, which is the dense core.

  The dense core then holds the same O(N * block_size) and skips the scan and custom-VJP
  machinery, which at one block only adds overhead.
  """
  return mesh is None and embeddings.shape[0] <= block_size


def _sweeper_and_wrap(n, block_size, mesh, full_row: bool):
  """The single-device sweeper, or the cross-device wrap when a mesh is given."""
  if mesh is None:
    return LocalSweeper(block_size, None if full_row else block_size), None
  from sim_jax.losses import distributed  # lazy: distributed imports this module
  return distributed.sharded_sweeper_and_wrap(n, block_size, mesh, full_row)


def _run(bodies_fn, xs, params, labels, n, block_size, mesh, full_row=False):
  """Builds the fwd / bwd bodies for the chosen sweeper and applies the custom-VJP loss."""
  sweeper, wrap = _sweeper_and_wrap(n, block_size, mesh, full_row)
  fwd_local, bwd_local = bodies_fn(sweeper)
  return custom_loss(fwd_local, bwd_local, wrap)(xs, params, labels)


def nt_xent_stats(embeddings, labels, *, temperature, block_size, mesh=None):
  """Streaming per-anchor NT-Xent terms `(num [N], den [N])`, equal to `nt_xent_stats_dense`.

  s_ij = <z_i, z_j> with z = x / max(|x|, 1e-12); for each positive pair (i, p), p != i,
  y_p == y_i:  l_ip = softplus(L_i - s_ip/t),  L_i = log sum_{n: y_n != y_i} exp(s_in/t)
  (pytorch-metric-learning NTXentLoss; l_ip = 0 when i has no negative). num_i = sum_p l_ip,
  den_i = #positives of i.

  Gradient: d num_i / d(s_ip/t) = -sigmoid(L_i - s_ip/t),  d num_i / d(s_in/t) =
  exp(s_in/t - L_i) w_i with w_i = sum_p sigmoid(L_i - s_ip/t), so no exp(s/t) ever overflows,
  even at t = 0.01.

  Single device (mesh=None), the fast form: N <= block_size is the dense core (one block);
  otherwise the rows are sorted by label once (O(N log N) +
  an O(N D) gather), so that each anchor's positives form a contiguous band [start_i, end_i)
  of columns, and 1/t is folded into the row copy q = z/t. The negatives' sweep then costs one
  Gram block and one exp per pair: L_i = |q_i| + log sum_n exp(l_in - |q_i|) with the fixed
  shift |q_i| >= l_in (unit columns) needs no running max (a second pass over every block);
  rows whose sum could have lost terms to float32 underflow (only possible for t < ~0.023) are
  redone exactly by the two-pass online log-sum-exp. The positive terms visit only the 128-wide
  column tiles meeting a row tile's band. The backward sweep uses the symmetry l_ij = l_ji: the
  column-side gradient of a block is a plain product with the column statistics rather than a
  transposed one, one exp per pair serves both sides when the spread of L is <= 40, and the
  temperature gradient is sum_i <z_i, dq_i>, O(N D) instead of a reduction over every pair.
  Across devices (mesh given) two forward sweeps and one backward sweep run over the ring.

  Args:
    embeddings: [N, D] float; labels: [N] int; temperature: scalar > 0 (may be traced, and is
      differentiated); block_size: rows/columns per block (need not divide N); mesh: optional
      Mesh whose "data" axis shards the batch (ring over devices, global-batch negatives).
  Returns float32 (float64 for float64 inputs) arrays num [N], den [N].
  Memory: O(N*D + block_size^2) per device for loss and gradient.
  """
  _check_common(embeddings, labels, block_size, mesh)
  _checks.check_scalar(temperature, "temperature")
  _checks.check_positive(temperature, "temperature")
  # N <= block_size: the dense core. On a quiet machine the one-block sorted sweep took 1.10x
  # (in-process A/B, 10 rounds) to 1.5x (bench/loss_scaling.py) the dense time at N = 1024.
  if _one_block(embeddings, block_size, mesh):
    return infonce.nt_xent_stats_dense(embeddings, labels, temperature)
  dtype = _checks.compute_dtype(embeddings.dtype)
  z = l2_normalize(embeddings.astype(dtype))
  inv_t = 1.0 / jnp.asarray(temperature, dtype)
  labels = jnp.asarray(labels).astype(jnp.int32)
  if mesh is None:
    fwd_local, bwd_local = _sorted_bodies(block_size)
    return custom_loss(fwd_local, bwd_local)((z,), (inv_t,), labels)
  return _run(_nt_xent_bodies, (z,), (inv_t,), labels, z.shape[0], block_size, mesh)


def supcon_stats(embeddings, labels, *, temperature, block_size, mesh=None):
  """Streaming per-anchor SupCon (L_out) terms `(num [N], den [N])`, = `supcon_stats_dense`.

  l_i = log sum_{a != i} exp(s_ia/t) - (1/|P(i)|) sum_{p in P(i)} s_ip/t  (Khosla et al. 2020,
  L_out), s = cosine similarity (norms clamped at 1e-12); num_i = l_i, den_i = 1 for anchors with
  P(i) non-empty, num_i = den_i = 0 otherwise. One forward sweep and one backward sweep
  (d l_i / d(s_ij/t) = softmax_ij - [j in P(i)]/|P(i)|).
  Single device (mesh=None): N <= block_size is the dense core; otherwise the blockwise sweep
  above. (The label-sorted form of `nt_xent_stats` with the positive part as O(N D) class sums
  ran 1.4x faster at N = 8192 but, for tight classes, its separately accumulated softmax and
  class-mean terms cancel in float32: gradient errors up to 3.6e-4 of the largest entry against
  float64 where dense and this form stay below 6e-5.)
  Arguments and memory as `nt_xent_stats`.
  """
  _check_common(embeddings, labels, block_size, mesh)
  _checks.check_scalar(temperature, "temperature")
  _checks.check_positive(temperature, "temperature")
  if _one_block(embeddings, block_size, mesh):
    return infonce.supcon_stats_dense(embeddings, labels, temperature)
  dtype = _checks.compute_dtype(embeddings.dtype)
  z = l2_normalize(embeddings.astype(dtype))
  inv_t = 1.0 / jnp.asarray(temperature, dtype)
  labels = jnp.asarray(labels).astype(jnp.int32)
  return _run(_supcon_bodies, (z,), (inv_t,), labels, z.shape[0], block_size, mesh)


def triplet_stats(embeddings, labels, *, margin, mining, distance, soft, block_size, mesh=None):
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
  (memory O(N*D + N*block_size)) and enumerate positives one column at a time: O(N^3) time, as
  the dense forms, but without the dense [N, N, N] tensor.

  Args: embeddings [N, D] float; labels [N] int; margin scalar >= 0 (differentiated, may be
    traced); mining, distance as above; soft bool; block_size int; mesh optional Mesh.
  """
  _check_common(embeddings, labels, block_size, mesh)
  _checks.check_choice(mining, "mining", MININGS)
  _checks.check_choice(distance, "distance", DISTANCES)
  _checks.check_scalar(margin, "margin")
  _checks.check_non_negative(margin, "margin")
  dtype = _checks.compute_dtype(embeddings.dtype)
  x = embeddings.astype(dtype)
  if distance == "cosine":
    x = l2_normalize(x)
  soft = bool(soft)
  full_row = mining in FULL_ROW_MININGS
  if full_row:
    bodies = lambda sw: _full_row_bodies(sw, mining, distance, soft)
  elif mesh is None:
    fwd_local, bwd_local = _batch_hard_local_bodies(block_size, distance, soft)
    return custom_loss(fwd_local, bwd_local)((x,), (jnp.asarray(margin, dtype),),
                                             jnp.asarray(labels).astype(jnp.int32))
  else:
    bodies = lambda sw: _batch_hard_bodies(sw, distance, soft)
  return _run(bodies, (x,), (jnp.asarray(margin, dtype),), labels.astype(jnp.int32),
              x.shape[0], block_size, mesh, full_row=full_row)
