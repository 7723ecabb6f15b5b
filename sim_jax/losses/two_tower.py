"""Two-tower (image-text) contrastive losses: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss.

Each comes dense (`block_size=None, mesh=None`), streaming (`block_size=...`: the [N, N] logits
are swept in blocks with a custom VJP, memory O(N*D + block_size^2)) and sharded (`mesh=...`: a
ring over the mesh's "data" axis, see `sim_jax.losses.distributed`; every image sees every text
of the global batch and the gradient equals the single-device one). The streaming forms are
fused: CLIP sweeps both directions' log-sum-exps at once with one exp per pair (8 N^2 D FLOPs for
loss + gradient, `_clip_bodies`), SigLIP forms its gradient in the loss's own sweep (6 N^2 D,
`_siglip_local`). Both L2-normalise the embeddings first (norm clamped at 1e-12), as CLIP and
SigLIP do; row i of `img_emb` and row i of `txt_emb` are the matching pair.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from sim_jax.losses import _checks, distributed, sweep
from sim_jax.numerics import l2_normalize


def _check_towers(img_emb, txt_emb, block_size):
  _checks.check_embeddings(img_emb, "img_emb")
  _checks.check_embeddings(txt_emb, "txt_emb")
  _checks.check_same_shape(img_emb, txt_emb, "img_emb", "txt_emb")
  _checks.check_block_size(block_size)


def _normalized(img_emb, txt_emb):
  dtype = _checks.compute_dtype(jnp.result_type(img_emb, txt_emb))
  return l2_normalize(img_emb.astype(dtype)), l2_normalize(txt_emb.astype(dtype)), dtype


class ClipSide(NamedTuple):
  """A `sweep.Side` of one tower plus, in the backward pass, its log-sum-exps and cotangents."""
  x: jax.Array
  label: jax.Array
  index: jax.Array
  valid: jax.Array
  lse: jax.Array | None = None    # [n] log sum over the other tower (row: i2t, column: t2i)
  coef: jax.Array | None = None   # [n] cotangent (times exp(1/t - lse) in the one-exp form)


# A fixed-shift sum s = sum_j exp(l_j - 1/t) is trusted when s > N * 2^-100: every term it may
# have lost to float32 underflow then changes it by less than 2^-26 relative (as in
# `infonce_streaming`). Below that (possible only when 2/t > 100 ln 2 - ln N, t < ~0.03) the
# two-pass online log-sum-exp is run instead.
_LOG_FLOOR = -100.0 * math.log(2.0)


# The columns' part of a block's gradient, dL^T @ X_rows, is formed as X_rows^T @ dL into a
# [D, N] accumulator, transposed once at the end: with XLA:CPU's transposed-operand product
# dL^T @ X_rows, CLIP's and SigLIP's loss + gradient took 1.19x / 1.22x as long at D = 128
# (`distributed.local_pair_sums`' col_axis). False: that previous form, kept for the A/B of
# `python bench/loss_scaling.py --ring` (as RingSweeper.overlap is).
COLUMNS_LAST = True


def _column_part(dl, x_rows):
  return x_rows.T @ dl if COLUMNS_LAST else dl.T @ x_rows


def _column_pair_sums(sweeper, block_fn, rows, cols):
  """`distributed.pair_sums` of a block_fn whose columns' part is `_column_part`'s; the
  columns' sums come back [Nc, D] either way."""
  row_acc, col_acc = distributed.pair_sums(sweeper, block_fn, rows, cols,
                                           col_axis=-1 if COLUMNS_LAST else 0)
  return row_acc, (col_acc.T if COLUMNS_LAST else col_acc)


def _total_rows(sweeper, n: int) -> int:
  """Global batch size: the local rows times the ring's devices."""
  return n * getattr(sweeper, "k", 1)


def _padded(sweeper, n: int) -> bool:
  """Whether the sweep pads the local rows (padding must then be masked out of the sums)."""
  return n % min(sweeper.row_block, n) != 0


