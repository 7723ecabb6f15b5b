"""Two-tower (image-text) contrastive losses: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss.

Each comes dense (`block_size=None, mesh=None`), streaming (`block_size=...`: the [N, N] logits
are swept in blocks with a custom VJP, memory O(N*D + block_size^2)) and sharded (`mesh=...`: a
ring over the mesh's "data" axis, see `sim_jax.losses.distributed`; every image sees every text
of the global batch and the gradient equals the single-device one). Both L2-normalise the
embeddings first (norm clamped at 1e-12), as CLIP and SigLIP do; row i of `img_emb` and row i of
`txt_emb` are the matching pair.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sim_jax.losses import _checks, sweep
from sim_jax.losses.distributed import run_bodies
from sim_jax.numerics import l2_normalize


def _check_towers(img_emb, txt_emb, block_size):
  _checks.check_embeddings(img_emb, "img_emb")
  _checks.check_embeddings(txt_emb, "txt_emb")
  _checks.check_same_shape(img_emb, txt_emb, "img_emb", "txt_emb")
  _checks.check_block_size(block_size)


def _normalized(img_emb, txt_emb):
  dtype = _checks.compute_dtype(jnp.result_type(img_emb, txt_emb))
  return l2_normalize(img_emb.astype(dtype)), l2_normalize(txt_emb.astype(dtype)), dtype


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
    lse_i2t = _streamed(_row_lse_bodies, a, b, (inv_t,), block_size, mesh)
    lse_t2i = _streamed(_row_lse_bodies, b, a, (inv_t,), block_size, mesh)
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
  per_row = _streamed(_siglip_bodies, a, b, (scale, bias), block_size, mesh)
  return jnp.sum(per_row) / n
