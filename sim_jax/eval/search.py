"""Exact k-nearest-neighbour search that never materialises the query x gallery matrix.

`topk(queries, gallery, k)` returns exactly what a full sort of the `[Q, G]` score matrix would,
while holding only `[query_block_size, block_size + k]` scores at a time:

  for each query block (Python loop, all blocks padded to one shape so XLA compiles once):
    running = k candidates with score -inf
    lax.scan over gallery blocks b:
      s_b = scores(query_block, gallery[b])          # [qb, B]
      running = top_k(concat([running, s_b]), k)     # running top-k merge

Scores (higher is better inside the search):
  * `"dot"`:       s(q, g) = q . g
  * `"cosine"`:    s(q, g) = q . g / (max(|q|, eps) * max(|g|, eps))
  * `"euclidean"`: ranked by s(q, g) = 2 q . g - |g|^2  (= |q|^2 - |q - g|^2, monotone in the
    distance for a fixed query); the returned value is the distance
    d = sqrt(max(|q|^2 - s, 0)), sorted ascending.

Ties are broken by the lower gallery index first, exactly: `jax.lax.top_k` is documented to put
the lower position first among equal values, and every merge concatenates candidates in increasing
gallery-index order (the running candidates all come from earlier blocks; in the sharded search,
device d holds rows before device d + 1), so position order equals index order.

When G is not a multiple of the block size, the last block is read at offset `G - B` (no copy of the
gallery is made) and the rows it shares with the previous block are masked to -inf, so each row is
scored once. In the sharded search the gallery is padded to a multiple of the device count and the
padding rows are masked the same way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

METRICS = ("cosine", "euclidean", "dot")
_EPS = 1e-12
# Sentinel index of "no candidate yet"; only ever returned if fewer than k rows were searchable,
# which the input checks rule out.
_NO_INDEX = np.iinfo(np.int32).max


def check_embeddings(x, name: str):
  """Returns `x` as a 2-D float array, or raises ValueError naming `name` and what is wrong.

  A `jax.Array` stays on its device (checked there, no host copy of a large gallery); anything
  else becomes a NumPy array.
  """
  if isinstance(x, jax.Array):
    if x.ndim != 2 or x.shape[0] == 0:
      raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(x))):
      bad = int(jnp.argmin(jnp.all(jnp.isfinite(x), axis=1)))
      raise ValueError(f"{name} has a non-finite value in row {bad}.")
    return x
  arr = np.asarray(x)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be 2-D [N, D], got shape {arr.shape}.")
  if arr.shape[0] == 0:
    raise ValueError(f"{name} is empty (shape {arr.shape}); an evaluation split needs examples.")
  if not np.issubdtype(arr.dtype, np.floating):
    arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
    raise ValueError(f"{name} has a non-finite value in row {bad}: {arr[bad][:8]}...")
  return arr


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _block_scores(q, g, metric: str):
  """Ranking scores [qb, B] of a query block (already normalised for cosine) vs a gallery block."""
  if metric == "cosine":
    g = _normalize(g)
  s = jnp.dot(q, g.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  if metric == "euclidean":
    gg = jnp.sum(jnp.square(g.astype(jnp.float32)), axis=-1)
    s = 2.0 * s - gg[None, :]
  return s


def _scan_topk(q, q_index, g, *, k: int, metric: str, block_size: int, num_valid,
               index_offset, exclude_self: bool):
  """Running top-k of one query block over a gallery held in memory (one device's part).

  q: [qb, D]; q_index: [qb] global gallery index of each query (for exclude_self);
  g: [Gl, D] with Gl >= block_size; rows with global index >= num_valid are padding.
  Returns (scores [qb, k], global indices [qb, k]) sorted by (score desc, index asc).
  """
  num_rows = g.shape[0]
  num_blocks = -(-num_rows // block_size)
  qb = q.shape[0]
  local = jnp.arange(block_size, dtype=jnp.int32)

  def body(carry, b):
    best_s, best_i = carry
    nominal = b * block_size
    # Last block: read the final `block_size` rows instead of padding, mask the overlap.
    start = jnp.minimum(nominal, num_rows - block_size)
    blk = jax.lax.dynamic_slice_in_dim(g, start, block_size, axis=0)
    s = _block_scores(q, blk, metric)
    rows = start + local
    gidx = index_offset + rows
    valid = (rows >= nominal) & (gidx < num_valid)
    valid = jnp.broadcast_to(valid[None, :], s.shape)
    if exclude_self:
      valid = valid & (gidx[None, :] != q_index[:, None])
    s = jnp.where(valid, s, -jnp.inf)
    cat_s = jnp.concatenate([best_s, s], axis=1)
    cat_i = jnp.concatenate([best_i, jnp.broadcast_to(gidx[None, :], s.shape)], axis=1)
    top_s, pos = jax.lax.top_k(cat_s, k)
    return (top_s, jnp.take_along_axis(cat_i, pos, axis=1)), None

  init = (jnp.full((qb, k), -jnp.inf, jnp.float32), jnp.full((qb, k), _NO_INDEX, jnp.int32))
  (best_s, best_i), _ = jax.lax.scan(body, init, jnp.arange(num_blocks, dtype=jnp.int32))
  return best_s, best_i


def _finalize(q, best_s, metric: str):
  """Turns ranking scores into the returned values (distances for euclidean)."""
  if metric == "euclidean":
    qq = jnp.sum(jnp.square(q.astype(jnp.float32)), axis=-1, keepdims=True)
    return jnp.sqrt(jnp.maximum(qq - best_s, 0.0))
  return best_s


@functools.partial(jax.jit, static_argnames=("k", "metric", "block_size", "exclude_self"))
def _topk_single(q, q_index, g, index_offset, *, k, metric, block_size, exclude_self):
  # `index_offset` (always 0) is an argument, not the constant 0: with a single gallery block
  # XLA removes the one-step scan, and the gallery indices ([qb, k + block] int32, 64 MiB at
  # the default block sizes) would become a constant it spends seconds folding
  # (slow_operation_alarm "Constant folding an instruction is taking > 1s").
  if metric == "cosine":
    q = _normalize(q)
  s, i = _scan_topk(q, q_index, g, k=k, metric=metric, block_size=block_size,
                    num_valid=g.shape[0], index_offset=index_offset, exclude_self=exclude_self)
  return _finalize(q, s, metric), i


@functools.lru_cache(maxsize=32)
def _sharded_fn(mesh, axis: str, k: int, metric: str, block_size: int, exclude_self: bool,
                num_valid: int):
  """jit(shard_map): each device scans its contiguous gallery shard, then one top-k merge."""
  def per_device(q, q_index, g_local):
    offset = jax.lax.axis_index(axis).astype(jnp.int32) * g_local.shape[0]
    s, i = _scan_topk(q, q_index, g_local, k=k, metric=metric, block_size=block_size,
                      num_valid=num_valid, index_offset=offset, exclude_self=exclude_self)
    # [n, qb, k] in device order = increasing index order, so the stable merge keeps ties exact.
    all_s = jax.lax.all_gather(s, axis)
    all_i = jax.lax.all_gather(i, axis)
    n, qb, _ = all_s.shape
    all_s = jnp.transpose(all_s, (1, 0, 2)).reshape(qb, n * k)
    all_i = jnp.transpose(all_i, (1, 0, 2)).reshape(qb, n * k)
    top_s, pos = jax.lax.top_k(all_s, k)
    return top_s, jnp.take_along_axis(all_i, pos, axis=1)

  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(axis)),
                         out_specs=(P(), P()), check_vma=False)

  def fn(q, q_index, g):
    if metric == "cosine":
      q = _normalize(q)
    s, i = mapped(q, q_index, g)
    return _finalize(q, s, metric), i

  return jax.jit(fn)


def _default_mesh():
  devices = jax.devices()
  if len(devices) <= 1:
    return None
  return jax.make_mesh((len(devices),), ("gallery",), devices=devices)


def topk(queries, gallery, k: int, metric: str = "euclidean", *, block_size: int = 8192,
         query_block_size: int = 2048, exclude_self: bool = False, mesh=None,
         axis: str | None = None):
  """Exact top-k gallery rows for every query, blockwise (memory O(query_block * block)).

  Args:
    queries: [Q, D] float array.
    gallery: [G, D] float array.
    k: neighbours per query, 1 <= k <= G (k <= G - 1 with `exclude_self`).
    metric: "euclidean" (distance |q - g|_2, returned ascending; the default, as in
      `retrieval.retrieval_metrics` and `config.eval.metric`) or "cosine" | "dot" (similarity,
      returned descending). See the module docstring for the exact formulas.
    block_size: gallery rows scored at a time (clipped to the gallery size per device).
    query_block_size: queries scored at a time; the last block is padded so XLA compiles once.
    exclude_self: queries are the gallery itself (Q == G, same order); row i never returns i.
    mesh: a `jax.sharding.Mesh` to split the gallery over (contiguous shards along `axis`); by
      default all local devices when there are several, else a single-device scan.
    axis: mesh axis name to shard the gallery over (default: the mesh's first axis).

  Returns:
    (scores [Q, k] float32, indices [Q, k] int32) as NumPy arrays, ordered best first; equal
    scores are ordered by the lower gallery index first (the order of a stable full sort).

  Raises:
    ValueError: empty or non-2-D inputs, mismatched D, unknown metric, k out of range, bad block
      sizes, or exclude_self with Q != G.
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
  q = check_embeddings(queries, "queries")
  g = check_embeddings(gallery, "gallery")
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"queries have dimension {q.shape[1]} but gallery rows have {g.shape[1]}.")
  if exclude_self and q.shape[0] != g.shape[0]:
    raise ValueError(f"exclude_self=True needs queries == gallery (same rows, same order); got "
                     f"{q.shape[0]} queries and {g.shape[0]} gallery rows.")
  available = g.shape[0] - int(exclude_self)
  if not isinstance(k, (int, np.integer)) or k < 1 or k > available:
    raise ValueError(f"k={k} must be an integer in [1, {available}] (gallery has {g.shape[0]} "
                     f"rows{', minus the query itself' if exclude_self else ''}).")
  k = int(k)
  for name, val in (("block_size", block_size), ("query_block_size", query_block_size)):
    if not isinstance(val, (int, np.integer)) or val < 1:
      raise ValueError(f"{name} must be a positive integer, got {val!r}.")
  if mesh is None:
    mesh = _default_mesh()
  if mesh is not None and mesh.size == 1:
    mesh = None

  num_q, num_g = q.shape[0], g.shape[0]
  qb = min(int(query_block_size), num_q)
  # Already-placed device arrays are used in place: no per-call host->device gallery copy.
  g_dev = g if isinstance(g, jax.Array) and g.dtype == jnp.float32 else jnp.asarray(g, jnp.float32)
  if mesh is None:
    bs = min(int(block_size), num_g)
    single = functools.partial(_topk_single, k=k, metric=metric, block_size=bs,
                               exclude_self=exclude_self)
    fn = lambda q_blk, q_index, g_dev: single(q_blk, q_index, g_dev, np.int32(0))
  else:
    axis = axis or mesh.axis_names[0]
    n = mesh.shape[axis]
    per_dev = -(-num_g // n)
    bs = min(int(block_size), per_dev)
    pad = per_dev * n - num_g
    if pad:  # padding rows are masked by `num_valid` inside the scan
      g_dev = jnp.concatenate([g_dev, jnp.zeros((pad, g.shape[1]), jnp.float32)])
    g_dev = jax.device_put(g_dev, NamedSharding(mesh, P(axis)))
    fn = _sharded_fn(mesh, axis, k, metric, bs, exclude_self, num_g)

  out_s = np.empty((num_q, k), np.float32)
  out_i = np.empty((num_q, k), np.int32)
  for start in range(0, num_q, qb):
    stop = min(start + qb, num_q)
    q_blk = np.zeros((qb, q.shape[1]), np.float32)
    q_blk[: stop - start] = np.asarray(q[start:stop])
    q_index = np.arange(start, start + qb, dtype=np.int32)
    s, i = fn(jnp.asarray(q_blk), jnp.asarray(q_index), g_dev)
    out_s[start:stop] = np.asarray(s)[: stop - start]
    out_i[start:stop] = np.asarray(i)[: stop - start]
  return out_s, out_i