def _tower_sides(sweeper, a, b, labels):
  return (sweep.side(a, labels, sweeper.index(a.shape[0])),
          sweep.side(b, labels, sweeper.index(b.shape[0])))


def _exact_lse(sweeper, a, b, inv_t, labels):
  """Row-wise log sum_j exp(<a_i, b_j> * inv_t) by the online (running-max) log-sum-exp."""
  rows, cols = _tower_sides(sweeper, a, b, labels)

  def update(st, r, c):
    return sweep.lse_update(st, (r.x @ c.x.T) * inv_t,
                            jnp.broadcast_to(c.valid[None, :], (r.x.shape[0], c.x.shape[0])))

  return sweep.lse_value(sweeper.forward(update, sweep.lse_init(a.shape[0], a.dtype), rows, cols))


def _clip_bodies(sweeper):
  """Both directions' log-sum-exps of CLIP in one sweep: one Gram block and one exp per pair.

  For unit rows l_ij = <a_i, b_j> / t <= 1/t, so the constant 1/t is a shift for every row and
  every column at once: e_ij = exp(l_ij - 1/t) serves the image->text sum of row i and the
  text->image sum of column j (`distributed.pair_sums`: row sums stay, column sums travel with
  their chunk around the ring). Backward: d loss / d l_ij = g_i exp(l_ij - L_i) + h_j exp(l_ij -
  M_j) = e_ij (g_i exp(1/t - L_i) + h_j exp(1/t - M_j)), again one exp, and two products per
  block (dA += dl B, dB += dl^T A). FLOPs: 2 N^2 D forward + 6 N^2 D backward = 8 N^2 D.
  """

  def fwd_local(xs, params, labels):
    (a, b), (inv_t,) = xs, params
    rows, cols = _tower_sides(sweeper, a, b, labels)
    padded = _padded(sweeper, a.shape[0])

    def sums(r, c):
      e = jnp.exp((r.x @ c.x.T - 1.0) * inv_t)
      if padded:   # padding rows are zero vectors, whose e = exp(-1/t) must not count
        e = jnp.where(r.valid[:, None] & c.valid[None, :], e, 0.0)
      return jnp.sum(e, axis=1), jnp.sum(e, axis=0)

    s_r, s_c = distributed.pair_sums(sweeper, sums, rows, cols)
    floor = math.log(_total_rows(sweeper, a.shape[0])) + _LOG_FLOOR
    under = jnp.sum(jnp.log(s_r) <= floor) + jnp.sum(jnp.log(s_c) <= floor)
    lr, lc = lax.cond(sweeper.psum(under) > 0,
                      lambda _: (_exact_lse(sweeper, a, b, inv_t, labels),
                                 _exact_lse(sweeper, b, a, inv_t, labels)),
                      lambda _: (inv_t + jnp.log(s_r), inv_t + jnp.log(s_c)), None)
    return (lr, lc), (lr, lc)

  def bwd_local(xs, params, labels, residuals, cotangents):
    (a, b), (inv_t,) = xs, params
    lr, lc = residuals
    gr, gc = cotangents
    floor = math.log(_total_rows(sweeper, a.shape[0])) + _LOG_FLOOR
    under = jnp.sum(lr - inv_t <= floor) + jnp.sum(lc - inv_t <= floor)
    side_r, side_c = _tower_sides(sweeper, a, b, labels)
    # Padding rows / columns are zero vectors: their dl multiplies zeros, no mask needed.

    def one_exp(_):
      rows = ClipSide(*side_r, coef=gr * jnp.exp(inv_t - lr))
      cols = ClipSide(*side_c, coef=gc * jnp.exp(inv_t - lc))

      def grads(r, c):
        dl = jnp.exp((r.x @ c.x.T - 1.0) * inv_t) * (r.coef[:, None] + c.coef[None, :])
        return dl @ c.x, _column_part(dl, r.x)

      return _column_pair_sums(sweeper, grads, rows, cols)

    def two_exp(_):   # 1/t - L may exceed float32's exp range: each softmax on its own
      rows, cols = ClipSide(*side_r, lse=lr, coef=gr), ClipSide(*side_c, lse=lc, coef=gc)

      def grads(r, c):
        logits = (r.x @ c.x.T) * inv_t
        dl = (jnp.exp(logits - r.lse[:, None]) * r.coef[:, None]
              + jnp.exp(logits - c.lse[None, :]) * c.coef[None, :])
        return dl @ c.x, _column_part(dl, r.x)

      return _column_pair_sums(sweeper, grads, rows, cols)

    da, db = lax.cond(sweeper.psum(under) > 0, two_exp, one_exp, None)
    # l_ij = inv_t <a_i, b_j>: d/d inv_t = sum_ij dl_ij <a_i, b_j> = sum_i <a_i, (dl B)_i>.
    return (da * inv_t, db * inv_t), (sweeper.psum(jnp.sum(a * da)),)

  return fwd_local, bwd_local


