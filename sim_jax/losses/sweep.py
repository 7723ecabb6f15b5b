"""The blockwise sweep shared by every streaming loss: memory O(N*D + N*block_size).

The dense losses build the [N, N] similarity / distance matrix and let autodiff keep it (and
several same-sized temporaries) for the backward pass. The streaming forms never materialise it:

* the forward pass (`forward_sweep`) sweeps row blocks of `block_size` anchors against column
  blocks of `block_size` candidates (`jax.lax.map` over row blocks, `jax.lax.scan` over column
  blocks, so the program size does not grow with N) and keeps per-anchor running statistics only:
  an online log-sum-exp (`LogSumExp`), running max / min with the winning column, counts, sums
  (`symmetric_forward_sweep`: for sums of terms symmetric in the pair, each unordered pair of
  blocks once, its column sums added to the column's rows);
* a `jax.custom_vjp` backward pass (`custom_loss`, `backward_sweep`) recomputes each block from
  the embeddings and the saved per-anchor statistics, forms d loss / d block analytically and
  contracts it straight back into d embeddings (`dX_rows += dG @ X_cols`, `dX_cols += dG^T @
  X_rows`; `symmetric_products`: for a symmetric dG + dG^T, each unordered pair of blocks once).

A loss is written as two bodies, `fwd_local` and `bwd_local`, against a small "sweeper"
interface (`forward`, `backward`, `index`, `psum`): `LocalSweeper` here runs them on one device,
`sim_jax.losses.distributed` runs the same bodies around a ring of devices. The per-loss bodies
live in `infonce_streaming` (NT-Xent, SupCon), `triplet_streaming` and `two_tower`.

Per-row data are NamedTuples whose first fields are those of `Side` (`x`, `label`, `index`,
`valid`); the sweep reads `x` (the Gram blocks) and pads with `valid = False`, which every body
masks. Block sizes that do not divide N are padded and the padding is dropped from the result.

`streams` takes the one dense-or-streaming decision of `nt_xent`, `supcon` and `triplet`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# The fixed-shift forward sums of NT-Xent and SupCon visit each unordered pair of a device's own
# blocks once (`symmetric_forward_sweep`). False: every ordered pair, row sums only (the previous
# form, kept for `bench/loss_scaling.py --ring`'s A/B as `two_tower.COLUMNS_LAST` is).
SYMMETRIC_FORWARD = True
# The same for their backward products W @ X with W = dl + dl^T (`symmetric_products`). False:
# every ordered pair, W_rc @ X_c (the previous form, for the same A/B).
SYMMETRIC_BACKWARD = True

# ----------------------------------------------------------------------------------------------
# The dense-or-streaming decision
# ----------------------------------------------------------------------------------------------


def streams(n: int, block_size: int | None, mesh, *, dense_at_one_block: bool = True) -> bool:
  """Whether an all-pairs loss over N = `n` rows runs its streaming form (else its dense core).

  * block_size None: dense. A mesh is then not needed: under `jax.jit` the dense core applied to
    a globally sharded array already sees the global batch.
  * a mesh: streaming across its devices (ring or gather, `sim_jax.losses.distributed`).
  * one device and N <= block_size with `dense_at_one_block`: dense. The whole matrix is one
    block, so the dense core holds the same O(N * block_size) and skips the scan and custom-VJP
    machinery. NT-Xent and SupCon use this; triplet does not (its one-block batch-hard sweep
    measured faster than the dense core, and semi-hard / batch-all dense are O(N^3) in memory).
  * otherwise: streaming on one device.
  """
  if block_size is None:
    return False
  if mesh is not None:
    return True
  return not (dense_at_one_block and n <= block_size)


# ----------------------------------------------------------------------------------------------
# Per-row data and the block masks
# ----------------------------------------------------------------------------------------------


class Side(NamedTuple):
  """Per-row data of one side (rows or columns) of the all-pairs matrix."""
  x: jax.Array       # [n, D] the vectors whose Gram blocks X_rows X_cols^T the sweep forms
  label: jax.Array   # [n] int; positives share a label
  index: jax.Array   # [n] int32 global row index: tells a sample from the other samples
  valid: jax.Array   # [n] bool: False on the padding rows added by the sweep


def side(x: jax.Array, labels: jax.Array, index: jax.Array) -> Side:
  """The `Side` of `x` [n, D] with its labels [n] and global indices [n] (all rows real)."""
  return Side(x, labels, index, jnp.ones(x.shape[0], bool))


def block_masks(r, c):
  """([br, bc] positives, negatives, others) of a block: same label and another sample, another
  label, another sample; padded columns are in none of them. `r`, `c` have `Side`'s fields."""
  valid = c.valid[None, :]
  same = r.label[:, None] == c.label[None, :]
  other = r.index[:, None] != c.index[None, :]
  return same & other & valid, ~same & valid, other & valid


