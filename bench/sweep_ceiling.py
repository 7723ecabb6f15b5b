"""What fraction of the GEMM rate a blockwise all-pairs sweep can reach on this CPU.

The streaming losses sweep [b, D] x [D, b] Gram blocks and do per-pair work on each (an exp,
masks, row sums). This times, in interleaved rounds of one process, the plain GEMM (2048^3 and
the sweep's block shapes) and three sweeps over N x N pairs with the losses' scan structure:
the Gram blocks summed by row (no per-pair work beyond the reduction), plus one exp per pair,
plus a label mask (compare, select) as the losses' negatives' pass has. Rates count 2 N^2 D
FLOPs per sweep, so each sweep's rate against the GEMM's is the ceiling of a loss pass that
does that much per-pair work.

  python bench/sweep_ceiling.py --n=8192 --d=128 --block_size=1024 --rounds=10 \\
      --out=bench/results/sweep_ceiling
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from bench import workloads  # noqa: E402


def gemm(m: int, k: int, n: int):
  """(jitted a @ b, args) for [m, k] @ [k, n] float32."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.random((m, k), np.float32))
  b = jnp.asarray(rng.random((k, n), np.float32))
  return jax.jit(lambda a, b: a @ b), (a, b), 2.0 * m * k * n


def sweep(n: int, d: int, block: int, work: str):
  """(jitted sweep, args, FLOPs): row blocks mapped, column blocks scanned, as in
  `sim_jax.losses.sweep.forward_sweep`; `work` is the per-pair work on each Gram block."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.concatenate([np.arange(n // 2)] * 2).astype(np.int32)
  xb = jnp.asarray(x.reshape(n // block, block, d))
  yb = jnp.asarray(labels.reshape(n // block, block))

  def per_pair(g, yr, yc):
    if work == "sum":
      return g
    e = jnp.exp((g - 1.0) * 10.0)
    if work == "exp":
      return e
    return jnp.where(yr[:, None] != yc[None, :], e, 0.0)   # "exp_mask"

  def run(xb, yb):
    def row(args):
      xr, yr = args

      def col(acc, c):
        xc, yc = c
        return acc + jnp.sum(per_pair(xr @ xc.T, yr, yc), axis=1), None

      return lax.scan(col, jnp.zeros(block, xr.dtype), (xb, yb))[0]

    return lax.map(row, (xb, yb))

  return jax.jit(run), (xb, yb), 2.0 * n * n * d


def measure(n: int, d: int, block: int, rounds: int) -> dict:
  cases = {
      "gemm 2048x2048x2048": gemm(2048, 2048, 2048),
      f"gemm {block}x{d}x{block} (one Gram block per call)": gemm(block, d, block),
      f"gemm {block}x{block}x{d} (one block x embeddings per call)": gemm(block, block, d),
      "sweep: Gram blocks, row sums": sweep(n, d, block, "sum"),
      "sweep: + one exp per pair": sweep(n, d, block, "exp"),
      "sweep: + one exp and a label mask per pair": sweep(n, d, block, "exp_mask"),
  }
  seconds = workloads.interleaved_medians(
      {name: functools.partial(fn, *args) for name, (fn, args, _) in cases.items()},
      rounds)
  rates = {name: flops / seconds[name] for name, (_, _, flops) in cases.items()}
  base = rates["gemm 2048x2048x2048"]
  return {"n": n, "d": d, "block_size": block, "rounds": rounds,
          "points": [{"case": name, "seconds": seconds[name],
                      "gflops": rates[name] / 1e9, "fraction_of_gemm": rates[name] / base}
                     for name in cases]}


def markdown(report: dict) -> str:
  lines = [f"N = {report['n']}, D = {report['d']}, block {report['block_size']}, median of "
           f"{report['rounds']} interleaved rounds. Command: `{report['command']}`", "",
           "| case | time (s) | GFLOP/s | / 2048^3 GEMM |", "|---|---|---|---|"]
  for p in report["points"]:
    lines.append(f"| {p['case']} | {p['seconds']:.4f} | {p['gflops']:.1f} | "
                 f"{100 * p['fraction_of_gemm']:.0f}% |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=8192)
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--block_size", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--out", default="bench/results/sweep_ceiling",
                      help="output prefix: <out>.json and <out>.md")
  args = parser.parse_args()
  if args.n % args.block_size or args.n % 2:
    sys.exit(f"--n={args.n} must be even and a multiple of --block_size={args.block_size}")
  report = measure(args.n, args.d, args.block_size, args.rounds)
  report["command"] = "python bench/sweep_ceiling.py " + " ".join(sys.argv[1:])
  workloads.write_results(report, args.out + ".json", args.out + ".md", markdown(report))


if __name__ == "__main__":
  main()