def _siglip_local(sweeper, with_grad: bool):
  """SigLIP's loss (and, with_grad, its gradient) over the local rows in one sweep.

  Per pair: u = -z l with l = <a_i, b_j> s + c; loss softplus(u) = max(u, 0) + log1p(e) and
  d loss / d l = -z sigmoid(u) = -z where(u >= 0, 1, e) / (1 + e) share one e = exp(-|u|).
  The gradient needs no statistic of the whole row, so it is formed in the same pass as the
  loss (2 N^2 D forward + 4 N^2 D for dA = s dl B, dB = s dl^T A: 6 N^2 D in all).
  Returns f(a, b, scale, bias) -> total loss, or (total, (da, db, d_scale, d_bias)).
  """

  def f(a, b, scale, bias):
    labels = jnp.zeros(a.shape[0], jnp.int32)
    rows, cols = _tower_sides(sweeper, a, b, labels)
    padded = _padded(sweeper, a.shape[0])

    def block(r, c):
      logits = (r.x @ c.x.T) * scale + bias
      pos = r.index[:, None] == c.index[None, :]
      u = jnp.where(pos, -logits, logits)
      e = jnp.exp(-jnp.abs(u))
      loss = jnp.maximum(u, 0.0) + jnp.log1p(e)
      valid = r.valid[:, None] & c.valid[None, :] if padded else None
      if padded:
        loss = jnp.where(valid, loss, 0.0)
      if not with_grad:
        return jnp.sum(loss, axis=1), ()
      sig = jnp.where(u >= 0.0, 1.0, e) / (1.0 + e)
      dl = jnp.where(pos, -sig, sig)
      if padded:
        dl = jnp.where(valid, dl, 0.0)
      return (jnp.sum(loss, axis=1), dl @ c.x, jnp.sum(dl, axis=1)), _column_part(dl, r.x)

    if not with_grad:
      return sweeper.psum(jnp.sum(distributed.pair_sums(sweeper, block, rows, cols)[0]))
    row_acc, col_acc = _column_pair_sums(sweeper, block, rows, cols)
    loss, da, d_bias = row_acc
    # d/d scale = sum_ij dl_ij <a_i, b_j> = sum_i <a_i, (dl B)_i>.
    grads = (da * scale, col_acc * scale, sweeper.psum(jnp.sum(a * da)),
             sweeper.psum(jnp.sum(d_bias)))
    return sweeper.psum(jnp.sum(loss)), grads

  return f


def _siglip_total(a, b, scale, bias, block_size, mesh):
  """sum_ij softplus(-z_ij l_ij) streamed (custom VJP: the gradient is made with the loss)."""
  sweeper, _ = distributed.sweeper_and_wrap(a.shape[0], block_size, mesh, False)
  loss_only, loss_and_grad = _siglip_local(sweeper, False), _siglip_local(sweeper, True)
  if mesh is not None:
    rows, rep = P(distributed.DATA_AXIS), P()
    specs = (rows, rows, rep, rep)
    loss_only = distributed.shard_map_placed(loss_only, mesh, specs, rep)
    loss_and_grad = distributed.shard_map_placed(loss_and_grad, mesh, specs, (rep, specs))

  @jax.custom_vjp
  def total(a, b, scale, bias):
    return loss_only(a, b, scale, bias)

  def total_fwd(a, b, scale, bias):
    return loss_and_grad(a, b, scale, bias)

  def total_bwd(grads, g):
    return jax.tree.map(lambda d: d * g, grads)

  total.defvjp(total_fwd, total_bwd)
  return total(a, b, scale, bias)