# ----------------------------------------------------------------------------------------------
# Online log-sum-exp
# ----------------------------------------------------------------------------------------------


class LogSumExp(NamedTuple):
  """Running log-sum-exp of a row: log sum exp(l) = max + log(total)."""
  max: jax.Array     # [n] largest entry seen (-inf while none was)
  total: jax.Array   # [n] sum of exp(l - max) over the entries seen


def lse_init(n: int, dtype) -> LogSumExp:
  return LogSumExp(jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype))


def lse_update(st: LogSumExp, logits: jax.Array, mask: jax.Array) -> LogSumExp:
  """Folds the masked entries of a [n, bc] block into the running log-sum-exp."""
  block_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=1)
  m = jnp.maximum(st.max, block_max)
  # m = -inf while nothing was seen: shift by 0 instead (exp(-inf - 0) = 0, no NaN).
  shift = jnp.where(jnp.isfinite(m), m, 0.0)
  total = st.total * jnp.exp(st.max - shift) + jnp.sum(
    jnp.exp(jnp.where(mask, logits, -jnp.inf) - shift[:, None]), axis=1)
  return LogSumExp(m, total)


def lse_value(st: LogSumExp) -> jax.Array:
  """log sum exp of everything seen; -inf for rows that saw no entry."""
  seen = st.total > 0
  return jnp.where(seen, st.max + jnp.log(jnp.where(seen, st.total, 1.0)), -jnp.inf)


def finite_or_zero(x: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(x), x, 0.0)


def safe_exp_diff(logits: jax.Array, lse: jax.Array, mask: jax.Array) -> jax.Array:
  """exp(l - L) on the mask, 0 elsewhere; never inf*0 (L = -inf rows have an empty mask)."""
  return jnp.where(mask, jnp.exp(jnp.where(mask, logits - finite_or_zero(lse)[:, None],
                                           -jnp.inf)), 0.0)


# ----------------------------------------------------------------------------------------------
# Blocking and the two sweeps
# ----------------------------------------------------------------------------------------------


def num_rows(tree) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def _pad_rows(tree, multiple: int):
  """Zero-pads every leaf along axis 0 to a multiple of `multiple` (bool pads with False)."""
  n = num_rows(tree)
  pad = (-n) % multiple
  if pad == 0:
    return tree
  return jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), tree)


def _to_blocks(tree, b: int):
  return jax.tree.map(lambda a: a.reshape((a.shape[0] // b, b) + a.shape[1:]), tree)


def _from_blocks(tree, n: int):
  return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], tree)


def tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _block(tree, k, b: int, axis: int = 0):
  """Block k (traced) of size b along `axis` of every leaf."""
  return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, k * b, b, axis), tree)


def _add_to_block(acc, k, b: int, values, axis: int = 0):
  """`acc` with `values` added to its block k of size b along `axis` (in place under jit)."""
  return jax.tree.map(
    lambda a, v: lax.dynamic_update_slice_in_dim(a, _block(a, k, b, axis) + v, k * b, axis),
    acc, values)


def symmetric_logit_grads(z, inv_t, both, psum=lambda x: x):
  """(d z, d inv_t) of a loss of the logits l_ij = inv_t <z_i, z_j>, from
  both_j = sum_i (dl_ji + dl_ij) z_i over the local rows j (dl = d loss / d l; `psum` sums over
  the devices holding the other rows).

  d z_j = inv_t both_j, and d inv_t = sum_ij dl_ij <z_i, z_j> = (1/2) sum_j <z_j, both_j>: each
  pair is counted once from each side. O(N D), no per-pair reduction.
  """
  return inv_t * both, 0.5 * psum(jnp.sum(z * both))


