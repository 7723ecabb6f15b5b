"""Exact global-batch streaming losses across devices: a ring over the mesh's "data" axis.

Under `jax.jit`, dense math on a globally sharded `jax.Array` already sees the global batch, but
XLA then materialises (slices of) the N x N matrix and gathers the embeddings everywhere. The
sweepers here run the same per-loss bodies as the single-device `sim_jax.losses.sweep` inside
`jax.shard_map`, so that no device ever holds more than one block of the N x N matrix:

* `RingSweeper` (nt_xent, supcon, batch-hard triplet, CLIP InfoNCE, SigLIP): each device keeps
  its N/k rows; the column chunks (embeddings plus per-column metadata) travel around the ring
  with `jax.lax.ppermute`, k - 1 hops, and each visit is swept blockwise, merging the per-row
  running statistics (online log-sum-exp, running max/min). The backward pass makes the same
  tour, carrying each chunk's gradient accumulator along with it; one last hop brings every
  accumulator home, so d loss / d x of a device's rows arrives on that device. Memory per
  device: O(N/k * D + block_size^2); traffic: (k - 1) N/k * D per pass, as an all-gather.
  Sums symmetric in the pair (NT-Xent's and SupCon's, `RingSweeper.symmetric_pairs`) sweep
  each unordered pair of chunks once: k/2 hops, the column sums travelling with their chunk.
* `GatherSweeper` (semi-hard and batch-all triplet, which select negatives from an anchor's
  complete row of distances): all-gathers the [N, D] embeddings (not the N x N matrix), sweeps
  the local row strips against all columns and reduce-scatters the column gradients
  (`psum_scatter`). Memory per device O(N*D + N*block_size).

Both are exact: each anchor's statistics are merged from every column of the global batch, and
the gradient is the single-device gradient for the same global batch (tests compare them on 4
fake CPU devices and across 2 processes). Scalar parameter gradients (temperature, margin, ...)
are summed over the ring with `psum`.

`sweeper_and_wrap` picks the sweeper of a streaming loss (local without a mesh, else ring or
gather) and `run_bodies` applies a loss's bodies with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sim_jax.losses import sweep
from sim_jax.losses.sweep import (
  LocalSweeper,
  backward_sweep,
  custom_loss,
  forward_sweep,
  row_sums,
  tree_add,
)

DATA_AXIS = "data"


def local_pair_sums(block_fn, rows, cols, row_block: int, col_block: int | None,
                    col_axis: int = 0):
  """Sums `block_fn(rows_blk, cols_blk) -> (row_part, col_part)` over all (row, column) blocks.

  The additive sweep of the fused two-tower losses: row_part is a pytree of [br, ...] arrays
  (summed into the rows' accumulator), col_part of [bc, ...] arrays (summed into the columns').
  Sums of fixed-shift exponentials, gradient products dG @ X_cols / dG^T @ X_rows and loss
  terms are all such sums. Padding rows/columns carry `valid = False` and must be masked.
  `col_axis=-1`: col_part leaves are [..., bc] instead, e.g. X_rows^T @ dG [D, bc], and col_acc
  [..., Nc]. Why: XLA:CPU runs the transposed product dG^T @ X_rows (contracting both operands'
  first axis, [bc, D] out) slowly; X_rows^T @ dG into a [D, N] accumulator made CLIP's loss +
  gradient 1.19x faster at D = 128 (docs/performance.md, `bench/loss_scaling.py --ring`).
  Returns (row_acc [Nr, ...], col_acc [Nc, ...] or [..., Nc]).
  """
  nr, nc = sweep.num_rows(rows), sweep.num_rows(cols)
  br = min(row_block, nr)
  bc = nc if col_block is None else min(col_block, nc)
  row_blocks = sweep._to_blocks(sweep._pad_rows(rows, br), br)
  col_blocks = sweep._to_blocks(sweep._pad_rows(cols, bc), bc)
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  row_shape, col_shape = jax.eval_shape(block_fn, first(row_blocks), first(col_blocks))
  zeros = lambda shapes, lead: jax.tree.map(lambda s: jnp.zeros(lead + s.shape, s.dtype), shapes)

  def row_step(col_acc, r):
    def col_step(row_acc, c):
      row_part, col_part = block_fn(r, c)
      return tree_add(row_acc, row_part), col_part

    row_acc, col_part = lax.scan(col_step, zeros(row_shape, ()), col_blocks)
    return tree_add(col_acc, col_part), row_acc

  n_col_blocks = jax.tree.leaves(col_blocks)[0].shape[0]
  col_acc, row_acc = lax.scan(row_step, zeros(col_shape, (n_col_blocks,)), row_blocks)
  if col_axis == 0:
    return sweep._from_blocks(row_acc, nr), sweep._from_blocks(col_acc, nc)
  # [n_blocks, ..., bc] -> [..., n_blocks * bc], cut to the Nc real columns.
  last = lambda a: jnp.moveaxis(a, 0, -2).reshape(a.shape[1:-1] + (-1,))[..., :nc]
  return sweep._from_blocks(row_acc, nr), jax.tree.map(last, col_acc)


def whole_chunks(sweeper, n: int):
  """`sweeper` with one block per device's n rows: `pair_sums` then hands `block_fn` the local
  rows and a whole chunk at a time (O(n D) gather / scatter work per hop, e.g. batch-hard's
  backward)."""
  if isinstance(sweeper, RingSweeper):
    return RingSweeper(n, n, sweeper.k, sweeper.axis)
  return LocalSweeper(n, n)


def pair_sums(sweeper, block_fn, rows, cols, col_axis: int = 0):
  """`local_pair_sums` with `sweeper`'s blocks: on one device, or around its ring (`pairs`)."""
  if isinstance(sweeper, RingSweeper):
    return sweeper.pairs(block_fn, rows, cols, col_axis)
  return local_pair_sums(block_fn, rows, cols, sweeper.row_block, sweeper.col_block, col_axis)