def _streamed(bodies_fn, a, b, params, block_size, mesh):
  # Labels are unused by these kernels (the pairing is by index); int zeros keep one signature.
  labels = jnp.zeros(a.shape[0], jnp.int32)
  return distributed.run_bodies(bodies_fn, (a, b), params, labels, block_size=block_size,
                                mesh=mesh)


def clip_infonce(img_emb, txt_emb, temperature, *, block_size=None, mesh=None):
  """Symmetric InfoNCE of CLIP (Radford et al. 2021), both directions averaged.

  With a = img / max(|img|, 1e-12), b = txt / max(|txt|, 1e-12), l_ij = <a_i, b_j> / t:
    loss = 1/2 * ( mean_i [logsumexp_j l_ij - l_ii] + mean_j [logsumexp_i l_ij - l_jj] ),
  i.e. the mean of the image->text and text->image cross-entropies with the diagonal as target
  (open_clip's ClipLoss with logit_scale = 1/t). N = 1 gives 0.

  Args:
    img_emb, txt_emb: [N, D] float, row i of each forms the positive pair.
    temperature: scalar > 0 (may be a traced, learnable value; it is differentiated).
    block_size: None = dense [N, N] logits; an int streams them in blocks (custom VJP).
    mesh: optional Mesh with a "data" axis sharding the batch (ring, global-batch negatives).
  Returns a scalar (float32, float64 for float64 inputs).
  """
  _check_towers(img_emb, txt_emb, block_size)
  _checks.check_scalar(temperature, "temperature")
  _checks.check_positive(temperature, "temperature")
  a, b, dtype = _normalized(img_emb, txt_emb)
  inv_t = 1.0 / jnp.asarray(temperature, dtype)
  diag = jnp.sum(a * b, axis=1) * inv_t
  if block_size is None and mesh is None:
    logits = (a @ b.T) * inv_t
    lse_i2t = jax.nn.logsumexp(logits, axis=1)
    lse_t2i = jax.nn.logsumexp(logits, axis=0)
  else:
    lse_i2t, lse_t2i = _streamed(_clip_bodies, a, b, (inv_t,), block_size, mesh)
  return 0.5 * (jnp.mean(lse_i2t - diag) + jnp.mean(lse_t2i - diag))


def siglip(img_emb, txt_emb, log_temperature, bias, *, block_size=None, mesh=None):
  """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Algorithm 1).

  With a, b the L2-normalised embeddings, l_ij = <a_i, b_j> * exp(log_temperature) + bias and
  z_ij = +1 for i == j, -1 otherwise:
    loss = -(1/N) sum_{i, j} log sigmoid(z_ij l_ij) = (1/N) sum_{i, j} softplus(-z_ij l_ij).
  The paper initialises log_temperature = log(10) and bias = -10; both are differentiated.

  Args: img_emb, txt_emb [N, D] float (row i of each is the positive pair); log_temperature,
    bias: scalars; block_size, mesh as `clip_infonce`. Returns a scalar.
  """
  _check_towers(img_emb, txt_emb, block_size)
  _checks.check_scalar(log_temperature, "log_temperature")
  _checks.check_scalar(bias, "bias")
  a, b, dtype = _normalized(img_emb, txt_emb)
  scale = jnp.exp(jnp.asarray(log_temperature, dtype))
  bias = jnp.asarray(bias, dtype)
  n = a.shape[0]
  if block_size is None and mesh is None:
    logits = (a @ b.T) * scale + bias
    sign = 2.0 * jnp.eye(n, dtype=dtype) - 1.0
    return jnp.sum(jax.nn.softplus(-sign * logits)) / n
  return _siglip_total(a, b, scale, bias, block_size, mesh) / n