def row_sums(terms):
  """The `forward_sweep` update that adds the row sums of `terms(r, c)` ([b, b] leaves)."""
  return lambda stats, r, c: tree_add(stats, jax.tree.map(lambda m: jnp.sum(m, axis=1),
                                                           terms(r, c)))


def forward_sweep(update, stats, rows, cols, row_block: int, col_block: int | None):
  """Folds `update(stats_blk, rows_blk, cols_blk) -> stats_blk` over all (row, column) blocks.

  Args:
    update: per-block update of the per-row statistics (a pytree of [row_block, ...] arrays).
    stats: initial per-row statistics, leaves [Nr, ...].
    rows, cols: per-row / per-column NamedTuples (`Side`'s fields first), leading dims Nr / Nc;
      padding is added with `valid = False` and must be masked by `update`.
    row_block, col_block: block sizes (None = all columns in one block).
  Returns the final statistics, leaves [Nr, ...]. Padded rows are computed and dropped.
  """
  nr, nc = num_rows(rows), num_rows(cols)
  br = min(row_block, nr)
  bc = nc if col_block is None else min(col_block, nc)
  row_blocks = _to_blocks(_pad_rows((rows, stats), br), br)
  col_blocks = _to_blocks(_pad_rows(cols, bc), bc)

  def per_row_block(args):
    r, s = args
    s, _ = lax.scan(lambda s, c: (update(s, r, c), None), s, col_blocks)
    return s

  return _from_blocks(lax.map(per_row_block, row_blocks), nr)


def symmetric_forward_sweep(terms, stats, rows, block: int):
  """`forward_sweep` of row sums for terms symmetric in their pair, each unordered pair of
  blocks visited once: half the Gram blocks and half the per-pair work.

  `terms(r, c) -> pytree of [b, b]` gives the per-pair terms of the block of rows r against
  columns c (both blocks of `rows`), masked; it must satisfy terms(c, r) = terms(r, c)^T, and
  padding columns must be masked (their rows, all in the last block, enter only as rows of the
  diagonal block, whose column sums are not taken). Block (r, c), r < c, adds its row sums to
  rows r and its column sums to rows c; a diagonal block adds its row sums only.
  Returns `stats` (leaves [N]) plus every row's sums over all columns.
  """
  n = num_rows(rows)
  b = min(block, n)
  rows_p, stats_p = _pad_rows((rows, stats), b)
  nb = num_rows(rows_p) // b
  pairs = jnp.asarray([(r, c) for r in range(nb) for c in range(r, nb)], jnp.int32)

  def step(acc, rc):
    r, c = rc[0], rc[1]
    t = terms(_block(rows_p, r, b), _block(rows_p, c, b))
    acc = _add_to_block(acc, r, b, jax.tree.map(lambda m: jnp.sum(m, axis=1), t))
    col = jax.tree.map(lambda m: jnp.where(r == c, 0.0, jnp.sum(m, axis=0)).astype(m.dtype), t)
    return _add_to_block(acc, c, b, col), None

  out, _ = lax.scan(step, stats_p, pairs)
  return jax.tree.map(lambda a: a[:n], out)


