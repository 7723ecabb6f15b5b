"""Dense vs streaming contrastive losses: time, XLA temp memory and peak RSS as N grows.

For each loss (NT-Xent, SupCon, batch-hard triplet) and implementation (dense JAX, streaming JAX
with `block_size`, and pytorch-metric-learning's NTXentLoss / SupConLoss /
TripletMarginLoss + BatchHardMiner when importable), D = 128, every point runs in a fresh
subprocess that reports:
  * time of one jitted loss + gradient (fastest of --reps runs after a warm-up),
  * XLA temp bytes of the compiled loss + gradient (`compiled.memory_analysis()`),
  * peak RSS of the subprocess (the parent also kills it past --rss_cap_gib),
and the arithmetic rate 8 N^2 D / time as a fraction of the matrix-multiply rate measured in the
same subprocess just before the loss (a square 2048^3 jnp GEMM, fastest of 5), so both see the
same machine load. Points stop growing for an implementation once it exceeds the
RSS cap or --max_seconds. The largest N of each implementation is reported. Writes the points
(JSON lines), a JSON report and a
markdown table.

  python bench/loss_scaling.py --quick                 # small N, a minute
  python bench/loss_scaling.py                         # full run: bench/results/loss_scaling.*
  python bench/loss_scaling.py --memory_only_n=262144  # compile-only XLA memory at a large N
  python bench/loss_scaling.py --impls streaming --block_size 256,512,1024,2048  # block sweep
  python bench/loss_scaling.py --largest_n_gib=24 --impls dense,streaming  # compile-only search
  python bench/loss_scaling.py --out bench/results/x/ --resume  # go on after a kill
  python bench/loss_scaling.py --table_from bench/results/loss_scaling_tuple/  # docs/losses.md
  python bench/loss_scaling.py --ring=2 --n_max=8192 --reps=5 --out=bench/results/ring_n8192
                                                       # ring on 2 fake devices vs one device

Every all-pairs loss of the trainer's table (`PAIR_TABLE`: multi_similarity, circle,
generalized_lifted_structure, nca, lifted_structure with dense and streaming forms; npairs,
margin_loss, instance_loss, intra_pair_variance, threshold_consistent_margin, histogram,
ranked_list, snr_contrastive, fast_ap and the O(N^3)-memory tuplet_margin, angular, pnp,
dynamic_soft_margin, centroid_triplet (no pml twin) dense) runs beside its pml loss with
the hyper-parameters of its parity test, at the same N (two views of N/2 instances, as above).
The proxy and classification losses (O(N C) against class weights), the explicit-pair losses and
the two-view regularisers are not all-pairs and are left out. `--largest_n_gib` reports, per loss
and implementation, the largest N whose compiled loss + gradient fits the budget by XLA's memory
analysis (temp + arguments + outputs), found by doubling N from 256 and bisecting (multiples
of 256, to within 1/128 of N); nothing is run. Each finished point (or search) is appended to a
JSON-lines file and the summary markdown is rewritten from all of them at once, so a run ended
by `timeout` keeps everything it measured; `--resume` goes on from that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # `python bench/loss_scaling.py` puts bench/, not the repo, on the path

D = 128
# Minimal exact FLOPs of loss + gradient per N^2 D of the streaming forms (which recompute the
# Gram blocks backward). CLIP: the Gram forward (2), its recomputation (2) and dA = dl B,
# dB = dl^T A (2 + 2). SigLIP forms its gradient in the forward sweep (2 + 2 + 2). NT-Xent and
# SupCon compare one set of rows with itself, so their Gram matrix is symmetric: its upper
# triangle forward (1) and backward (1), and dX = (dl + dl^T) X (2), which their streaming forms
# run on one device (`sweep.symmetric_forward_sweep`, `sweep.symmetric_products`). The other
# losses are counted as 8 N^2 D.
MIN_FLOPS_PER_N2D = {"clip": 8.0, "siglip": 6.0, "nt_xent": 4.0, "supcon": 4.0}


@dataclasses.dataclass(frozen=True)
class PairBench:
  """One all-pairs loss of the trainer's table against its pytorch-metric-learning twin.

  build_jax(L, block_size) -> f(x [N, D], y [N]) -> scalar, L = `sim_jax.losses` (block_size None:
  dense); build_pml(P) -> criterion(x, y), P a namespace of pml's `losses`, `distances`,
  `regularizers` (None: pml has no such loss). Hyper-parameters: those of the pml parity tests
  (tests/losses_tuple_test.py, losses_ranked_ssl_test.py, losses_ranking_test.py).
  """
  build_jax: Callable
  build_pml: Callable | None
  streaming: bool = False   # has a row-blocked form (`block_size`)
  cubic: bool = False       # dense form holds [N, N, N]: the timed series starts at n_min / 4
  unit: bool = False        # inputs L2-normalised first (pml's parity holds on unit rows only)
  fresh_pml: bool = False   # a new pml criterion per step (its state is part of the graph)


def _dsm(L, x, y):
  """The trainer's dynamic soft margin: an empty 10-bin histogram (pml's default state)."""
  import jax.numpy as jnp
  return L.dynamic_soft_margin(x, y, jnp.zeros((10,), jnp.float32))[0]


# The all-pairs (N x N, or N x N x N) losses of `sim_jax.losses.objective.LOSSES` with the
# settings of their pml parity tests. Left out: the proxy / classification losses (arcface ...
# soft_triple, p2sgrad: O(N C) against class weights, not all-pairs), the explicit-pair losses
# (contrastive, pair_bce, sigmoid_contrastive: one term per given pair), recall_at_k_surrogate
# (no pml twin), vicreg / barlow_twins (O(N D^2) statistics), pool_triplet (per pool), and
# manifold (against K proxies with per-step meta classes, not all-pairs; an (N + K)^2 inverse).
PAIR_TABLE: dict[str, PairBench] = {
  "multi_similarity": PairBench(lambda L, b: functools.partial(L.multi_similarity, block_size=b),
                                lambda P: P.losses.MultiSimilarityLoss(), streaming=True),
  "circle": PairBench(lambda L, b: functools.partial(L.circle, block_size=b),
                      lambda P: P.losses.CircleLoss(), streaming=True),
  "generalized_lifted_structure": PairBench(
    lambda L, b: functools.partial(L.generalized_lifted_structure, block_size=b),
    lambda P: P.losses.GeneralizedLiftedStructureLoss(), streaming=True),
  "nca": PairBench(lambda L, b: functools.partial(L.nca, block_size=b),
                   lambda P: P.losses.NCALoss(), streaming=True),
  "lifted_structure": PairBench(lambda L, b: functools.partial(L.lifted_structure, block_size=b),
                                lambda P: P.losses.LiftedStructureLoss(), streaming=True),
  "fast_ap": PairBench(lambda L, b: L.fast_ap, lambda P: P.losses.FastAPLoss()),
  # Sohn's dot product on raw embeddings (pml's distances normalise by default).
  "npairs": PairBench(lambda L, b: L.npairs, lambda P: P.losses.NPairsLoss(
    distance=P.distances.DotProductSimilarity(normalize_embeddings=False))),
  "tuplet_margin": PairBench(lambda L, b: L.tuplet_margin,
                             lambda P: P.losses.TupletMarginLoss(), cubic=True),
  "margin_loss": PairBench(lambda L, b: functools.partial(L.margin_loss, beta=1.25),
                           lambda P: P.losses.MarginLoss(beta=1.25)),
  "angular": PairBench(lambda L, b: L.angular, lambda P: P.losses.AngularLoss(), cubic=True,
                       unit=True),
  "instance_loss": PairBench(lambda L, b: L.instance_loss, lambda P: P.losses.InstanceLoss()),
  "intra_pair_variance": PairBench(lambda L, b: L.intra_pair_variance,
                                   lambda P: P.losses.IntraPairVarianceLoss()),
  "threshold_consistent_margin": PairBench(lambda L, b: L.threshold_consistent_margin,
                                           lambda P: P.losses.ThresholdConsistentMarginLoss()),
  # No pml twin (not in pml 2.9); its centroids per (anchor, label) are an [N, N, N] weight.
  "centroid_triplet": PairBench(lambda L, b: L.centroid_triplet, None, cubic=True),
  "histogram": PairBench(lambda L, b: L.histogram, lambda P: P.losses.HistogramLoss()),
  "ranked_list": PairBench(lambda L, b: functools.partial(L.ranked_list, margin=0.4, t_neg=10.0),
                           lambda P: P.losses.RankedListLoss(margin=0.4, Tn=10.0)),
  "pnp": PairBench(lambda L, b: L.pnp, lambda P: P.losses.PNPLoss(), cubic=True),
  # pml keeps its histogram in the autograd graph (a second backward fails): a new criterion
  # per step, i.e. an empty histogram as sim_jax's trainer uses.
  "dynamic_soft_margin": PairBench(lambda L, b: functools.partial(_dsm, L),
                                   lambda P: P.losses.DynamicSoftMarginLoss(), cubic=True,
                                   fresh_pml=True),
  "snr_contrastive": PairBench(
    lambda L, b: functools.partial(L.snr_contrastive, pos_margin=0.1, neg_margin=1.3,
                                   regularization=0.05),
    lambda P: P.losses.SignalToNoiseRatioContrastiveLoss(
      pos_margin=0.1, neg_margin=1.3, embedding_regularizer=P.regularizers.ZeroMeanRegularizer(),
      embedding_reg_weight=0.05)),
}
TUPLE_STREAMING = tuple(k for k, v in PAIR_TABLE.items() if v.streaming)
TUPLE_DENSE = tuple(k for k, v in PAIR_TABLE.items() if not v.streaming)
TWO_TOWER = ("clip", "siglip")
LOSSES = ("nt_xent", "supcon", "triplet_batch_hard") + tuple(PAIR_TABLE) + TWO_TOWER
RING_LOSSES = ("nt_xent", "supcon", "triplet_batch_hard", "clip", "siglip")


# ----------------------------------------------------------------------------------------------
# Child: one measurement
# ----------------------------------------------------------------------------------------------

def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _data(n, d, seed=0, unit=False):
  import numpy as np
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  if unit:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
  # Two views of n/2 instances: every anchor has one positive (SimCLR-like); the triplet and
  # SupCon cases then have the same positive structure.
  y = np.concatenate([np.arange(n // 2), np.arange(n - n // 2)]).astype(np.int32)
  return x, y


def _jax_fn(loss, impl, block_size):
  import importlib

  import jax.numpy as jnp

  from sim_jax.losses import infonce
  triplet_mod = importlib.import_module("sim_jax.losses.triplet")

  def mean(nd):
    return jnp.sum(nd[0]) / jnp.maximum(jnp.sum(nd[1]), 1)

  if loss in TWO_TOWER:
    return _two_tower_fn(loss, None if impl == "dense" else block_size, None)
  if loss in PAIR_TABLE:
    return PAIR_TABLE[loss].build_jax(importlib.import_module("sim_jax.losses"),
                                      None if impl == "dense" else block_size)
  if loss == "nt_xent":
    if impl == "dense":
      return lambda x, y: mean(infonce.nt_xent_stats_dense(x, y, 0.1))
    return lambda x, y: mean(infonce.nt_xent_stats(x, y, temperature=0.1,
                                                   block_size=block_size))
  if loss == "supcon":
    if impl == "dense":
      return lambda x, y: mean(infonce.supcon_stats_dense(x, y, 0.1))
    return lambda x, y: mean(infonce.supcon_stats(x, y, temperature=0.1,
                                                  block_size=block_size))
  if impl == "dense":
    return lambda x, y: mean(triplet_mod.triplet_stats_dense(x, y, 0.2, "batch_hard",
                                                             "euclidean", False))
  return lambda x, y: mean(triplet_mod.triplet_stats(x, y, margin=0.2, mining="batch_hard",
                                                     distance="euclidean", soft=False,
                                                     block_size=block_size))


def _two_tower_fn(loss, block_size, mesh, module=None):
  """CLIP (t = 0.07) or SigLIP (paper init) on (x, its rows rolled by one feature) as towers."""
  import math

  import jax.numpy as jnp

  from sim_jax.losses import two_tower
  module = module or two_tower
  if loss == "clip":
    return lambda x, y: module.clip_infonce(x, jnp.roll(x, 1, axis=1), 0.07,
                                            block_size=block_size, mesh=mesh)
  return lambda x, y: module.siglip(x, jnp.roll(x, 1, axis=1), math.log(10.0), -10.0,
                                    block_size=block_size, mesh=mesh)


def _best_time(fn, reps):
  """Fastest of `reps` runs: on a shared machine the minimum is the least disturbed one."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def run_point(loss, impl, n, block_size, reps, cap_bytes, compile_only=False, d=D):
  """Measures one (loss, impl, N) point at embedding size `d` in this process; returns a dict."""
  out = {"loss": loss, "impl": impl, "n": n, "d": d, "block_size": block_size}
  if impl == "pml":
    x_np, y_np = _data(n, d, unit=is_unit(loss))
    import torch
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(x_np).requires_grad_(True)
    y = torch.from_numpy(y_np.astype("int64"))
    if loss in PAIR_TABLE and PAIR_TABLE[loss].fresh_pml:
      fn = lambda: PAIR_TABLE[loss].build_pml(_pml_namespace())(x, y)
    elif loss in PAIR_TABLE:
      crit = PAIR_TABLE[loss].build_pml(_pml_namespace())
      fn = lambda: crit(x, y)
    elif loss == "nt_xent":
      fn = lambda: pml_losses.NTXentLoss(temperature=0.1)(x, y)
    elif loss == "supcon":
      fn = lambda: pml_losses.SupConLoss(temperature=0.1)(x, y)
    else:
      miner, crit = miners.BatchHardMiner(), pml_losses.TripletMarginLoss(margin=0.2)
      fn = lambda: crit(x, y, miner(x, y))

    def step():
      x.grad = None
      fn().backward()
    step()
    out["seconds"] = _best_time(step, reps)
  else:
    import jax
    import jax.numpy as jnp
    grad_fn = jax.jit(jax.value_and_grad(_jax_fn(loss, impl, block_size)))
    out["device"] = jax.devices()[0].device_kind
    spec = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32))
    compiled = grad_fn.lower(*spec).compile()
    mem = compiled.memory_analysis()
    out["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
    out["xla_total_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                 + mem.output_size_in_bytes)
    if compile_only:
      return out
    if out["xla_temp_bytes"] > cap_bytes:
      out["status"] = "exceeds cap (XLA temp)"
      return out
    x_np, y_np = _data(n, d, unit=is_unit(loss))  # only now: the compile-only search runs at N ~1e7
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    jax.block_until_ready(compiled(x, y))
    out["matmul_flops"] = matmul_rate()
    out["seconds"] = _best_time(lambda: jax.block_until_ready(compiled(x, y)), reps)
    out["fraction_of_matmul"] = 8.0 * n * n * d / out["seconds"] / out["matmul_flops"]
    if loss in MIN_FLOPS_PER_N2D:
      out["fraction_of_matmul_min_flops"] = (MIN_FLOPS_PER_N2D[loss] * n * n * d
                                             / out["seconds"] / out["matmul_flops"])
  out["peak_rss_bytes"] = _peak_rss_bytes()
  out["status"] = "ok"
  return out


def matmul_rate(n=2048, reps=5):
  """FLOP/s of a square [n, n] x [n, n] float32 jnp matmul (2 n^3 FLOPs): the machine's GEMM rate.

  Square and compute-bound on purpose: an [N, D] x [D, N] product with D = 128 writes an N x N
  output and is limited by memory bandwidth, which would understate the achievable rate (the
  streaming blocks stay in cache and beat it).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  return 2.0 * n ** 3 / _best_time(lambda: jax.block_until_ready(f(a)), reps)


def _pml_namespace():
  """pml's `losses`, `distances` and `regularizers` modules, as `PairBench.build_pml` reads them."""
  import types

  from pytorch_metric_learning import distances, losses, regularizers
  return types.SimpleNamespace(losses=losses, distances=distances, regularizers=regularizers)


def is_unit(loss: str) -> bool:
  return loss in PAIR_TABLE and PAIR_TABLE[loss].unit


def has_impl(loss: str, impl: str) -> bool:
  """Whether `loss` has `impl` (the dense-only pair losses have no streaming form, the
  two-tower losses and centroid_triplet no pytorch-metric-learning one)."""
  if impl == "streaming":
    return loss not in TUPLE_DENSE
  if impl == "pml":
    return loss not in TWO_TOWER and (loss not in PAIR_TABLE or PAIR_TABLE[loss].build_pml
                                      is not None)
  return True


def largest_n_within(loss, impl, block_size, budget_bytes, n_start=256, n_max=1 << 26,
                     step=256, d=D):
  """Largest N (a multiple of `step`) whose compiled loss + gradient fits `budget_bytes` by XLA's
  memory analysis; doubling from `n_start`, then bisecting until the bracket is within `step` or
  1/128 of N (the streaming forms reach N ~ 1e7: 8 fewer compiles). Returns (N, its total
  bytes); N = 0 if none fits."""
  fits = lambda n: run_point(loss, impl, n, block_size, 1, budget_bytes, compile_only=True, d=d)
  best, best_bytes, n = 0, 0, n_start
  while n <= n_max:
    total = fits(n)["xla_total_bytes"]
    if total > budget_bytes:
      break
    best, best_bytes, n = n, total, 2 * n
  hi = min(n, n_max + step)
  lo = best
  while hi - lo > max(step, lo // 128) and best:
    mid = (lo + hi) // 2 // step * step
    total = fits(mid)["xla_total_bytes"]
    if total <= budget_bytes:
      lo, best, best_bytes = mid, mid, total
    else:
      hi = mid
  return best, best_bytes


# ----------------------------------------------------------------------------------------------
# Ring: the sharded streaming losses on fake CPU devices vs the single-device streaming loss
# ----------------------------------------------------------------------------------------------

class _Travelling:
  """`_ring_loss_fn`'s `module` for NT-Xent's travelling-accumulator backward."""

  @staticmethod
  def nt_xent_stats(*args, **kwargs):
    from bench import previous_forms
    return previous_forms.nt_xent_stats_travelling(*args, **kwargs)


def _ring_loss_fn(loss, block_size, mesh, module=None):
  """Mean loss of the streaming form of `loss`, sharded over `mesh` (None: one device)."""
  import importlib

  import jax.numpy as jnp

  from sim_jax.losses import infonce
  if loss in TWO_TOWER:
    return _two_tower_fn(loss, block_size, mesh, module)
  mean = lambda nd: jnp.sum(nd[0]) / jnp.maximum(jnp.sum(nd[1]), 1)
  if loss == "nt_xent":
    stats = infonce.nt_xent_stats if module is None else module.nt_xent_stats
    return lambda x, y: mean(stats(x, y, temperature=0.1, block_size=block_size, mesh=mesh))
  if loss == "supcon":
    stats = infonce.supcon_stats if module is None else module.supcon_stats
    return lambda x, y: mean(stats(x, y, temperature=0.1, block_size=block_size, mesh=mesh))
  triplet_mod = importlib.import_module("sim_jax.losses.triplet")
  return lambda x, y: mean(triplet_mod.triplet_stats(x, y, margin=0.2, mining="batch_hard",
                                                     distance="euclidean", soft=False,
                                                     block_size=block_size, mesh=mesh))


def ppermute_cost(mesh, rows: int, reps: int = 5):
  """Median seconds of one ring hop (`ppermute` to the next device) of a [rows, D] float32 chunk
  per device and of a 1-row chunk (the per-hop latency): the model's bandwidth and latency."""
  import statistics

  import jax
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  k = mesh.shape["data"]
  perm = [(j, (j + 1) % k) for j in range(k)]
  hop = jax.jit(jax.shard_map(lambda a: jax.lax.ppermute(a, "data", perm), mesh=mesh,
                              in_specs=P("data"), out_specs=P("data")))
  out = {}
  for key, r in (("chunk", rows), ("latency", 1)):
    # From a callback: also valid when the mesh spans processes (bench/ring_processes.py).
    a = jax.make_array_from_callback((k * r, D), NamedSharding(mesh, P("data")),
                                     lambda idx, r=r: np.ones((k * r, D), np.float32)[idx])
    jax.block_until_ready(hop(a))
    ts = []
    for _ in range(reps):
      start = time.perf_counter()
      jax.block_until_ready(hop(a))
      ts.append(time.perf_counter() - start)
    out[key + "_seconds"] = statistics.median(ts)
  out["chunk_bytes"] = rows * D * 4
  return out


def run_ring(losses, n, block_size, rounds, devices, basic=False, d=D):
  """Loss + gradient of each ring form on `devices` fake devices vs the single-device streaming
  form, compiled once each and timed in interleaved rounds in this one process (the median of
  `rounds` per variant, so all variants see the same machine load).

  Variants: "single" (one device), "ring"; unless `basic`, for NT-Xent and batch-hard also
  "ring_previous" (the previous ring bodies, bench/previous_forms.py; for SupCon also its previous
  one-device form, "single_previous"), for NT-Xent also
  "ring_travelling" (the backward whose column gradients travel the ring, same file); for the
  two-tower losses
  also "single_unfused" / "ring_unfused" (the previous two-sweep forms, same file),
  "ring_no_overlap" (`RingSweeper.overlap = False`: each hop waits for its chunk) and
  "single_columns_first" / "ring_columns_first" (`two_tower.COLUMNS_LAST = False`: the columns'
  gradient as dL^T @ X_rows, the fused form before it); for NT-Xent and SupCon also
  "single_row_forward" / "ring_row_forward" (`sweep.SYMMETRIC_FORWARD = False`: the forward's
  sums over every ordered pair of blocks instead of each unordered pair once) and
  "single_ordered_backward" / "ring_ordered_backward" (`sweep.SYMMETRIC_BACKWARD = False`: the
  backward's products W @ X over every ordered pair of blocks).
  """
  import statistics

  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from bench import previous_forms
  from sim_jax.losses import distributed, sweep, two_tower
  assert jax.device_count() >= devices, jax.devices()
  mesh = Mesh(jax.devices()[:devices], ("data",))
  x_np, y_np = _data(n, d)
  one = (jnp.asarray(x_np), jnp.asarray(y_np))
  rows = NamedSharding(mesh, P("data"))
  sharded = (jax.device_put(x_np, rows), jax.device_put(y_np, rows))

  def compiled(fn, args, overlap=True, columns_last=True, symmetric_forward=True,
               symmetric_backward=True):
    distributed.RingSweeper.overlap, two_tower.COLUMNS_LAST = overlap, columns_last
    sweep.SYMMETRIC_FORWARD, sweep.SYMMETRIC_BACKWARD = symmetric_forward, symmetric_backward
    try:
      return jax.jit(jax.value_and_grad(fn)).lower(*args).compile(), args
    finally:
      distributed.RingSweeper.overlap, two_tower.COLUMNS_LAST = True, True
      sweep.SYMMETRIC_FORWARD, sweep.SYMMETRIC_BACKWARD = True, True

  variants = {}
  for loss in losses:
    variants[(loss, "single")] = compiled(_ring_loss_fn(loss, block_size, None), one)
    variants[(loss, "ring")] = compiled(_ring_loss_fn(loss, block_size, mesh), sharded)
    if loss in TWO_TOWER:
      variants[(loss, "single_columns_first")] = compiled(
        _ring_loss_fn(loss, block_size, None), one, columns_last=False)
    if basic:
      continue
    if loss in ("nt_xent", "triplet_batch_hard"):
      variants[(loss, "ring_previous")] = compiled(
        _ring_loss_fn(loss, block_size, mesh, previous_forms), sharded)
    if loss == "supcon":
      variants[(loss, "single_previous")] = compiled(
        _ring_loss_fn(loss, block_size, None, previous_forms), one)
      variants[(loss, "ring_previous")] = compiled(
        _ring_loss_fn(loss, block_size, mesh, previous_forms), sharded)
    if loss in ("nt_xent", "supcon"):
      variants[(loss, "single_row_forward")] = compiled(
        _ring_loss_fn(loss, block_size, None), one, symmetric_forward=False)
      variants[(loss, "ring_row_forward")] = compiled(
        _ring_loss_fn(loss, block_size, mesh), sharded, symmetric_forward=False)
      variants[(loss, "single_ordered_backward")] = compiled(
        _ring_loss_fn(loss, block_size, None), one, symmetric_backward=False)
      variants[(loss, "ring_ordered_backward")] = compiled(
        _ring_loss_fn(loss, block_size, mesh), sharded, symmetric_backward=False)
    if loss == "nt_xent":
      variants[(loss, "ring_travelling")] = compiled(
        _ring_loss_fn(loss, block_size, mesh, _Travelling), sharded)
    if loss in TWO_TOWER:
      variants[(loss, "single_unfused")] = compiled(
        _ring_loss_fn(loss, block_size, None, previous_forms), one)
      variants[(loss, "ring_unfused")] = compiled(
        _ring_loss_fn(loss, block_size, mesh, previous_forms), sharded)
      variants[(loss, "ring_no_overlap")] = compiled(_ring_loss_fn(loss, block_size, mesh),
                                                     sharded, overlap=False)
      variants[(loss, "ring_columns_first")] = compiled(_ring_loss_fn(loss, block_size, mesh),
                                                        sharded, columns_last=False)
  times = {key: [] for key in variants}
  for fn, args in variants.values():
    jax.block_until_ready(fn(*args))
  gemm = [matmul_rate()]
  for _ in range(rounds):
    for key, (fn, args) in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[key].append(time.perf_counter() - start)
    gemm.append(matmul_rate(reps=1))
  rate = statistics.median(gemm)
  out = {"n": n, "d": d, "block_size": block_size, "devices": devices, "rounds": rounds,
         "matmul_flops": rate, "ppermute": ppermute_cost(mesh, n // devices), "points": []}
  for (loss, variant), ts in times.items():
    sec = statistics.median(ts)
    point = {"loss": loss, "variant": variant, "seconds": sec,
             "ratio_to_single": sec / statistics.median(times[(loss, "single")]),
             "fraction_of_matmul_8n2d": 8.0 * n * n * d / sec / rate}
    if loss in MIN_FLOPS_PER_N2D:
      point["fraction_of_matmul_min_flops"] = MIN_FLOPS_PER_N2D[loss] * n * n * d / sec / rate
    out["points"].append(point)
  return out


def ring_markdown(report):
  lines = [f"N = {report['n']}, D = {report.get('d', D)}, block_size = {report['block_size']}, "
           f"{report['devices']} fake CPU devices in one process, median of {report['rounds']} "
           f"interleaved rounds; GEMM rate (median over the rounds) "
           f"{report['matmul_flops'] / 1e9:.1f} GFLOP/s. Command: `{report['command']}`", "",
           "| loss | variant | time (s) | / single | % GEMM (8 N^2 D) | % GEMM (min FLOPs) |",
           "|---|---|---|---|---|---|"]
  for p in report["points"]:
    low = p.get("fraction_of_matmul_min_flops")
    lines.append(f"| {p['loss']} | {p['variant']} | {p['seconds']:.3f} | "
                 f"{p['ratio_to_single']:.2f} | {100 * p['fraction_of_matmul_8n2d']:.0f}% | "
                 f"{'-' if low is None else f'{100 * low:.0f}%'} |")
  return "\n".join(lines) + "\n"


def _ring_main(args):
  """Runs `run_ring` in a child with the fake devices (set before JAX starts) and writes
  <out>_ring.json / .md."""
  if args.ring_child:
    kw = json.loads(args.ring_child)
    print(json.dumps(run_ring(**kw)))
    return
  kw = {"losses": args.losses.split(","), "n": args.n_max, "block_size": int(args.block_size),
        "rounds": args.reps, "devices": args.ring, "basic": args.ring_basic, "d": args.d}
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={max(args.ring, 1)}",
             PYTHONPATH=_REPO)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--ring", str(args.ring),
                         "--ring_child", json.dumps(kw)], env=env, capture_output=True,
                        text=True)
  if proc.returncode != 0:
    raise SystemExit(proc.stderr[-3000:])
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  report["command"] = "python " + " ".join(sys.argv)
  with open(args.out + "_ring.json", "w") as f:
    json.dump(report, f, indent=1)
  with open(args.out + "_ring.md", "w") as f:
    f.write(ring_markdown(report))
  print(ring_markdown(report))


# ----------------------------------------------------------------------------------------------
# Parent: orchestration with an RSS cap
# ----------------------------------------------------------------------------------------------

def _spawn(args_list, cap_bytes, max_seconds, jax_platforms="cpu"):
  """Runs one point in a fresh interpreter (JAX_PLATFORMS=`jax_platforms`; "" = JAX's own
  choice); kills it past the RSS cap or the time limit."""
  import psutil
  cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args_list)]
  env = dict(os.environ, JAX_PLATFORMS=jax_platforms, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  ps, peak, start, killed = psutil.Process(proc.pid), 0, time.time(), None
  while proc.poll() is None:
    try:
      peak = max(peak, ps.memory_info().rss)
    except psutil.Error:
      pass
    if peak > cap_bytes:
      killed = "over RSS cap"
    elif time.time() - start > max_seconds:
      killed = "over time limit"
    if killed:
      proc.kill()
      break
    time.sleep(0.1)
  stdout, stderr = proc.communicate()
  if killed:
    return {"status": killed, "observed_rss_bytes": peak}
  if proc.returncode != 0:
    return {"status": f"failed (exit {proc.returncode})", "error": stderr[-800:]}
  return json.loads(stdout.strip().splitlines()[-1])


def _pml_available():
  try:
    import pytorch_metric_learning  # noqa: F401
    import torch  # noqa: F401
    return True
  except ImportError:
    return False


def _fmt_bytes(b):
  if b is None:
    return "-"
  return f"{b / 2**20:.1f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def output_paths(out: str) -> dict[str, str]:
  """Where a run writes. `out` a folder (an existing one, or ending in "/"): its points.jsonl,
  summary.md / .json, largest_n.jsonl / .md / .json; else the prefix files <out>.jsonl (the
  points), <out>.md / .json, <out>_largest_n.jsonl / .md / .json (each a twin of a .json, as
  tests/bench_test.py wants of bench/results/)."""
  if out.endswith("/") or os.path.isdir(out):
    os.makedirs(out, exist_ok=True)
    names = {"points": "points.jsonl", "md": "summary.md", "json": "summary.json",
             "largest_points": "largest_n.jsonl", "largest_md": "largest_n.md",
             "largest_json": "largest_n.json"}
    return {k: os.path.join(out, v) for k, v in names.items()}
  return {"points": out + ".jsonl", "md": out + ".md", "json": out + ".json",
          "largest_points": out + "_largest_n.jsonl", "largest_md": out + "_largest_n.md",
          "largest_json": out + "_largest_n.json"}


def read_jsonl(path: str) -> list[dict]:
  """The JSON lines of `path` ([] if absent); a last line cut short by a kill is skipped."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


def append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _write_atomic(path: str, text: str) -> None:
  """Write then rename: a kill mid-write leaves the previous summary, never half a file."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def series_key(p: dict, sweep: bool) -> str:
  """"loss/impl" (+ "@block_size" for streaming points of a block-size sweep)."""
  return f"{p['loss']}/{p['impl']}" + (f"@{p['block_size']}"
                                      if sweep and p["impl"] == "streaming" else "")


def largest_measured(points: list[dict], sweep: bool) -> dict[str, int]:
  """Per series, the largest N whose point finished ("ok")."""
  out = {}
  for p in points:
    if p.get("status") == "ok":
      key = series_key(p, sweep)
      out[key] = max(out.get(key, 0), p["n"])
  return out


def next_n(points: list[dict], loss: str, impl: str, block_size: int, n_start: int):
  """Where a resumed series goes on: None if a recorded point of it stopped it (over a cap,
  failed), else twice its largest recorded N (n_start if none)."""
  mine = [p for p in points if p["loss"] == loss and p["impl"] == impl
          and (impl != "streaming" or p["block_size"] == block_size)]
  if any(p.get("status") != "ok" for p in mine):
    return None
  return 2 * max(p["n"] for p in mine) if mine else n_start


def series_start(loss: str, n_min: int) -> int:
  """The first N of a timed series: n_min, a quarter of it for the O(N^3) dense losses."""
  return max(n_min // 4, 64) if loss in PAIR_TABLE and PAIR_TABLE[loss].cubic else n_min


def comparison_rows(points: list[dict]) -> list[str]:
  """Markdown rows "loss | N | dense | streaming | pml | pml / dense": the finished points only."""
  times = {}
  for p in points:
    if p.get("status") == "ok" and "seconds" in p:
      times.setdefault((p["loss"], p["n"]), {})[p["impl"]] = p["seconds"]
  rows = []
  for (loss, n), t in times.items():
    cells = [f"{t[impl]:.3f}" if impl in t else "-" for impl in ("dense", "streaming", "pml")]
    ratio = f"{t['pml'] / t['dense']:.1f}x" if "pml" in t and "dense" in t else "-"
    rows.append(f"| {loss} | {n} | {' | '.join(cells)} | {ratio} |")
  return rows


def _min_flops_text() -> str:
  return ", ".join(f"{k} {v:g} N^2 D" for k, v in MIN_FLOPS_PER_N2D.items())


def to_markdown(report):
  rates = [p["matmul_flops"] for p in report["points"] if "matmul_flops" in p]
  rate = (f"median GEMM rate over the JAX points {sorted(rates)[len(rates) // 2] / 1e9:.1f} "
          f"GFLOP/s (square {report['matmul_n']}^3 float32 GEMM, measured in each point's "
          f"subprocess right before it)" if rates else "no JAX point finished")
  loads = [p["load_avg_1min"] for p in report["points"] if "load_avg_1min" in p]
  load = (f" 1-minute load average at the points' start: {min(loads):.1f} to {max(loads):.1f}."
          if loads else "")
  devices = sorted({p["device"] for p in report["points"] if "device" in p}) or ["CPU"]
  lines = [
    f"Machine: {report['machine']}. D = {report.get('d', D)}, block_size = "
    f"{','.join(str(b) for b in report.get('block_sizes', [report['block_size']]))}, "
    f"float32, {', '.join(devices)}; {rate}; '% of matmul' = (8 N^2 D / time) / that point's "
    f"GEMM rate (JAX points only), 'minimal FLOPs' the same with the loss's minimal exact count "
    f"where it is not 8 N^2 D ({_min_flops_text()}).{load} Command: `{report['command']}`",
    "",
    "| loss | impl | N | time (s) | XLA temp | peak RSS | % of matmul rate | "
    "% (minimal FLOPs) | status |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  sweep = len(report.get("block_sizes", [])) > 1
  for p in report["points"]:
    frac, low = p.get("fraction_of_matmul"), p.get("fraction_of_matmul_min_flops")
    seconds = f"{p['seconds']:.3f}" if "seconds" in p else "-"
    rss = p.get("peak_rss_bytes", p.get("observed_rss_bytes"))
    impl = f"{p['impl']} ({p['block_size']})" if sweep and p["impl"] == "streaming" else p["impl"]
    lines.append(f"| {p['loss']} | {impl} | {p['n']} | {seconds} | "
                 f"{_fmt_bytes(p.get('xla_temp_bytes'))} | {_fmt_bytes(rss)} | "
                 f"{'-' if frac is None else f'{100 * frac:.0f}%'} | "
                 f"{'-' if low is None else f'{100 * low:.0f}%'} | {p['status']} |")
  if not sweep:
    lines += ["", "Loss + gradient time (s) per loss and N, finished points only:", "",
              "| loss | N | dense | streaming | pml | pml / dense |", "|---|---|---|---|---|---|"]
    lines += comparison_rows(report["points"])
  lines += ["", "Largest N measured within the cap "
            f"({report['rss_cap_gib']} GiB RSS, {report['max_seconds']} s per point):", ""]
  for key, n in sorted(report["largest_n"].items()):
    lines.append(f"- {key}: {n}")
  if report.get("memory_only"):
    lines += ["", "Compile-only XLA temp memory (loss + gradient, not run):", ""]
    for p in report["memory_only"]:
      lines.append(f"- {p['loss']} {p['impl']} N={p['n']}: {_fmt_bytes(p['xla_temp_bytes'])}")
  return "\n".join(lines) + "\n"


def write_summary(points, args, block_sizes, paths, memory_only=()):
  """<out>.json / .md from every point so far (rewritten after each point)."""
  sweep = len(block_sizes) > 1
  report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores "
                       f"(shared with other jobs while measured)",
            "block_size": block_sizes[0], "block_sizes": block_sizes,
            "matmul_n": 2048, "rss_cap_gib": args.rss_cap_gib, "d": args.d,
            "max_seconds": args.max_seconds, "points": list(points),
            "largest_n": largest_measured(points, sweep), "memory_only": list(memory_only),
            "command": "python " + " ".join(sys.argv)}
  _write_atomic(paths["json"], json.dumps(report, indent=1))
  md = to_markdown(report)
  _write_atomic(paths["md"], md)
  return md


def largest_markdown(records: list[dict]) -> str:
  """Table "loss | dense | streaming" of the compile-only largest-N records."""
  found = {}
  for r in records:
    found.setdefault(r["loss"], {})[r["impl"]] = r
  cell = lambda r: "-" if r is None else f"{r['largest_n']} ({_fmt_bytes(r['xla_total_bytes'])})"
  lines = ["Largest N whose compiled loss + gradient fits the budget by XLA's memory analysis "
           f"(temp + arguments + outputs; compile-only, nothing run), D = {records[0]['d']}, "
           f"float32, {records[0].get('device', 'CPU')}.", "",
           "| loss | budget | dense | streaming |", "|---|---|---|---|"]
  for loss, by_impl in found.items():
    budget = next(iter(by_impl.values()))["budget_gib"]
    lines.append(f"| {loss} | {budget} GiB | {cell(by_impl.get('dense'))} | "
                 f"{cell(by_impl.get('streaming'))} |")
  lines += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in records}))]
  return "\n".join(lines) + "\n"


