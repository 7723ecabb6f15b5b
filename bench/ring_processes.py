"""The ring losses across 2 processes (jax.distributed, gloo over localhost TCP), 1 CPU device
each: loss + gradient of each ring form, median of interleaved rounds, beside the single-device
streaming form timed in process 0 in the same rounds, and one ring hop's cost (the bandwidth
and latency that docs/performance.md's scaling model takes for this link).

  python bench/ring_processes.py --n=8192 --losses=clip,siglip,nt_xent --rounds=5 \\
      --out=bench/results/ring_processes_n8192.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(port: int, pid: int, n: int, losses, block_size: int, rounds: int):
  """One of the 2 processes; process 0 returns the report."""
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=pid, initialization_timeout=120)
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from bench.loss_scaling import D, _data, _ring_loss_fn, ppermute_cost
  mesh = Mesh(jax.devices(), ("data",))
  rows = NamedSharding(mesh, P("data"))
  x_np, y_np = _data(n, D)
  glob = lambda a: jax.make_array_from_callback(a.shape, rows, lambda idx: a[idx])
  sharded = (glob(x_np), glob(y_np))
  local = (jax.device_put(x_np, jax.local_devices()[0]),
           jax.device_put(y_np, jax.local_devices()[0]))
  grad = lambda fn, args: jax.jit(jax.value_and_grad(fn)).lower(*args).compile()
  ring = {loss: grad(_ring_loss_fn(loss, block_size, mesh), sharded) for loss in losses}
  single = {loss: grad(_ring_loss_fn(loss, block_size, None), local) for loss in losses}
  times = {(loss, v): [] for loss in losses for v in ("ring", "single")}
  for r in range(rounds + 1):   # round 0 warms up
    for loss in losses:
      start = time.perf_counter()
      jax.block_until_ready(ring[loss](*sharded))
      if r:
        times[(loss, "ring")].append(time.perf_counter() - start)
      if pid == 0:
        start = time.perf_counter()
        jax.block_until_ready(single[loss](*local))
        if r:
          times[(loss, "single")].append(time.perf_counter() - start)
  cost = ppermute_cost(mesh, n // 2)
  if pid:
    return None
  points = []
  for loss in losses:
    t_ring, t_single = (statistics.median(times[(loss, v)]) for v in ("ring", "single"))
    points.append({"loss": loss, "ring_seconds": t_ring, "single_seconds": t_single,
                   "ratio": t_ring / t_single})
  return {"n": n, "d": D, "block_size": block_size, "processes": 2, "rounds": rounds,
          "ppermute": cost, "points": points}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=8192)
  parser.add_argument("--losses", default="clip,siglip,nt_xent")
  parser.add_argument("--block_size", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default="bench/results/ring_processes.json")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    port, pid = (int(v) for v in args.worker.split(","))
    report = worker(port, pid, args.n, args.losses.split(","), args.block_size, args.rounds)
    if report:
      print(json.dumps(report))
    return
  with socket.socket() as sock:   # a free port for the jax.distributed coordinator
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--worker={port},{i}"]
                            + [a for a in sys.argv[1:] if not a.startswith("--worker")],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=3000) for p in procs]
  finally:
    for p in procs:   # never leave a peer waiting on a dead coordinator
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  for p, (_, err) in zip(procs, outs):
    if p.returncode:
      raise SystemExit(err[-3000:])
  report = json.loads(outs[0][0].strip().splitlines()[-1])
  report["command"] = "python " + " ".join(sys.argv)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
