"""Where ResNet-18's step loses to PyTorch's on the CPU: batch norm's share, weight gradients.

  python bench/resnet_parts.py                         # both parts, the issue's batch
  python bench/resnet_parts.py --part=ablate --workloads=resnet18,multiscale --repeats=4
  python bench/resnet_parts.py --part=wgrad --repeats=5

Part "ablate": the benchmark's train step (`bench/workloads.JaxRunner` / `TorchRunner`: same
model, loss, batch and optimizer in both frameworks) with and without batch norm, in both
frameworks, timed in interleaved rounds in one process. Without batch norm every BN layer is the
identity in both twins (`no_batch_norm()`), so the difference "with - without" is what batch norm
costs each framework inside the whole step (its own arithmetic, and what it does to XLA's fusion
and layout decisions around it). Each step also records the process's minor page faults and its
user / system CPU seconds (`resource.getrusage`): the step's CPU work, not only its wall time.

Part "wgrad": the weight gradient of one 3x3 stride-1 convolution at each ResNet-18 stage's shape
(batch 256 = 128 images x 2 views), given the conv's input and the output gradient:
  - `xla_vjp_bn_relu`: `jax.vjp` of `lax.conv_general_dilated`, its input produced by a BN + ReLU
    (scale, shift, max) as in the step, so XLA fuses that producer into the layout copy the
    weight-gradient convolution needs (N moved innermost);
  - `xla_vjp`: the same on a materialised input;
  - `xla_stacked`: `weight_grad_stacked`, the images stacked along H with two zero rows between
    them, so the convolution's feature dimension is 1 and the transposed copy is [C, N, H, W];
  - `xla_conv_only`: `weight_grad_conv_only`, the convolution XLA's `xla_vjp` program runs, on
    operands already in its layout ([C, H, W, N] and [H, W, N, K], transposed outside the timed
    call): `xla_vjp` minus this is what its two layout copies cost;
  - `gemm_chunks`: `weight_grad_chunked`, no layout copy: per chunk of 2 images an im2col
    matrix [2HW, 9C] (in cache) and one GEMM into a [K, 9C] accumulator (`lax.scan`);
  - `torch`: `torch.nn.grad.conv2d_weight` on NCHW tensors (oneDNN).
The JSON goes to --out; the table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from bench import workloads  # noqa: E402

# (H = W, C_in = C_out) of ResNet-18's 3x3 stride-1 convolutions at 32 px with the small stem.
STAGE_SHAPES = ((32, 64), (16, 128), (8, 256), (4, 512))


# ------------------------------------------------------------------------- part 1: BN ablation


@contextlib.contextmanager
def no_batch_norm():
  """Every batch norm built inside is the identity, in sim_jax's models and in torch's twins."""
  import torch

  from sim_jax.models import densenet, multiscale, resnet

  class Identity(torch.nn.Module):
    def __init__(self, *args, **kwargs):
      super().__init__()

    def forward(self, x):
      return x

  def identity_bn(train, dtype, name, **kw):
    del train, dtype, name, kw
    return lambda x: x

  modules = (resnet, multiscale, densenet)
  saved = [m.batch_norm for m in modules], torch.nn.BatchNorm2d
  try:
    for m in modules:
      m.batch_norm = identity_bn
    torch.nn.BatchNorm2d = Identity
    yield
  finally:
    for m, bn in zip(modules, saved[0]):
      m.batch_norm = bn
    torch.nn.BatchNorm2d = saved[1]


def _usage() -> np.ndarray:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return np.array([r.ru_minflt, r.ru_utime, r.ru_stime], np.float64)


def ablate(name: str, batch: int, repeats: int) -> dict:
  """Interleaved rounds of one step each: {variant: {framework: step_s, faults, user_s, sys_s}}."""
  runners = {"with_bn": (workloads.JaxRunner(name, batch), workloads.TorchRunner(name, batch))}
  with no_batch_norm():
    runners["no_bn"] = (workloads.JaxRunner(name, batch), workloads.TorchRunner(name, batch))
  rec = {v: {fw: {"step_s": [], "minor_faults": [], "user_s": [], "sys_s": []}
             for fw in ("sim_jax", "torch")} for v in runners}
  order = [(v, fw, r) for v, pair in runners.items() for fw, r in zip(("sim_jax", "torch"), pair)]
  for i in range(repeats):
    for v, fw, r in (order if i % 2 == 0 else order[::-1]):
      u0, t0 = _usage(), time.perf_counter()
      taken = r.run(1)
      dt, du = (time.perf_counter() - t0) / taken, (_usage() - u0) / taken
      d = rec[v][fw]
      d["step_s"].append(dt)
      d["minor_faults"].append(int(du[0]))
      d["user_s"].append(float(du[1]))
      d["sys_s"].append(float(du[2]))
  med = {v: {fw: float(np.median(d["step_s"])) for fw, d in fws.items()} for v, fws in rec.items()}
  return {"workload": name, "batch": batch, "repeats": repeats, "rounds": rec,
          "median_step_s": med,
          "ratio_with_bn": med["with_bn"]["torch"] / med["with_bn"]["sim_jax"],
          "ratio_no_bn": med["no_bn"]["torch"] / med["no_bn"]["sim_jax"],
          "bn_cost_s": {fw: med["with_bn"][fw] - med["no_bn"][fw] for fw in ("sim_jax", "torch")}}


# ------------------------------------------------------------------ part 2: weight gradients


def conv3x3(x, w):
  """3x3, stride 1, padding 1, NHWC x HWIO -> NHWC (the ResNet blocks' convolution)."""
  from jax import lax
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def weight_grad_vjp(x, g):
  """dL/dW of `conv3x3` by `jax.vjp` (what autodiff gives the trainer's step)."""
  import jax
  import jax.numpy as jnp
  w0 = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.vjp(lambda w: conv3x3(x, w), w0)[1](g)[0]


def weight_grad_stacked(x, g):
  """dL/dW of `conv3x3` with the images stacked along H (two zero rows between them).

  dW[i, j, c, k] = sum_{n,h,w} xpad[n, h+i, w+j, c] g[n, h, w, k]. Stack xpad's N images of H+2
  rows into one image of N(H+2) rows, and g's into N(H+2) - 2 rows with two zero rows after each
  image: a shift i <= 2 never reaches the next image's rows, so one VALID correlation of the
  stacked input (batch C, one feature) with the stacked gradient (kernel N(H+2)-2 x W, one input
  feature, K outputs) sums exactly the same products. Its input layout is [C, N, H+2, W+2].
  """
  import jax.numpy as jnp
  from jax import lax
  n, h, w, c = x.shape
  k = g.shape[-1]
  xt = jnp.transpose(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 0, 1, 2))
  xs = xt.reshape(c, 1, n * (h + 2), w + 2)
  gs = jnp.pad(g, ((0, 0), (0, 2), (0, 0), (0, 0))).reshape(n * (h + 2), w, 1, k)
  out = lax.conv_general_dilated(xs, gs[: n * (h + 2) - 2], (1, 1), "VALID",
                                 dimension_numbers=("NCHW", "HWIO", "NHWC"))  # [C, 3, 3, K]
  return jnp.transpose(out, (1, 2, 0, 3))