def docs_table(points: list[dict], largest: list[dict], n: int) -> str:
  """docs/losses.md's table: per loss, the largest N within the budget (dense / streaming), the
  loss + gradient time at N = `n` (dense, streaming, pml, pml / fastest JAX form) and the largest
  N each form was timed at within the caps."""
  found = {(r["loss"], r["impl"]): r["largest_n"] for r in largest}
  times = {(p["loss"], p["impl"]): p for p in points if p["n"] == n}
  # A series that stopped below n: its failing point says why (caps, time limit).
  stopped = {(p["loss"], p["impl"]): p for p in points if p["n"] < n and p.get("status") != "ok"}
  budgets = sorted({r["budget_gib"] for r in largest})
  lines = [f"| loss | largest N within {'/'.join(f'{b:g}' for b in budgets)} GiB: dense / "
           f"streaming | N = {n}: dense (s) | streaming (s) | pml (s) | pml / fastest JAX | "
           f"largest N timed: dense / streaming / pml |",
           "|---|---|---|---|---|---|---|"]
  timed = largest_measured(points, sweep=False)
  present = {p["loss"] for p in points + largest}
  for loss in [name for name in LOSSES if name in present]:
    big = " / ".join(f"{found[(loss, i)]:,}" if (loss, i) in found
                     else ("-" if not has_impl(loss, i) else "not run") for i in ("dense",
                                                                              "streaming"))
    cells, ok = [], {}
    for impl in ("dense", "streaming", "pml"):
      p = times.get((loss, impl))
      if not has_impl(loss, impl):
        cells.append("-")
      elif p is None and (loss, impl) in stopped:
        q = stopped[(loss, impl)]
        cells.append(f"stopped at N = {q['n']}: {q['status']}")
      elif p is None:
        cells.append("not reached")
      elif p.get("status") == "ok":
        ok[impl] = p["seconds"]
        cells.append(f"{p['seconds']:.3f}")
      else:
        cells.append(p["status"])
    jax_best = min([ok[i] for i in ("dense", "streaming") if i in ok], default=None)
    ratio = f"{ok['pml'] / jax_best:.1f}x" if "pml" in ok and jax_best else "-"
    ran = " / ".join(("-" if not has_impl(loss, i) else str(timed.get(f"{loss}/{i}", "none")))
                     for i in ("dense", "streaming", "pml"))
    lines.append(f"| `{loss}` | {big} | {' | '.join(cells)} | {ratio} | {ran} |")
  return "\n".join(lines) + "\n"


