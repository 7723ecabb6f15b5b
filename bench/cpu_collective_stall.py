"""XLA:CPU stalls on back-to-back multi-device programs with a collective (jaxlib 0.10.2).

Two fake CPU devices (set here before JAX starts), a jitted step whose loss all-gathers a
row-sharded product, run `--steps` times on its own output, either dispatched back to back
(`--mode=async`, what a training loop does) or waiting for each step (`--mode=wait`, what
`sim_jax.cpu.waits_for_each_execution` makes the trainer do on such a mesh). A stall ends in
XLA's abort after its 40 s rendezvous timeout (exit code 134, "Termination timeout for `all
gather ...`"); a run without one prints "done" and exits 0.

  python bench/cpu_collective_stall.py --mode=async --steps=3000   # stalled every time here
  python bench/cpu_collective_stall.py --mode=wait --steps=3000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402


def make_step(mesh):
  """w -> (w - lr * dL/dw, metrics), L = mean((x w)(x w)^T) with x w gathered to every device."""

  def step(w, x):
    def loss(w):
      e = jax.lax.with_sharding_constraint(x @ w, NamedSharding(mesh, P()))  # the all-gather
      return jnp.mean(e @ e.T)

    value, grad = jax.value_and_grad(loss)(w)
    return w - 1e-6 * grad, {"loss": value, "count": jnp.ones(())}

  return jax.jit(step)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mode", choices=("async", "wait"), default="async")
  parser.add_argument("--steps", type=int, default=3000)
  args = parser.parse_args(argv)
  mesh = Mesh(jax.devices()[:2], ("data",))
  x = jax.device_put(jnp.ones((512, 256)), NamedSharding(mesh, P("data")))
  w = jax.device_put(jnp.full((256, 256), 1e-3), NamedSharding(mesh, P()))
  step, total, start = make_step(mesh), None, time.time()
  for i in range(args.steps):
    w, metrics = step(w, x)
    if args.mode == "wait":
      jax.block_until_ready(metrics)
    total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
    if i % 500 == 0:
      print(f"step {i} {time.time() - start:.1f} s", flush=True)
  print(f"done: {int(total['count'])} steps, mode {args.mode}, {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
