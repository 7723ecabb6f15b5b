"""Scaling model of the streaming ring (`sim_jax.losses.distributed`), for docs/performance.md.

One step = loss + gradient of the fused CLIP InfoNCE (`sim_jax.losses.two_tower`) on a global
batch of N pairs, D-dim float32 embeddings, sharded over k chips in a ring, n = N / k rows each.
Per chip and hop of the ring (k hops per pass, two passes):

  forward  hop: compute 2 n^2 D FLOPs (Gram block + one exp per pair);
                send the text chunk, n (4 D + 12) bytes (embeddings + index, label, valid),
                and the column-sum accumulator, 4 n bytes;
  backward hop: compute 6 n^2 D FLOPs (Gram again, dA += dl B, dB += dl^T A);
                send the chunk with its statistics, n (4 D + 20) bytes, and the [n, D] gradient
                accumulator, 4 n D bytes.

  time of a hop = max(FLOPs / (eta * peak), alpha + bytes / link)   (double-buffered ring)
  step time     = k * (forward hop + backward hop)
  memory / chip = 4 n D bytes x (2 inputs + 2 gradients + 2 chunks in flight + 2 accumulators)
                  + 3 block^2 x 4 bytes of block temporaries (e, dl)

so the ring is compute-bound while n > 2 eta peak / link (forward) and n > (4/3) eta peak / link
(backward): the number of rows per chip, not N, decides. Communication per chip per step is
about 12 N D bytes whatever k. eta (the achieved fraction of peak in the block sweep) and alpha
(the per-hop latency) are assumptions; peak, HBM and link bandwidth are the vendors' published
numbers (PUBLIC below, with their sources).

The validation part reads what bench/loss_scaling.py --ring=K and bench/ring_processes.py
measured here and predicts each ring time from the same run's single-device time (its eta *
peak, the devices share the cores) and its measured hop cost (alpha and link), without overlap
(XLA:CPU's ppermute is synchronous):

  python bench/ring_model.py --d=1024 --out=bench/results/ring_model.md --measured \\
      bench/results/ring_clip_n1024_k1_ring.json bench/results/ring_clip_n1024_k2_ring.json \\
      bench/results/ring_clip_n1024_k4_ring.json bench/results/ring_processes_clip_n1024.json
"""

from __future__ import annotations

import argparse
import json
from typing import NamedTuple


class Chip(NamedTuple):
  name: str
  peak: float      # FLOP/s the float32 loss's matmuls run at (see `PUBLIC`)
  hbm: float       # bytes
  hbm_bw: float    # bytes/s
  link: float      # bytes/s one way between ring neighbours
  source: str


# Published numbers. A ring hop uses one link in one direction: the per-chip bidirectional ICI
# bandwidth is divided by 2 x the ICI ports; H100 NVLink 4 is 900 GB/s bidirectional per GPU
# (450 GB/s one way through NVSwitch), and between DGX nodes each GPU has one 400 Gb/s NDR
# InfiniBand port (50 GB/s). On TPU float32 matmuls run at bf16 peak by default precision; on
# H100 JAX's default float32 matmul precision uses TF32 (494.7 TFLOP/s dense).
PUBLIC = (
  Chip("TPU v5e", 197e12, 16e9, 819e9, 400e9 / 8,
       "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, 400 GB/s "
       "bidirectional ICI per chip over 4 ports, 2D torus, 256-chip pod"),
  Chip("TPU v5p", 459e12, 95e9, 2765e9, 1200e9 / 12,
       "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e at 2765 GB/s, 1200 GB/s "
       "bidirectional ICI per chip, 3D torus (6 ports)"),
  Chip("H100 SXM (NVLink, in a node)", 494.7e12, 80e9, 3.35e12, 450e9,
       "NVIDIA H100 datasheet: TF32 989 TFLOP/s with sparsity (494.7 dense), 80 GB HBM3 at "
       "3.35 TB/s, NVLink 900 GB/s"),
  Chip("H100 SXM (InfiniBand, across nodes)", 494.7e12, 80e9, 3.35e12, 50e9,
       "as above; DGX H100: 8 x 400 Gb/s ConnectX-7 (one per GPU) between nodes"),
)
CONFIGS = (("TPU v5e", 256), ("TPU v5p", 1024), ("H100 SXM (NVLink, in a node)", 8),
           ("H100 SXM (InfiniBand, across nodes)", 256))
GLOBAL_BATCHES = (32768, 131072, 524288, 1 << 20, 4 << 20)
ETA = 0.5        # assumed fraction of peak in the block sweep
ALPHA = 10e-6    # assumed per-hop latency (s)
BLOCK = 1024


class Prediction(NamedTuple):
  seconds: float
  compute_seconds: float
  comm_seconds: float
  bytes_per_chip: float
  memory_bytes: float
  bound: str       # "compute", or the passes whose hops are communication-bound


def hop_flops_and_bytes(n: int, d: int):
  """((forward FLOPs, bytes), (backward FLOPs, bytes)) of one hop with n rows per chip."""
  forward = (2.0 * n * n * d, n * (4 * d + 12) + 4 * n)
  backward = (6.0 * n * n * d, n * (4 * d + 20) + 4 * n * d)
  return forward, backward