def run_largest(args, paths):
  """--largest_n_gib: one JSON line per (loss, impl) as its search ends (--resume skips those
  already in the file), then the summary .md / .json from all lines."""
  if not args.resume and os.path.exists(paths["largest_points"]):
    os.remove(paths["largest_points"])
  budget = int(args.largest_n_gib * 2**30)
  block = int(str(args.block_size).split(",")[0])
  os.environ["JAX_PLATFORMS"] = args.platform  # before this process first imports JAX
  import jax
  for loss in args.losses.split(","):
    for impl in [i for i in args.impls.split(",") if i != "pml" and has_impl(loss, i)]:
      done = {(r["loss"], r["impl"], r["budget_gib"])
              for r in read_jsonl(paths["largest_points"])}
      if (loss, impl, args.largest_n_gib) in done:
        continue
      n, total = largest_n_within(loss, impl, block, budget, n_max=args.largest_n_max, d=args.d)
      record = {"loss": loss, "impl": impl, "largest_n": n, "xla_total_bytes": total,
                "budget_gib": args.largest_n_gib, "d": args.d, "block_size": block,
                "device": jax.devices()[0].device_kind,
                "n_max": args.largest_n_max, "load_avg_1min": os.getloadavg()[0],
                "command": "python " + " ".join(sys.argv)}
      append_jsonl(paths["largest_points"], record)
      print(json.dumps(record), flush=True)
      records = read_jsonl(paths["largest_points"])
      _write_atomic(paths["largest_json"], json.dumps(records, indent=1))
      _write_atomic(paths["largest_md"], largest_markdown(records))


