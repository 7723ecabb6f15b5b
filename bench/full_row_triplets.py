"""Streaming semi-hard and batch-all triplet loss + gradient: each row's positives only, against
the previous form that visited every column as a candidate positive.

`sim_jax.losses.triplet_streaming._full_row_bodies` handles, at step t, every row's t-th
positive: O(N^2 M) work for at most M positives per anchor (M = K - 1 with K examples per
class).
`bench/previous_forms.triplet_stats_full_row` is the form before it, which scanned all N columns
of a row strip and masked the non-positives: O(N^3). Both are compiled once per (N, mining),
checked equal (loss and gradient), and timed in interleaved rounds in this one process.

  python bench/full_row_triplets.py --n=512,1024,2048 --k=4 --rounds=3 \\
      --out=bench/results/full_row_triplets
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from bench import previous_forms, workloads  # noqa: E402

triplet_streaming = importlib.import_module("sim_jax.losses.triplet_streaming")

FORMS = ("by_column", "per_positive")


def batch(n: int, k: int, d: int, seed: int = 0):
  """n unit embeddings [n, d] in n / k classes of k examples each, labels [n] shuffled."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = rng.permutation(np.repeat(np.arange(n // k), k)).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(labels)


def loss_fn(form: str, mining: str, block_size: int):
  """Mean triplet loss (euclidean, margin 0.2, hinge) of the streaming `form`."""
  stats = (previous_forms.triplet_stats_full_row if form == "by_column"
           else triplet_streaming.triplet_stats_streaming)

  def mean(x, labels):
    num, den = stats(x, labels, margin=0.2, mining=mining, distance="euclidean", soft=False,
                     block_size=block_size, mesh=None)
    return jnp.sum(num) / jnp.maximum(jnp.sum(den), 1.0)

  return mean


def measure(ns, k: int, d: int, block_size: int, rounds: int, minings) -> dict:
  points = []
  for n in ns:
    x, labels = batch(n, k, d)
    compiled = {(m, f): jax.jit(jax.value_and_grad(loss_fn(f, m, block_size))).lower(
        x, labels).compile() for m in minings for f in FORMS}
    for m in minings:
      (va, ga), (vb, gb) = (compiled[(m, f)](x, labels) for f in FORMS)
      np.testing.assert_allclose(float(vb), float(va), rtol=1e-5, err_msg=f"{m} N={n}")
      np.testing.assert_allclose(np.asarray(gb), np.asarray(ga), rtol=1e-4, atol=1e-7,
                                 err_msg=f"{m} N={n}")
    # The equality check above ran each program once: no separate warm-up.
    seconds = workloads.interleaved_medians(
        {key: functools.partial(fn, x, labels) for key, fn in compiled.items()}, rounds,
        warm=False)
    for m in minings:
      sec = {f: seconds[(m, f)] for f in FORMS}
      points.append({"n": n, "mining": m, "seconds": sec,
                     "speedup": sec["by_column"] / sec["per_positive"]})
  return {"k": k, "d": d, "block_size": block_size, "rounds": rounds, "points": points}


def markdown(report: dict) -> str:
  lines = [f"Loss + gradient, K = {report['k']} examples per class ({report['k'] - 1} positives "
           f"per anchor), D = {report['d']}, block {report['block_size']}, euclidean hinge, "
           f"median of {report['rounds']} interleaved rounds. Command: `{report['command']}`", "",
           "| N | mining | every column (s) | each row's positives (s) | speed-up |",
           "|---|---|---|---|---|"]
  for p in report["points"]:
    s = p["seconds"]
    lines.append(f"| {p['n']} | {p['mining']} | {s['by_column']:.3f} | "
                 f"{s['per_positive']:.3f} | {p['speedup']:.1f}x |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", default="512,1024,2048", help="comma-separated batch sizes")
  parser.add_argument("--k", type=int, default=4, help="examples per class")
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--block_size", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--minings", default="semi_hard,batch_all")
  parser.add_argument("--out", default="bench/results/full_row_triplets",
                      help="output prefix: <out>.json and <out>.md")
  args = parser.parse_args(argv)
  ns = [int(v) for v in args.n.split(",") if v]
  bad = [n for n in ns if n % args.k]
  if bad:
    sys.exit(f"--n={bad} must be multiples of --k={args.k}")
  minings = [m for m in args.minings.split(",") if m]
  unknown = sorted(set(minings) - {"semi_hard", "batch_all"})
  if unknown:
    sys.exit(f"--minings: {unknown} not in ['batch_all', 'semi_hard']")
  report = measure(ns, args.k, args.d, args.block_size, args.rounds, minings)
  report["command"] = "python bench/full_row_triplets.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  workloads.write_results(report, args.out + ".json", args.out + ".md", markdown(report))
  return report


if __name__ == "__main__":
  main()
