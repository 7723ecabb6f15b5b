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
RSS cap or --max_seconds. The largest N of each implementation is reported. Writes JSON and a
markdown table.

  python bench/loss_scaling.py --quick                 # small N, a minute
  python bench/loss_scaling.py                         # full run: bench/results/loss_scaling.*
  python bench/loss_scaling.py --memory_only_n=262144  # compile-only XLA memory at a large N
  python bench/loss_scaling.py --impls streaming --block_size 256,512,1024,2048  # block sweep
  python bench/loss_scaling.py --largest_n_gib=24 --impls dense,streaming  # compile-only search
  python bench/loss_scaling.py --ring=2 --n_max=8192 --reps=5 --out=bench/results/ring_n8192
                                                       # ring on 2 fake devices vs one device

The pair / tuple losses (multi_similarity, circle, generalized_lifted_structure, nca,
lifted_structure: dense and streaming; fast_ap: dense) run beside pml's MultiSimilarityLoss,
CircleLoss, GeneralizedLiftedStructureLoss, NCALoss, LiftedStructureLoss and FastAPLoss at the
same N (two views of N/2 instances, as above). `--largest_n_gib` reports, per loss and
implementation, the largest N whose compiled loss + gradient fits the budget by XLA's memory
analysis (temp + arguments + outputs), found by doubling N and bisecting (multiples of 256);
nothing is run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

TUPLE_STREAMING = ("multi_similarity", "circle", "generalized_lifted_structure", "nca",
                   "lifted_structure")
TUPLE_DENSE = ("fast_ap",)
TWO_TOWER = ("clip", "siglip")
LOSSES = ("nt_xent", "supcon", "triplet_batch_hard") + TUPLE_STREAMING + TUPLE_DENSE + TWO_TOWER
D = 128
# Minimal exact FLOPs of loss + gradient per N^2 D, for the two-tower streaming forms: CLIP needs
# the Gram forward (2), its recomputation backward (2) and dA = dl B, dB = dl^T A (2 + 2); SigLIP
# forms its gradient in the forward sweep (2 + 2 + 2). The other losses are counted as 8 N^2 D.
MIN_FLOPS_PER_N2D = {"clip": 8.0, "siglip": 6.0}
RING_LOSSES = ("nt_xent", "supcon", "triplet_batch_hard", "clip", "siglip")


# ----------------------------------------------------------------------------------------------
# Child: one measurement
# ----------------------------------------------------------------------------------------------

