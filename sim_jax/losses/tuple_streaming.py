"""Streaming (row-blocked, rematerialised) forms of the per-anchor pair losses of `tuple_losses`.

A per-anchor loss l_a that reads only row a of the all-pairs matrix (multi-similarity, Circle,
generalized lifted structure, NCA; lifted structure in two sweeps: first each row's log-sum-exp over
its negatives [M], then the positive pairs, which read it for their column) is computed over strips
of `block_size` anchors: each strip forms its [block_size, M] rows of the matrix from the
embeddings, applies the same row core as the dense form and keeps only (num, den) per anchor. The
strip function is wrapped in `jax.checkpoint` inside `jax.lax.map`, so the backward pass recomputes
each strip instead of storing it: memory O(M D + M block_size) for value and gradient, against
O(M^2) for the dense form, with the same arithmetic (the dense form calls `block_matrix` and the row
core on one strip of M rows). The gradient of the column side accumulates into one [M, D] array
across the strips (the scan carries it).

Under `jax.jit` with embeddings sharded over a mesh, XLA partitions these strips like any other
computation (the global batch is seen); the ring sweeps of `sim_jax.losses.distributed` are not used
here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sim_jax.losses.pairwise import safe_sqrt

KINDS = ("cosine", "euclidean", "squared_euclidean")


def block_matrix(x_rows: jax.Array, index_rows: jax.Array, x: jax.Array, kind: str) -> jax.Array:
  """[b, M] rows of the all-pairs matrix of the prepared embeddings x [M, D].

  kind "cosine": x_rows x^T (x already L2-normalised); "squared_euclidean": the gram form
  |x_r|^2 + |x_c|^2 - 2 x_r.x_c clamped at 0 and exactly 0 against itself (as
  `pairwise.squared_euclidean_matrix`); "euclidean": its safe sqrt.
  """
  g = x_rows @ x.T
  if kind == "cosine":
    return g
  sq = (jnp.sum(jnp.square(x_rows), axis=1)[:, None] + jnp.sum(jnp.square(x), axis=1)[None, :]
        - 2.0 * g)
  self_pair = index_rows[:, None] == jnp.arange(x.shape[0])[None, :]
  sq = jnp.where(self_pair, 0.0, jnp.maximum(sq, 0.0))
  return sq if kind == "squared_euclidean" else safe_sqrt(sq)


def keep_masks(mask):
  """(keep positives, keep negatives) of a miner's `mask`: a bool [M, M] array (the same pairs
  for both), or a (pos, neg) pair of [M, M] weights (`sim_jax.losses.miners.PairMask`: a pair is
  kept where its weight is > 0; counts of repeated draws are not used)."""
  if isinstance(mask, tuple):
    return mask[0] > 0, mask[1] > 0
  return mask, mask


def block_pair_masks(labels_rows, index_rows, labels, mask_rows=None):
  """([b, M] positives, negatives) of a strip: same label and another sample / other label,
  within the rows of a miner's mask (`keep_masks`)."""
  same = labels_rows[:, None] == labels[None, :]
  pos = same & (index_rows[:, None] != jnp.arange(labels.shape[0])[None, :])
  neg = ~same
  if mask_rows is not None:
    keep_pos, keep_neg = keep_masks(mask_rows)
    pos, neg = pos & keep_pos, neg & keep_neg
  return pos, neg


def dense_rows(core: Callable, x: jax.Array, labels: jax.Array, kind: str, mask=None,
               with_index: bool = False):
  """core(matrix [M, M], pos, neg) -> (num [M], den [M]) on the whole matrix at once.

  with_index: the core also receives the rows' global indices [M] (to look up per-row data).
  """
  index = jnp.arange(x.shape[0])
  pos, neg = block_pair_masks(labels, index, labels, mask)
  extra = (index,) if with_index else ()
  return core(block_matrix(x, index, x, kind), pos, neg, *extra)


def stream_rows(core: Callable, x: jax.Array, labels: jax.Array, kind: str, block_size: int,
                with_index: bool = False):
  """`dense_rows` computed in strips of `block_size` anchors, each rematerialised in backward."""
  return stream_row_subset(core, x, labels, jnp.arange(x.shape[0]), x, labels, kind, block_size,
                           with_index)


def stream_row_subset(core: Callable, x_rows: jax.Array, labels_rows: jax.Array,
                      index_rows: jax.Array, x: jax.Array, labels: jax.Array, kind: str,
                      block_size: int, with_index: bool = False):
  """(num [R], den [R]) of the R rows `x_rows` (global indices `index_rows` [R]) against all M
  columns x [M, D], in strips of `block_size` rows, each rematerialised in the backward pass.

  `stream_rows` is the case rows = columns; `sim_jax.losses.sharded` passes a device's rows.
  Rows are padded to a multiple of the block; padded rows are computed on zeros and dropped
  (with_index: every row index handed to the core is clipped to [0, M), the padded ones too).
  """
  n_rows, m = x_rows.shape[0], x.shape[0]
  b = min(block_size, n_rows)
  pad = (-n_rows) % b
  xr = jnp.pad(x_rows, ((0, pad), (0, 0)))
  lr = jnp.pad(labels_rows, (0, pad))
  ir = jnp.pad(index_rows, (0, pad), constant_values=m)  # m: never equal to a column index
  blocks = (xr.reshape(-1, b, x.shape[1]), lr.reshape(-1, b), ir.reshape(-1, b))

  @jax.checkpoint
  def strip(args):
    x_b, l_b, i_b = args
    pos, neg = block_pair_masks(l_b, i_b, labels)
    extra = (jnp.minimum(i_b, m - 1),) if with_index else ()
    return core(block_matrix(x_b, i_b, x, kind), pos, neg, *extra)

  num, den = jax.lax.map(strip, blocks)
  return num.reshape(-1)[:n_rows], den.reshape(-1)[:n_rows]