def run_series(args, paths, cap, block_sizes):
  """The timed series: each point's JSON line appended to <points> as it ends, the summary
  rewritten after it. A series grows N x 2 until a point fails a cap or passes --n_max."""
  if not args.resume and os.path.exists(paths["points"]):
    os.remove(paths["points"])
  points = read_jsonl(paths["points"])
  impls = [i for i in args.impls.split(",") if i != "pml" or _pml_available()]
  runs = [(impl, bs) for impl in impls
          for bs in (block_sizes if impl == "streaming" else block_sizes[:1])]
  for loss in args.losses.split(","):
    for impl, bs in [r for r in runs if has_impl(loss, r[0])]:
      n = next_n(points, loss, impl, bs, series_start(loss, args.n_min))
      while n is not None and n <= args.n_max:
        child = {"loss": loss, "impl": impl, "n": n, "block_size": bs,
                 "reps": args.reps, "cap_bytes": cap, "d": args.d}
        load = os.getloadavg()[0]
        res = dict(child, **_spawn(child, cap, args.max_seconds, args.platform),
                   load_avg_1min=load)
        res.pop("cap_bytes", None)
        append_jsonl(paths["points"], res)
        points.append(res)
        write_summary(points, args, block_sizes, paths)
        print(json.dumps(res), flush=True)
        n = 2 * n if res.get("status") == "ok" else None
  return points


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--quick", action="store_true", help="small N only (smoke run)")
  parser.add_argument("--losses", default=",".join(LOSSES))
  parser.add_argument("--impls", default="dense,streaming,pml")
  parser.add_argument("--n_min", type=int, default=1024)
  parser.add_argument("--n_max", type=int, default=65536)
  parser.add_argument("--block_size", default="1024",
                      help="streaming block size, or a comma-separated list to sweep (each "
                           "streaming point is then run once per block size)")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--d", type=int, default=D, help="embedding size of every point")
  parser.add_argument("--platform", default="cpu",
                      help="JAX_PLATFORMS of the timed points' subprocesses (cpu, cuda, tpu; "
                           "'' = JAX's own choice). The ring mode always runs fake CPU devices")
  parser.add_argument("--rss_cap_gib", type=float, default=10.0)
  parser.add_argument("--max_seconds", type=float, default=None,
                      help="time limit of one point (default 300 s, 120 s with --quick)")
  parser.add_argument("--memory_only_n", default="",
                      help="comma-separated N to compile (not run) and report XLA temp memory")
  parser.add_argument("--largest_n_gib", type=float, default=0.0,
                      help="only report the largest N within this many GiB of XLA memory "
                           "(compile-only; 0 = off)")
  parser.add_argument("--largest_n_max", type=int, default=1 << 26,
                      help="upper end of the --largest_n_gib search")
  parser.add_argument("--out", default="bench/results/loss_scaling",
                      help="output prefix (<out>.jsonl: the points, <out>.json, <out>.md), or a "
                           "folder (an existing one or ending in '/': <out>/points.jsonl, "
                           "summary.json, summary.md; largest_n.* for --largest_n_gib)")
  parser.add_argument("--resume", action="store_true",
                      help="keep the points already in the points / largest_n JSON lines and "
                           "go on after them (default: start those files afresh)")
  parser.add_argument("--table_from", default="",
                      help="print docs/losses.md's table from the results at this --out (its "
                           "points and largest_n JSON lines) and exit")
  parser.add_argument("--table_n", type=int, default=4096, help="the N of --table_from's times")
  parser.add_argument("--ring", type=int, default=0,
                      help="ring mode on this many fake CPU devices (one process): each of "
                           "--losses (default: the ring losses) at N = --n_max, loss + grad "
                           "of the ring vs the single-device streaming form, median of --reps "
                           "interleaved rounds; writes <out>_ring.json/.md")
  parser.add_argument("--ring_basic", action="store_true",
                      help="ring mode: only the single-device and ring variants")
  parser.add_argument("--ring_child", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.ring:
    if args.losses == ",".join(LOSSES):
      args.losses = ",".join(RING_LOSSES)
    _ring_main(args)
    return
  if args.child:
    point = json.loads(args.child)
    print(json.dumps(run_point(**point)))
    return
  if args.table_from:
    paths = output_paths(args.table_from)
    print(docs_table(read_jsonl(paths["points"]), read_jsonl(paths["largest_points"]),
                     args.table_n), end="")
    return
  unknown = sorted(set(args.losses.split(",")) - set(LOSSES))
  if unknown:
    raise SystemExit(f"--losses: unknown {unknown}; known: {', '.join(LOSSES)}")
  paths = output_paths(args.out)
  if args.largest_n_gib:
    run_largest(args, paths)
    return
  if args.quick:
    args.n_min, args.n_max, args.reps = 256, min(args.n_max, 1024), 1
  if args.max_seconds is None:
    args.max_seconds = 120.0 if args.quick else 300.0
  cap = int(args.rss_cap_gib * 2**30)
  block_sizes = [int(b) for b in str(args.block_size).split(",")]
  points = run_series(args, paths, cap, block_sizes)
  memory_only = []
  for n in [int(v) for v in args.memory_only_n.split(",") if v]:
    for loss in args.losses.split(","):
      for impl in [i for i in ("dense", "streaming") if has_impl(loss, i)]:
        memory_only.append(run_point(loss, impl, n, block_sizes[0], 1, cap, compile_only=True,
                                     d=args.d))
        print(json.dumps(memory_only[-1]), flush=True)
  print(write_summary(points, args, block_sizes, paths, memory_only))


if __name__ == "__main__":
  main()