def predict(n_global: int, k: int, d: int, rate: float, link: float, alpha: float,
            overlap: bool = True, block: int = BLOCK) -> Prediction:
  """Step time etc. of the ring at `rate` achieved FLOP/s per chip (eta * peak)."""
  n = n_global / k
  total, compute, comm, sent, slow = 0.0, 0.0, 0.0, 0.0, []
  for name, (flops, nbytes) in zip(("forward", "backward"), hop_flops_and_bytes(n, d)):
    c = flops / rate
    m = (alpha + nbytes / link) if k > 1 else 0.0
    total += k * (max(c, m) if overlap else c + m)
    compute, comm, sent = compute + k * c, comm + k * m, sent + (k * nbytes if k > 1 else 0.0)
    if m > c:
      slow.append(name)
  memory = 8 * 4 * n * d + 3 * 4 * min(block, n) ** 2
  bound = "communication (" + " + ".join(slow) + ")" if slow else "compute"
  return Prediction(total, compute, comm, sent, memory, bound)


def _fmt_s(s):
  return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_b(b):
  return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def pod_table(d: int):
  lines = [f"D = {d}, float32 embeddings, block {BLOCK}, eta = {ETA} of peak, alpha = "
           f"{ALPHA * 1e6:.0f} us per hop, ring hops double-buffered.", "",
           "| chips | k | global N | rows/chip | step (loss + grad) | compute | communication | "
           "sent per chip | memory per chip | bound |", "|---|---|---|---|---|---|---|---|---|---|"]
  chips = {c.name: c for c in PUBLIC}
  for name, k in CONFIGS:
    c = chips[name]
    for n_global in GLOBAL_BATCHES:
      p = predict(n_global, k, d, ETA * c.peak, c.link, ALPHA)
      lines.append(f"| {name} | {k} | {n_global} | {n_global // k} | {_fmt_s(p.seconds)} | "
                   f"{_fmt_s(p.compute_seconds)} | {_fmt_s(p.comm_seconds)} | "
                   f"{_fmt_b(p.bytes_per_chip)} | {_fmt_b(p.memory_bytes)} | "
                   f"{p.bound} |")
  lines += ["", "Rows per chip below which a hop is communication-bound (forward: n < 2 eta "
            "peak / link; backward: n < (4/3) eta peak / link), and the sources:", ""]
  for c in PUBLIC:
    lines.append(f"- {c.name}: forward n < {2 * ETA * c.peak / c.link:.0f}, backward n < "
                 f"{4 / 3 * ETA * c.peak / c.link:.0f}. {c.source}.")
  return "\n".join(lines) + "\n"


def validation_table(paths):
  """Measured vs predicted ring times from bench/loss_scaling.py --ring / ring_processes.py."""
  lines = ["| run | loss | N | D | devices | single (s) | ring measured (s) | ring predicted (s) "
           "| measured / predicted | hop: latency, bandwidth |", "|---|---|---|---|---|---|---|"
           "---|---|---|"]
  for path in paths:
    with open(path) as f:
      rep = json.load(f)
    pp = rep["ppermute"]
    alpha = pp["latency_seconds"]
    # A chunk no slower than a 1-row hop: the hop is all latency, its bandwidth not resolved.
    resolved = pp["chunk_seconds"] > alpha
    link = pp["chunk_bytes"] / (pp["chunk_seconds"] - alpha) if resolved else float("inf")
    k = rep.get("devices", rep.get("processes"))
    kind = "processes (gloo)" if "processes" in rep else "fake devices"
    if "points" in rep and rep["points"] and "variant" in rep["points"][0]:
      singles = {p["loss"]: p["seconds"] for p in rep["points"] if p["variant"] == "single"}
      rings = {p["loss"]: p["seconds"] for p in rep["points"] if p["variant"] == "ring"}
    else:
      singles = {p["loss"]: p["single_seconds"] for p in rep["points"]}
      rings = {p["loss"]: p["ring_seconds"] for p in rep["points"]}
    for loss in ("clip",):
      if loss not in rings:
        continue
      n, d = rep["n"], rep["d"]
      # The devices share this machine's cores: the achieved rate of the whole machine is the
      # single-device run's, so each of the k devices gets 1/k of it.
      rate = 8.0 * n * n * d / singles[loss] / k
      p = predict(n, k, d, rate, link, alpha, overlap=False, block=rep["block_size"])
      lines.append(f"| {k} {kind} | {loss} | {n} | {d} | {k} | {singles[loss]:.3f} | "
                   f"{rings[loss]:.3f} | {p.seconds:.3f} | {rings[loss] / p.seconds:.2f} | "
                   f"{alpha * 1e3:.3g} ms, "
                   f"{f'{link / 1e9:.3g} GB/s' if resolved else 'not resolved'} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=1024)
  parser.add_argument("--measured", nargs="*", default=[], help="ring result JSONs")
  parser.add_argument("--out", default="bench/results/ring_model.md")
  args = parser.parse_args()
  text = "## Predicted: public TPU / GPU configurations\n\n" + pod_table(args.d)
  if args.measured:
    text += ("\n## Measured vs predicted on this machine (CLIP)\n\n"
             + validation_table(args.measured))
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