class RingSweeper:
  """Sweeps the local rows against every device's columns, rotating the columns around a ring."""

  overlap = True   # `pairs`: send the next chunk while sweeping this one (see there)

  def __init__(self, row_block: int, col_block: int | None, num_shards: int,
               axis: str = DATA_AXIS):
    self.row_block, self.col_block = row_block, col_block
    self.k, self.axis = num_shards, axis
    self._perm = [(j, (j + 1) % num_shards) for j in range(num_shards)]

  def index(self, n: int) -> jax.Array:
    """Global indices of the local rows (shards are contiguous along the data axis)."""
    return lax.axis_index(self.axis).astype(jnp.int32) * n + jnp.arange(n, dtype=jnp.int32)

  def psum(self, x):
    return lax.psum(x, self.axis)

  def pmax(self, x):
    return lax.pmax(x, self.axis)

  def pmin(self, x):
    return lax.pmin(x, self.axis)

  def _shift(self, tree):
    return lax.ppermute(tree, self.axis, self._perm)

  def forward(self, update, stats, rows, cols):
    """`forward_sweep` of the local rows against every chunk."""
    stats = forward_sweep(update, stats, rows, cols, self.row_block, self.col_block)

    def hop(carry, _):
      stats, cols = carry
      cols = self._shift(cols)
      return (forward_sweep(update, stats, rows, cols, self.row_block, self.col_block), cols), None

    (stats, _), _ = lax.scan(hop, (stats, cols), None, length=self.k - 1)
    return stats

  def symmetric_pairs(self, block_fn, side, own, col_axis: int = 0):
    """Sums over every device's rows of `block_fn`, for sums symmetric in the pair: each
    unordered pair of chunks is swept once, on one of its two devices.

    `block_fn(r, c) -> (row_part, col_part)` as in `local_pair_sums` (both sides of the block:
    the column part goes to c's rows); `own` is the local rows' sums over the device's own
    chunk. Hops 1 .. (k - 1) // 2 sweep the visiting chunk whole, its column sums travelling
    with it; with k even, hop k / 2 meets each device with its opposite, and the pair's block is
    split between them: the lower device sweeps its first half of rows against the chunk, the
    upper one its rows against the chunk's second half. One ppermute then brings every column
    accumulator home. Each device sweeps (k - 1) / 2 chunks instead of k - 1. Returns (row
    sums, column sums) of the local rows, the latter [..., n] with `col_axis=-1`.
    """
    k, n = self.k, sweep.num_rows(side)
    pairs = lambda r, c: local_pair_sums(block_fn, r, c, self.row_block, self.col_block,
                                         col_axis)
    _, col_shape = jax.eval_shape(pairs, side, side)
    col_acc = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), col_shape)
    if k == 1:
      return own, col_acc

    def hop(carry, _):
      row_acc, chunk, col_acc = carry
      chunk, col_acc = self._shift((chunk, col_acc))
      row_part, col_part = pairs(side, chunk)
      return (tree_add(row_acc, row_part), chunk, tree_add(col_acc, col_part)), None

    full = (k - 1) // 2
    carry = (own, side, col_acc)
    if full:
      carry, _ = lax.scan(hop, carry, None, length=full)
    row_acc, chunk, col_acc = carry
    hops = full
    if k % 2 == 0:
      hops += 1
      chunk, col_acc = self._shift((chunk, col_acc))
      h = n // 2
      cut = lambda t, a, b: jax.tree.map(lambda v: v[a:b], t)
      pad = lambda t, lo, hi, axis: jax.tree.map(
        lambda v: jnp.pad(v, [(lo, hi) if i == axis % v.ndim else (0, 0)
                              for i in range(v.ndim)]), t)

      def lower(_):   # rows [0, h) against the whole chunk
        row_part, col_part = pairs(cut(side, 0, h), chunk)
        return pad(row_part, 0, n - h, 0), col_part

      def upper(_):   # every row against the chunk's rows [h, n)
        row_part, col_part = pairs(side, cut(chunk, h, n))
        return row_part, pad(col_part, h, 0, col_axis)

      row_part, col_part = lax.cond(lax.axis_index(self.axis) < k // 2, lower, upper, None)
      row_acc, col_acc = tree_add(row_acc, row_part), tree_add(col_acc, col_part)
    home = [(j, (j - hops) % k) for j in range(k)]
    return row_acc, lax.ppermute(col_acc, self.axis, home)

  def forward_symmetric(self, terms, stats, side):
    """Every local row's sums of `terms(r, c)` over all devices' columns, for terms symmetric
    in their pair: the own chunk by `LocalSweeper.forward_symmetric`, the other chunks by
    `symmetric_pairs` (a block's column sums, taken over its real rows, go to the chunk's rows).
    """
    if not sweep.SYMMETRIC_FORWARD:
      return self.forward(row_sums(terms), stats, side, side)

    def block_fn(r, c):
      t = terms(r, c)
      col = jax.tree.map(lambda m: jnp.sum(jnp.where(r.valid[:, None], m, 0.0), axis=0), t)
      return jax.tree.map(lambda m: jnp.sum(m, axis=1), t), col

    own = LocalSweeper(self.row_block, self.col_block).forward_symmetric(terms, stats, side)
    return tree_add(*self.symmetric_pairs(block_fn, side, own))

  def symmetric_products(self, weights, side):
    """T_j = sum_i W_ji x_i over every device's rows i, for a symmetric W given by blocks
    `weights(r, c)`: the own chunk by `LocalSweeper.symmetric_products`, the other chunks by
    `symmetric_pairs` (W_rc @ x_c for the rows, x_r^T @ W_rc into a [D, n] accumulator for the
    chunk's rows, as in `sweep.symmetric_products`)."""
    if not sweep.SYMMETRIC_BACKWARD:
      row_acc, _ = self.pairs(lambda r, c: (weights(r, c) @ c.x, ()), side, side)
      return row_acc

    def block_fn(r, c):
      w = weights(r, c)
      return w @ c.x, r.x.T @ w

    own = LocalSweeper(self.row_block, self.col_block).symmetric_products(weights, side)
    row_acc, col_acc = self.symmetric_pairs(block_fn, side, own, col_axis=-1)
    return row_acc + col_acc.T

  def backward(self, grad_block, rows, cols):
    dx_r, extra_r, dx_c, extra_c = backward_sweep(grad_block, rows, cols, self.row_block,
                                                  self.col_block)

    def hop(carry, _):
      dx_r, extra_r, cols, dx_c, extra_c = carry
      # A chunk's gradient accumulator travels with the chunk.
      cols, dx_c, extra_c = self._shift((cols, dx_c, extra_c))
      a, b, c, d = backward_sweep(grad_block, rows, cols, self.row_block, self.col_block)
      return (dx_r + a, tree_add(extra_r, b), cols, dx_c + c, tree_add(extra_c, d)), None

    carry = (dx_r, extra_r, cols, dx_c, extra_c)
    (dx_r, extra_r, _, dx_c, extra_c), _ = lax.scan(hop, carry, None, length=self.k - 1)
    dx_c, extra_c = self._shift((dx_c, extra_c))   # the last hop brings accumulators home
    return dx_r, extra_r, dx_c, extra_c

  def pairs(self, block_fn, rows, cols, col_axis: int = 0):
    """`local_pair_sums` of the local rows against every device's columns.

    Each chunk's column accumulator travels with it and one last hop brings it home (as in
    `backward`). With `overlap` (double-buffering) the chunk swept at hop h + 1 is sent during
    hop h, and the accumulator received at hop h is added only after the hop's sweep, so no
    transfer is an input of the sweep in hand and the scheduler may run them side by side;
    without it each hop first receives its chunk, then sweeps it (kept for the A/B in
    bench/loss_scaling.py --ring).
    """
    local = lambda c: local_pair_sums(block_fn, rows, c, self.row_block, self.col_block,
                                      col_axis)
    row_acc, col_acc = local(cols)
    if self.k == 1:
      return row_acc, col_acc

    def hop(carry, prefetch: bool):
      row_acc, chunk, col_acc = carry
      if self.overlap:
        nxt = self._shift(chunk) if prefetch else chunk
        arrived = self._shift(col_acc)         # this chunk's sums from the devices before
      else:
        chunk, arrived = self._shift((chunk, col_acc))
        nxt = chunk
      row_part, col_part = local(chunk)
      return (tree_add(row_acc, row_part), nxt, tree_add(arrived, col_part))

    carry = (row_acc, self._shift(cols) if self.overlap else cols, col_acc)
    if self.k > 2:
      carry, _ = lax.scan(lambda c, _: (hop(c, True), None), carry, None, length=self.k - 2)
    row_acc, _, col_acc = hop(carry, False)    # the last chunk: nothing left to prefetch
    return row_acc, self._shift(col_acc)

class GatherSweeper(RingSweeper):
  """Local row strips against the all-gathered [N, D] columns (full-row triplet minings)."""

  def _gather(self, cols):
    return jax.tree.map(lambda a: lax.all_gather(a, self.axis, tiled=True), cols)

  def forward(self, update, stats, rows, cols):
    return forward_sweep(update, stats, rows, self._gather(cols), self.row_block, None)

  def backward(self, grad_block, rows, cols):
    dx_r, extra_r, dx_c, extra_c = backward_sweep(grad_block, rows, self._gather(cols),
                                                  self.row_block, None)
    scatter = lambda a: lax.psum_scatter(a, self.axis, scatter_dimension=0, tiled=True)
    return dx_r, extra_r, scatter(dx_c), jax.tree.map(scatter, extra_c)


def num_data_shards(mesh) -> int:
  """Size of the mesh's "data" axis; ValueError when the mesh has none."""
  if DATA_AXIS not in mesh.shape:
    raise ValueError(f"mesh must have a {DATA_AXIS!r} axis that shards the batch, got axes "
                     f"{tuple(mesh.shape)}.")
  return mesh.shape[DATA_AXIS]


def shard_map_placed(fn, mesh, in_specs, out_specs):
  """`jax.shard_map(fn)` whose arguments are first laid out as `in_specs` say.

  Inputs made inside a loss (labels, scalars) or passed unsharded must be placed explicitly:
  shard_map over an explicit-axes mesh does not reshard by itself. check_vma=False: the sweeps
  start their carries from fresh (device-invariant) zeros and fold varying data into them,
  which the varying-manual-axes type check would reject.
  """
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  def placed(*args):
    args = [jax.tree.map(lambda a, spec=spec: jax.device_put(a, NamedSharding(mesh, spec)), arg)
            for arg, spec in zip(args, in_specs)]
    return mapped(*args)

  return placed


def shard_wrap(mesh):
  """`wrap(fn, kind)` for `sweep.custom_loss`: runs a fwd / bwd body under `jax.shard_map`.

  Per-row arrays (embeddings, labels, outputs, residuals, cotangents) are split over "data";
  scalar parameters and their (psum-reduced) gradients are replicated.
  """
  rows = P(DATA_AXIS)

  def wrap(fn, kind):
    if kind == "fwd":
      in_specs, out_specs = (rows, P(), rows), rows
    else:
      in_specs, out_specs = (rows, P(), rows, rows, rows), (rows, P())
    return shard_map_placed(fn, mesh, in_specs, out_specs)

  return wrap


def sharded_sweeper_and_wrap(n: int, block_size, mesh, full_row: bool):
  """(sweeper, wrap) for a global batch of `n` rows sharded over `mesh`'s "data" axis."""
  k = num_data_shards(mesh)
  if n % k:
    raise ValueError(f"the global batch size must be divisible by the {k} shards of the mesh's "
                     f"{DATA_AXIS!r} axis, got N = {n}.")
  block = n // k if block_size is None else block_size
  if full_row:
    return GatherSweeper(block, None, k), shard_wrap(mesh)
  return RingSweeper(block, block, k), shard_wrap(mesh)


def sweeper_and_wrap(n: int, block_size, mesh, full_row: bool):
  """(sweeper, wrap) of a streaming loss over `n` rows: `LocalSweeper` and no wrap without a mesh.

  full_row: the loss needs an anchor's complete row of the matrix at once (semi-hard and
  batch-all triplet): row strips against all columns, gathered across devices.
  """
  if mesh is None:
    return LocalSweeper(block_size, None if full_row else block_size), None
  return sharded_sweeper_and_wrap(n, block_size, mesh, full_row)


def run_bodies(bodies_fn, xs, params, labels, *, block_size, mesh, full_row: bool = False):
  """Applies the custom-VJP loss of `bodies_fn(sweeper) -> (fwd_local, bwd_local)`.

  xs: tuple of [n, D] arrays (the sides of the matrix), params: tuple of scalars, labels: [n] int.
  """
  sweeper, wrap = sweeper_and_wrap(xs[0].shape[0], block_size, mesh, full_row)
  fwd_local, bwd_local = bodies_fn(sweeper)
  return custom_loss(fwd_local, bwd_local, wrap)(xs, params, labels)
