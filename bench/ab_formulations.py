"""The trainer's step with the CPU model formulations vs the ones they replaced.

  python bench/ab_formulations.py --workload=lenet5 --rounds=9
  python bench/ab_formulations.py --workload=vit_ti --batch=32 --rounds=5
  python bench/ab_formulations.py --workload=vit_ti --faults    # page faults of one step
  python bench/ab_formulations.py --workload=efficientnet_b0 --rounds=5

"before" swaps the previous formulation back into `sim_jax.models` for the build (LeNet-5:
nn.Conv -> ReLU -> `max_pool_2x2`; ViT blocks: flax LayerNorms, 3-D Dense layers,
`jax.nn.gelu`'s erfc form, head-major attention einsums; MobileNetV3 / EfficientNet-B0: the
grouped `nn.Conv` depthwise convolution); "after" is the current
code (the ViT also folds each LayerNorm into the next projection since session 3, so its ratio
now includes that fold). Both are `bench/workloads.JaxRunner` (the
trainer's jitted step on one fixed batch, CPU compiler options included), timed in interleaved
rounds of alternating order in one process. Parameters are identical, so both start from the same
state. `--faults` reports the minor page faults and system time of one sim_jax and one PyTorch
step (`resource.getrusage`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from bench import workloads  # noqa: E402
from sim_jax.cpu import kernels  # noqa: E402
from sim_jax.models import cpu_ops, lenet, vit  # noqa: E402


class LeNet5Before(nn.Module):
  """LeNet-5 as before the conv -> ReLU -> pool custom VJP (same parameter tree)."""
  dtype: Any = jnp.float32
  stage: Any = None  # get_model passes LeNet5's stage; this network is swapped whole
  stem_path = ("conv1",)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    pool = lambda y: kernels.max_pool_2x2(y) if min(y.shape[1:3]) >= 2 else y  # noqa: E731
    pad1 = "SAME" if x.shape[1] < 32 else "VALID"
    x = pool(nn.relu(nn.Conv(6, (5, 5), padding=pad1, dtype=self.dtype, name="conv1")(x)))
    pad2 = "VALID" if min(x.shape[1:3]) >= 5 else "SAME"
    x = pool(nn.relu(nn.Conv(16, (5, 5), padding=pad2, dtype=self.dtype, name="conv2")(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, dtype=self.dtype, name="fc1")(x))
    return nn.relu(nn.Dense(84, dtype=self.dtype, name="fc2")(x))


class AttentionBefore(nn.Module):
  """ViT attention as before: 3-D Dense layers, head-major einsums."""
  heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    b, n, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.heads, d // self.heads), 2, 0)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // self.heads).astype(self.dtype)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
    out = nn.Dense(d, dtype=self.dtype, name="proj")(out)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(out)


class MlpBefore(nn.Module):
  """ViT MLP as before: 3-D Dense layers, `jax.nn.gelu(approximate=False)` (erfc form)."""
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    d = x.shape[-1]
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x), approximate=False)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(d, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class BlockBefore(nn.Module):
  """ViT block as before: flax LayerNorms feeding the attention and MLP above (no LN fold)."""
  heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    def residual(y):
      return vit.residual_branch(self, y, self.drop_path_rate, train)
    y = nn.LayerNorm(vit.LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + residual(AttentionBefore(self.heads, self.dropout_rate, self.dtype, name="attn")(
        y, train))
    y = nn.LayerNorm(vit.LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + residual(MlpBefore(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(
        y, train))


# vit_ti's "before" swaps the whole block: the CPU block (cpu_ops.FusedBlock, what get_model
# builds on CPU) passes un-normalised x and the LayerNorm parameters to its attention / MLP
# (kernels.layer_norm_dense), which the old modules lack.
BEFORE = {"lenet5": [(lenet, "LeNet5", LeNet5Before)],
          "vit_ti": [(cpu_ops, "FusedBlock", BlockBefore)],
          **{name: [(cpu_ops, "ShiftedDepthwiseConv", nn.Conv)]
             for name in workloads.JAX_ONLY_WORKLOADS}}


@contextlib.contextmanager
def swapped(patches):
  old = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
  for obj, name, value in patches:
    setattr(obj, name, value)
  try:
    yield
  finally:
    for obj, name, value in old:
      setattr(obj, name, value)


def faults(workload: str, batch: int) -> None:
  runners = {"sim_jax": workloads.JaxRunner(workload, batch),
             "torch": workloads.TorchRunner(workload, batch)}
  for name, r in list(runners.items()) * 2:
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    r.run(1)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{name:8s} wall {time.perf_counter() - t0:7.2f} s  minor faults "
          f"{after.ru_minflt - before.ru_minflt:9d}  system time "
          f"{after.ru_stime - before.ru_stime:6.2f} s  user time "
          f"{after.ru_utime - before.ru_utime:6.2f} s")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workload", choices=sorted(BEFORE), default="lenet5")
  p.add_argument("--batch", type=int, default=None, help="default: the issue's batch")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--steps", type=int, default=None, help="steps per round (default: workload's)")
  p.add_argument("--faults", action="store_true")
  args = p.parse_args()
  w = workloads.ALL_WORKLOADS[args.workload]
  batch = args.batch or w["batch"]
  if args.faults:
    if args.workload in workloads.JAX_ONLY_WORKLOADS:
      p.error(f"--faults compares with PyTorch; {args.workload!r} has no PyTorch twin")
    faults(args.workload, batch)
    return
  steps = args.steps or w["steps"]
  with swapped(BEFORE[args.workload]):
    runners = {"before": workloads.JaxRunner(args.workload, batch)}
  runners["after"] = workloads.JaxRunner(args.workload, batch)
  times = {k: [] for k in runners}
  for rd in range(args.rounds):
    for k in (list(runners) if rd % 2 == 0 else list(runners)[::-1]):
      t0 = time.perf_counter()
      taken = runners[k].run(steps)
      times[k].append((time.perf_counter() - t0) / taken)
  b, a = np.array(times["before"]), np.array(times["after"])
  print(f"{args.workload} batch {batch}, {args.rounds} rounds x {steps} step(s), load average "
        f"{os.getloadavg()[0]:.1f}")
  for k, t in (("before", b), ("after", a)):
    print(f"  {k:6s} step min {1e3 * t.min():8.1f} ms  median {1e3 * np.median(t):8.1f} ms")
  print(f"  speed-up after / before: median {np.median(b) / np.median(a):.2f}x, "
        f"min {b.min() / a.min():.2f}x")


if __name__ == "__main__":
  main()