def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _data(n, d, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
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
  if loss in TUPLE_STREAMING + TUPLE_DENSE:
    tuple_losses = importlib.import_module("sim_jax.losses.tuple_losses")
    ranked = importlib.import_module("sim_jax.losses.ranked")
    fn = getattr(ranked if loss == "fast_ap" else tuple_losses, loss)
    if impl == "dense":
      return fn
    return lambda x, y: fn(x, y, block_size=block_size)
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


def run_point(loss, impl, n, block_size, reps, cap_bytes, compile_only=False):
  """Measures one (loss, impl, N) point in this process; returns a dict."""
  out = {"loss": loss, "impl": impl, "n": n, "d": D, "block_size": block_size}
  x_np, y_np = _data(n, D)
  if impl == "pml":
    import torch
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(x_np).requires_grad_(True)
    y = torch.from_numpy(y_np.astype("int64"))
    pml_tuple = {"multi_similarity": "MultiSimilarityLoss", "circle": "CircleLoss",
                 "generalized_lifted_structure": "GeneralizedLiftedStructureLoss",
                 "nca": "NCALoss", "lifted_structure": "LiftedStructureLoss",
                 "fast_ap": "FastAPLoss"}
    if loss in pml_tuple:
      crit = getattr(pml_losses, pml_tuple[loss])()
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
    spec = (jax.ShapeDtypeStruct((n, D), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32))
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
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    jax.block_until_ready(compiled(x, y))
    out["matmul_flops"] = matmul_rate()
    out["seconds"] = _best_time(lambda: jax.block_until_ready(compiled(x, y)), reps)
    out["fraction_of_matmul"] = 8.0 * n * n * D / out["seconds"] / out["matmul_flops"]
    if loss in MIN_FLOPS_PER_N2D:
      out["fraction_of_matmul_min_flops"] = (MIN_FLOPS_PER_N2D[loss] * n * n * D
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


def has_impl(loss: str, impl: str) -> bool:
  """Whether `loss` has `impl` (the dense-only tuple losses have no streaming form, the
  two-tower losses no pytorch-metric-learning one)."""
  return not ((impl == "streaming" and loss in TUPLE_DENSE)
              or (impl == "pml" and loss in TWO_TOWER))


def largest_n_within(loss, impl, block_size, budget_bytes, n_start=1024, n_max=1 << 26,
                     step=256):
  """Largest N (a multiple of `step`) whose compiled loss + gradient fits `budget_bytes` by XLA's
  memory analysis; doubling, then bisecting. Returns (N, its total bytes); N = 0 if none fits."""
  fits = lambda n: run_point(loss, impl, n, block_size, 1, budget_bytes, compile_only=True)
  best, best_bytes, n = 0, 0, n_start
  while n <= n_max:
    total = fits(n)["xla_total_bytes"]
    if total > budget_bytes:
      break
    best, best_bytes, n = n, total, 2 * n
  hi = min(n, n_max + step)
  lo = best
  while hi - lo > step and best:
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
    return lambda x, y: mean(infonce.supcon_stats(x, y, temperature=0.1, block_size=block_size,
                                                  mesh=mesh))
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


def run_ring(losses, n, block_size, rounds, devices, basic=False):
  """Loss + gradient of each ring form on `devices` fake devices vs the single-device streaming
  form, compiled once each and timed in interleaved rounds in this one process (the median of
  `rounds` per variant, so all variants see the same machine load).

  Variants: "single" (one device), "ring"; unless `basic`, for NT-Xent and batch-hard also
  "ring_previous" (the previous ring bodies, bench/previous_forms.py); for the two-tower losses
  also "single_unfused" / "ring_unfused" (the previous two-sweep forms, same file) and
  "ring_no_overlap" (`RingSweeper.overlap = False`: each hop waits for its chunk).
  """
  import statistics

  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from bench import previous_forms
  from sim_jax.losses import distributed
  assert jax.device_count() >= devices, jax.devices()
  mesh = Mesh(jax.devices()[:devices], ("data",))
  x_np, y_np = _data(n, D)
  one = (jnp.asarray(x_np), jnp.asarray(y_np))
  rows = NamedSharding(mesh, P("data"))
  sharded = (jax.device_put(x_np, rows), jax.device_put(y_np, rows))

  def compiled(fn, args, overlap=True):
    distributed.RingSweeper.overlap = overlap
    try:
      return jax.jit(jax.value_and_grad(fn)).lower(*args).compile(), args
    finally:
      distributed.RingSweeper.overlap = True

  variants = {}
  for loss in losses:
    variants[(loss, "single")] = compiled(_ring_loss_fn(loss, block_size, None), one)
    variants[(loss, "ring")] = compiled(_ring_loss_fn(loss, block_size, mesh), sharded)
    if basic:
      continue
    if loss in ("nt_xent", "triplet_batch_hard"):
      variants[(loss, "ring_previous")] = compiled(
        _ring_loss_fn(loss, block_size, mesh, previous_forms), sharded)
    if loss in TWO_TOWER:
      variants[(loss, "single_unfused")] = compiled(
        _ring_loss_fn(loss, block_size, None, previous_forms), one)
      variants[(loss, "ring_unfused")] = compiled(
        _ring_loss_fn(loss, block_size, mesh, previous_forms), sharded)
      variants[(loss, "ring_no_overlap")] = compiled(_ring_loss_fn(loss, block_size, mesh),
                                                     sharded, overlap=False)
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
  out = {"n": n, "d": D, "block_size": block_size, "devices": devices, "rounds": rounds,
         "matmul_flops": rate, "ppermute": ppermute_cost(mesh, n // devices), "points": []}
  for (loss, variant), ts in times.items():
    sec = statistics.median(ts)
    point = {"loss": loss, "variant": variant, "seconds": sec,
             "ratio_to_single": sec / statistics.median(times[(loss, "single")]),
             "fraction_of_matmul_8n2d": 8.0 * n * n * D / sec / rate}
    if loss in MIN_FLOPS_PER_N2D:
      point["fraction_of_matmul_min_flops"] = MIN_FLOPS_PER_N2D[loss] * n * n * D / sec / rate
    out["points"].append(point)
  return out


def ring_markdown(report):
  lines = [f"N = {report['n']}, D = {D}, block_size = {report['block_size']}, "
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
        "rounds": args.reps, "devices": args.ring, "basic": args.ring_basic}
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={max(args.ring, 1)}",
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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

def _spawn(args_list, cap_bytes, max_seconds):
  """Runs one point in a fresh interpreter; kills it past the RSS cap or the time limit."""
  import psutil
  cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args_list)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
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


def to_markdown(report):
  lines = [
    f"Machine: {report['machine']}. D = {D}, block_size = "
    f"{','.join(str(b) for b in report.get('block_sizes', [report['block_size']]))}, "
    f"float32, CPU. Matmul rate at the start of the run: "
    f"{report['matmul_flops'] / 1e9:.1f} GFLOP/s (square {report['matmul_n']}^3 float32 GEMM); "
    f"'% of matmul' = (8 N^2 D / time) / the GEMM rate measured "
    f"in the same subprocess right before the point (JAX points only).",
    "",
    "| loss | impl | N | time (s) | XLA temp | peak RSS | % of matmul rate | status |",
    "|---|---|---|---|---|---|---|---|",
  ]
  sweep = len(report.get("block_sizes", [])) > 1
  for p in report["points"]:
    rate = p.get("fraction_of_matmul")
    seconds = f"{p['seconds']:.3f}" if "seconds" in p else "-"
    rss = p.get("peak_rss_bytes", p.get("observed_rss_bytes"))
    impl = f"{p['impl']} ({p['block_size']})" if sweep and p["impl"] == "streaming" else p["impl"]
    lines.append(f"| {p['loss']} | {impl} | {p['n']} | {seconds} | "
                 f"{_fmt_bytes(p.get('xla_temp_bytes'))} | {_fmt_bytes(rss)} | "
                 f"{'-' if rate is None else f'{100 * rate:.0f}%'} | {p['status']} |")
  lines += ["", "Largest N measured within the cap "
            f"({report['rss_cap_gib']} GiB RSS, {report['max_seconds']} s per point):", ""]
  for key, n in sorted(report["largest_n"].items()):
    lines.append(f"- {key}: {n}")
  if report.get("memory_only"):
    lines += ["", "Compile-only XLA temp memory (loss + gradient, not run):", ""]
    for p in report["memory_only"]:
      lines.append(f"- {p['loss']} {p['impl']} N={p['n']}: {_fmt_bytes(p['xla_temp_bytes'])}")
  return "\n".join(lines) + "\n"


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
  parser.add_argument("--rss_cap_gib", type=float, default=10.0)
  parser.add_argument("--max_seconds", type=float, default=300.0)
  parser.add_argument("--memory_only_n", default="",
                      help="comma-separated N to compile (not run) and report XLA temp memory")
  parser.add_argument("--largest_n_gib", type=float, default=0.0,
                      help="only report the largest N within this many GiB of XLA memory "
                           "(compile-only; 0 = off)")
  parser.add_argument("--largest_n_max", type=int, default=1 << 26,
                      help="upper end of the --largest_n_gib search")
  parser.add_argument("--out", default="bench/results/loss_scaling",
                      help="output prefix: writes <out>.json and <out>.md")
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

  if args.largest_n_gib:
    budget = int(args.largest_n_gib * 2**30)
    found = {}
    for loss in args.losses.split(","):
      for impl in [i for i in args.impls.split(",") if i != "pml" and has_impl(loss, i)]:
        n, total = largest_n_within(loss, impl, int(str(args.block_size).split(",")[0]), budget,
                                    n_max=args.largest_n_max)
        found[f"{loss}/{impl}"] = {"n": n, "xla_total_bytes": total}
        print(json.dumps({"loss": loss, "impl": impl, "largest_n": n,
                          "xla_total_bytes": total}), flush=True)
    with open(args.out + "_largest_n.json", "w") as f:
      json.dump({"budget_gib": args.largest_n_gib, "d": D, "block_size": args.block_size,
                 "n_max": args.largest_n_max, "largest_n": found,
                 "command": " ".join(sys.argv)}, f, indent=1)
    return
  if args.quick:
    args.n_min, args.n_max, args.reps, args.max_seconds = 256, 1024, 1, 120
  cap = int(args.rss_cap_gib * 2**30)
  block_sizes = [int(b) for b in str(args.block_size).split(",")]
  impls = [i for i in args.impls.split(",") if i != "pml" or _pml_available()]
  flops = matmul_rate()
  points, largest = [], {}
  runs = [(impl, bs) for impl in impls
          for bs in (block_sizes if impl == "streaming" else block_sizes[:1])]
  for loss in args.losses.split(","):
    for impl, bs in [r for r in runs if has_impl(loss, r[0])]:
      key = f"{loss}/{impl}" + (f"@{bs}" if impl == "streaming" and len(block_sizes) > 1 else "")
      n = args.n_min
      while n <= args.n_max:
        child = {"loss": loss, "impl": impl, "n": n, "block_size": bs,
                 "reps": args.reps, "cap_bytes": cap}
        res = dict(child, **_spawn(child, cap, args.max_seconds))
        res.pop("cap_bytes", None)
        if res.get("status") == "ok":
          largest[key] = n
        points.append(res)
        print(json.dumps(res), flush=True)
        if res.get("status") != "ok":
          break
        n *= 2
  memory_only = []
  for n in [int(v) for v in args.memory_only_n.split(",") if v]:
    for loss in args.losses.split(","):
      for impl in [i for i in ("dense", "streaming") if has_impl(loss, i)]:
        memory_only.append(run_point(loss, impl, n, block_sizes[0], 1, cap, compile_only=True))
        print(json.dumps(memory_only[-1]), flush=True)
  report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores "
                       f"(shared with other jobs while measured)",
            "block_size": block_sizes[0], "block_sizes": block_sizes, "matmul_flops": flops,
            "matmul_n": 2048, "rss_cap_gib": args.rss_cap_gib,
            "max_seconds": args.max_seconds, "points": points, "largest_n": largest,
            "memory_only": memory_only, "command": " ".join(sys.argv)}
  with open(args.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(args.out + ".md", "w") as f:
    f.write(to_markdown(report))
  print(to_markdown(report))


if __name__ == "__main__":
  main()