def weight_grad_conv_only(xt, gt):
  """dL/dW of `conv3x3` from xt = x as [C, H, W, N] and gt = g as [H, W, N, K]: the
  convolution XLA lowers `weight_grad_vjp` to (batch C, feature N; window H x W), without the
  layout copies that produce its operands. Returns [3, 3, C, K]."""
  import jax.numpy as jnp
  from jax import lax
  out = lax.conv_general_dilated(xt, gt, (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [C, 3, 3, K]
  return jnp.transpose(out, (1, 2, 0, 3))


def weight_grad_chunked(x, g, images: int = 2):
  """dL/dW of `conv3x3` with no layout copy: dW^T = sum over chunks of `images` images of
  g_chunk^T [K, P] @ patches [P, 9C], P = images * H * W, the patches of each chunk built by
  im2col (nine shifted slices of the padded chunk) inside a `lax.scan`, so they stay in cache."""
  import jax.numpy as jnp
  from jax import lax
  n, h, w, c = x.shape
  k = g.shape[-1]
  if n % images:
    raise ValueError(f"batch {n} is not a multiple of images per chunk {images}")
  xs = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n // images, images, h + 2, w + 2, c)
  gs = g.reshape(n // images, images * h * w, k)

  def chunk(acc, xg):
    xc, gc = xg
    patches = jnp.concatenate([xc[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                              axis=-1).reshape(images * h * w, 9 * c)
    return acc + lax.dot_general(gc, patches, (((0,), (0,)), ((), ()))), None

  acc = lax.scan(chunk, jnp.zeros((k, 9 * c), x.dtype), (xs, gs))[0]
  return acc.T.reshape(3, 3, c, k)


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def wgrad(n: int, repeats: int, shapes=STAGE_SHAPES) -> list[dict]:
  """Per stage shape: seconds of each weight-gradient formulation (interleaved), GFLOP/s."""
  import jax
  import jax.numpy as jnp
  import torch

  from sim_jax import cpu
  opts = cpu.CPU_COMPILER_OPTIONS
  rows = []
  rng = np.random.default_rng(0)
  for hw, c in shapes:
    pre = jnp.asarray(rng.standard_normal((n, hw, hw, c), np.float32))
    scale = jnp.asarray(rng.uniform(0.5, 1.5, c).astype(np.float32))
    shift = jnp.asarray(rng.standard_normal(c).astype(np.float32))
    g = jnp.asarray(rng.standard_normal((n, hw, hw, c), np.float32))
    x = jax.block_until_ready(jax.nn.relu(pre * scale + shift))
    fns = {
        "xla_vjp_bn_relu": (lambda p, s, b, g: weight_grad_vjp(jax.nn.relu(p * s + b), g),
                            (pre, scale, shift, g)),
        "xla_vjp": (weight_grad_vjp, (x, g)),
        "xla_stacked": (weight_grad_stacked, (x, g)),
        "xla_conv_only": (weight_grad_conv_only, (jnp.transpose(x, (3, 1, 2, 0)),
                                                  jnp.transpose(g, (1, 2, 0, 3)))),
        "gemm_chunks": (weight_grad_chunked, (x, g)),
    }
    compiled = {k: (jax.jit(f).lower(*a).compile(opts), a) for k, (f, a) in fns.items()}
    ref = np.asarray(compiled["xla_vjp"][0](x, g))
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    tg = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())
    t_ref = torch.nn.grad.conv2d_weight(tx, (c, c, 3, 3), tg, padding=1)
    # torch's [K, C, 3, 3] against sim_jax's [3, 3, C, K]: the same gradient.
    np.testing.assert_allclose(t_ref.numpy().transpose(2, 3, 1, 0), ref, rtol=2e-3,
                               atol=2e-3 * np.abs(ref).max())
    calls = {k: (lambda c_=c_, a=a: jax.block_until_ready(c_(*a))) for k, (c_, a) in
             compiled.items()}
    calls["torch"] = (lambda tx=tx, tg=tg, c=c:
                      torch.nn.grad.conv2d_weight(tx, (c, c, 3, 3), tg, padding=1))
    for f in calls.values():
      f()  # warm-up
    times = {k: [] for k in calls}
    for i in range(repeats):
      for k in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
        times[k].append(_seconds(calls[k]))
    flops = 2.0 * n * hw * hw * 9 * c * c
    rows.append({"n": n, "hw": hw, "c": c, "gflop": flops / 1e9,
                 "ms_min": {k: 1e3 * min(v) for k, v in times.items()},
                 "ms_median": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
                 "gflop_per_s_median": {k: flops / float(np.median(v)) / 1e9
                                        for k, v in times.items()}})
  return rows


# --------------------------------------------------------------------------------- reporting


def markdown(result: dict) -> str:
  lines = []
  for a in result.get("ablate", []):
    m = a["median_step_s"]
    lines += [f"**{a['workload']}** (batch {a['batch']}, {a['repeats']} interleaved rounds, "
              "median step s; faults / user s / sys s per step, median):", "",
              "| variant | sim_jax step s | torch step s | ratio | sim_jax faults / user / sys "
              "| torch faults / user / sys |", "|---|---|---|---|---|---|"]
    for v in ("with_bn", "no_bn"):
      cells = []
      for fw in ("sim_jax", "torch"):
        d = a["rounds"][v][fw]
        cells.append(f"{np.median(d['minor_faults']) / 1e3:.0f}k / "
                     f"{np.median(d['user_s']):.1f} / {np.median(d['sys_s']):.1f}")
      lines.append(f"| {v} | {m[v]['sim_jax']:.2f} | {m[v]['torch']:.2f} | "
                   f"{m[v]['torch'] / m[v]['sim_jax']:.2f}x | {cells[0]} | {cells[1]} |")
    lines += ["", f"batch norm costs sim_jax {a['bn_cost_s']['sim_jax']:.2f} s and torch "
              f"{a['bn_cost_s']['torch']:.2f} s of the step.", ""]
  if result.get("wgrad"):
    keys = list(result["wgrad"][0]["ms_median"])
    lines += ["3x3 weight gradient, median ms (GFLOP/s):", "",
              "| N x H x W x C | " + " | ".join(keys) + " |",
              "|---|" + "---|" * len(keys)]
    for r in result["wgrad"]:
      lines.append(f"| {r['n']}x{r['hw']}x{r['hw']}x{r['c']} | " + " | ".join(
          f"{r['ms_median'][k]:.0f} ({r['gflop_per_s_median'][k]:.0f})" for k in keys) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--part", default="all", choices=("all", "ablate", "wgrad"))
  p.add_argument("--workloads", default="resnet18")
  p.add_argument("--batch", type=int, default=0, help="0: each workload's batch")
  p.add_argument("--repeats", type=int, default=4)
  p.add_argument("--wgrad_n", type=int, default=256, help="images in the weight-gradient part")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  result = {"date": time.strftime("%Y-%m-%d %H:%M"), "environment": workloads.environment()}
  if args.part in ("all", "ablate"):
    result["ablate"] = []
    for name in args.workloads.split(","):
      if name not in workloads.WORKLOADS:
        raise ValueError(f"--workloads: {name!r} is not one of {sorted(workloads.WORKLOADS)}")
      result["ablate"].append(ablate(name, args.batch or workloads.WORKLOADS[name]["batch"],
                                     args.repeats))
  if args.part in ("all", "wgrad"):
    result["wgrad"] = wgrad(args.wgrad_n, args.repeats)
  print(markdown(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