def symmetric_products(weights, rows, block: int):
  """T_i = sum_j W_ij x_j for a symmetric W given by blocks, each unordered pair of blocks once.

  `weights(r, c) -> [b, b]` gives the block of W with rows r and columns c (blocks of `rows`,
  whose field `x` is the right-hand side); it must satisfy weights(c, r) = weights(r, c)^T, and
  padding rows must have x = 0 (their entries of W then add nothing). Block (r, c), r < c, adds
  W_rc @ x_c to rows r and x_r^T @ W_rc to rows c, through a [D, N] accumulator: XLA:CPU runs
  that product faster than W_rc^T @ x_r, which contracts both operands' first axis (see
  `sim_jax.losses.distributed.local_pair_sums`). A diagonal block adds W_rr @ x_r.
  Returns T [N, D].
  """
  n = num_rows(rows)
  b = min(block, n)
  rows_p = _pad_rows(rows, b)
  nb = num_rows(rows_p) // b

  def diagonal(k):
    r = _block(rows_p, k, b)
    return weights(r, r) @ r.x

  acc = lax.map(diagonal, jnp.arange(nb)).reshape(nb * b, -1)
  pairs = jnp.asarray([(r, c) for r in range(nb) for c in range(r + 1, nb)], jnp.int32)
  if len(pairs) == 0:
    return acc[:n]

  def step(carry, rc):
    row_acc, col_acc = carry
    r, c = _block(rows_p, rc[0], b), _block(rows_p, rc[1], b)
    w = weights(r, c)
    return (_add_to_block(row_acc, rc[0], b, w @ c.x),
            _add_to_block(col_acc, rc[1], b, r.x.T @ w, axis=1)), None

  (row_acc, col_acc), _ = lax.scan(step, (acc, jnp.zeros_like(acc.T)), pairs)
  return (row_acc + col_acc.T)[:n]


def backward_sweep(grad_block, rows, cols, row_block: int, col_block: int | None):
  """Recomputes every block and contracts its cotangent back into the embeddings.

  `grad_block(rows_blk, cols_blk) -> (dG [br, bc], row_extra, col_extra)` returns d loss / d G for
  the Gram block G = X_rows X_cols^T plus per-row / per-column extra cotangents (pytrees of
  [br] / [bc] arrays, e.g. of squared norms or per-row parameter partials), which are summed.
  Returns (dX_rows [Nr, D], row_extra [Nr], dX_cols [Nc, D], col_extra [Nc]).
  """
  nr, nc = num_rows(rows), num_rows(cols)
  br = min(row_block, nr)
  bc = nc if col_block is None else min(col_block, nc)
  row_blocks = _to_blocks(_pad_rows(rows, br), br)
  col_blocks = _to_blocks(_pad_rows(cols, bc), bc)
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  _, row_shape, col_shape = jax.eval_shape(grad_block, first(row_blocks), first(col_blocks))
  zeros = lambda shapes, lead: jax.tree.map(
    lambda s: jnp.zeros(lead + s.shape, s.dtype), shapes)
  x_dtype = rows.x.dtype

  def row_step(col_acc, r):
    def col_step(row_acc, c):
      dg, row_extra, col_extra = grad_block(r, c)
      dx_r, extra_r = row_acc
      row_acc = (dx_r + dg @ c.x, tree_add(extra_r, row_extra))
      return row_acc, (dg.T @ r.x, col_extra)

    init = (jnp.zeros(r.x.shape, x_dtype), zeros(row_shape, ()))
    row_acc, col_part = lax.scan(col_step, init, col_blocks)
    return tree_add(col_acc, col_part), row_acc

  n_col_blocks, d = col_blocks.x.shape[0], rows.x.shape[1]
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

  def pmax(self, x):
    return x

  def pmin(self, x):
    return x

  def forward(self, update, stats, rows, cols):
    return forward_sweep(update, stats, rows, cols, self.row_block, self.col_block)

  def forward_symmetric(self, terms, stats, side):
    """Every row's sums of `terms(r, c)` over all columns of `side` (the same rows), for terms
    symmetric in their pair: `symmetric_forward_sweep` with square blocks."""
    if self.col_block == self.row_block and SYMMETRIC_FORWARD:
      return symmetric_forward_sweep(terms, stats, side, self.row_block)
    return forward_sweep(row_sums(terms), stats, side, side, self.row_block, self.col_block)

  def symmetric_products(self, weights, side):
    """T_i = sum_j W_ij x_j over the rows of `side` for a symmetric W given by blocks
    `weights(r, c)`: `symmetric_products` with square blocks, else every ordered pair."""
    if self.col_block == self.row_block and SYMMETRIC_BACKWARD:
      return symmetric_products(weights, side, self.row_block)
    update = lambda acc, r, c: acc + weights(r, c) @ c.x
    return forward_sweep(update, jnp.zeros_like(side.x), side, side, self.row_block,
                         self.col_block)

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
