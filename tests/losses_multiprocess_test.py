"""A real 2-process run (jax.distributed on localhost, 2 CPU devices each) of every sharded
streaming form: the ring losses (NT-Xent, SupCon, batch-hard triplet, the two-tower CLIP and
SigLIP) and the gather form of semi-hard and batch-all triplet.

Each process holds half of the global batch; the loss and the gradient of the sharded streaming
form must equal the 1-process dense result for the same global batch, computed here.
"""

import importlib
import math
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.losses import infonce, two_tower
from tests.helpers import REPO_ROOT, free_port, subprocess_env

triplet_mod = importlib.import_module("sim_jax.losses.triplet")

N, D, SEED = 32, 8, 0

_WORKER = r"""
import importlib, math, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{{port}}", num_processes=2,
                           process_id=pid, initialization_timeout=60)
import jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sim_jax.losses import infonce, two_tower
triplet_mod = importlib.import_module("sim_jax.losses.triplet")
assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
N, D, SEED = {n}, {d}, {seed}
rng = np.random.default_rng(SEED)
x = rng.normal(size=(N, D)).astype(np.float32) * 0.5
y = rng.integers(0, 5, size=N).astype(np.int32)
txt = rng.normal(size=(N, D)).astype(np.float32)
mesh = jax.make_mesh((4,), ("data",))
rows = NamedSharding(mesh, P("data"))
half = slice(pid * N // 2, (pid + 1) * N // 2)   # this process's rows of the global batch
glob = lambda a: jax.make_array_from_process_local_data(rows, a[half])
xg, yg, tg = glob(x), glob(y), glob(txt)
w = glob(np.linspace(0.5, 1.5, N).astype(np.float32))

# Global arrays spanning both processes must be jit arguments (they cannot be closed over).
losses = {{
  "nt_xent": lambda x, t, y, txt, w: jnp.sum(infonce.nt_xent_stats(
      x, y, temperature=t, block_size=3, mesh=mesh)[0] * w),
  "batch_hard": lambda x, m, y, txt, w: jnp.sum(triplet_mod.triplet_stats(
      x, y, margin=m, mining="batch_hard", distance="euclidean", soft=False, block_size=3,
      mesh=mesh)[0] * w),
  "supcon": lambda x, t, y, txt, w: jnp.sum(infonce.supcon_stats(
      x, y, temperature=t, block_size=3, mesh=mesh)[0] * w),
  "semi_hard": lambda x, m, y, txt, w: jnp.sum(triplet_mod.triplet_stats(
      x, y, margin=m, mining="semi_hard", distance="cosine", soft=False, block_size=3,
      mesh=mesh)[0] * w),
  "batch_all": lambda x, m, y, txt, w: jnp.sum(triplet_mod.triplet_stats(
      x, y, margin=m, mining="batch_all", distance="squared_euclidean", soft=False,
      block_size=3, mesh=mesh)[0] * w),
  "siglip": lambda x, b, y, txt, w: two_tower.siglip(x, txt, math.log(10.0), b, block_size=3,
                                                     mesh=mesh),
  "clip": lambda x, t, y, txt, w: two_tower.clip_infonce(x, txt, t, block_size=3, mesh=mesh),
}}
params = {{"nt_xent": 0.1, "batch_hard": 0.3, "supcon": 0.5, "semi_hard": 0.3,
          "batch_all": 0.3, "siglip": -10.0, "clip": 0.07}}
result = {{}}
for name, fn in losses.items():
  value, (gx, gp) = jax.jit(jax.value_and_grad(fn, (0, 1)))(xg, params[name], yg, tg, w)
  # Each process keeps only its own rows of the gradient: write them with their offsets.
  for shard in gx.addressable_shards:
    result[f"{{name}}/grad/{{shard.index[0].start or 0}}"] = np.asarray(shard.data)
  result[f"{{name}}/value"] = np.asarray(value.addressable_data(0))
  result[f"{{name}}/param_grad"] = np.asarray(gp.addressable_data(0))
np.savez(out, **result)
print("worker", pid, "done")
"""


def _reference():
  rng = np.random.default_rng(SEED)
  x = rng.normal(size=(N, D)).astype(np.float32) * 0.5
  y = rng.integers(0, 5, size=N).astype(np.int32)
  txt = rng.normal(size=(N, D)).astype(np.float32)
  w = jnp.asarray(np.linspace(0.5, 1.5, N).astype(np.float32))
  dense = {
    "nt_xent": lambda x, t: jnp.sum(infonce.nt_xent_stats_dense(x, y, t)[0] * w),
    "batch_hard": lambda x, m: jnp.sum(triplet_mod.triplet_stats_dense(
      x, y, m, "batch_hard", "euclidean", False)[0] * w),
    "supcon": lambda x, t: jnp.sum(infonce.supcon_stats_dense(x, y, t)[0] * w),
    "semi_hard": lambda x, m: jnp.sum(triplet_mod.triplet_stats_dense(
      x, y, m, "semi_hard", "cosine", False)[0] * w),
    "batch_all": lambda x, m: jnp.sum(triplet_mod.triplet_stats_dense(
      x, y, m, "batch_all", "squared_euclidean", False)[0] * w),
    "siglip": lambda x, b: two_tower.siglip(x, jnp.asarray(txt), math.log(10.0), b),
    "clip": lambda x, t: two_tower.clip_infonce(x, jnp.asarray(txt), t),
  }
  params = {"nt_xent": 0.1, "batch_hard": 0.3, "supcon": 0.5, "semi_hard": 0.3,
            "batch_all": 0.3, "siglip": -10.0, "clip": 0.07}
  return {name: jax.jit(jax.value_and_grad(fn, (0, 1)))(jnp.asarray(x), params[name])
          for name, fn in dense.items()}


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  port = free_port()
  script = _WORKER.format(n=N, d=D, seed=SEED)
  env = subprocess_env(num_devices=2)
  procs = [subprocess.Popen([sys.executable, "-c", script, str(port), str(i),
                             str(tmp_path / f"proc{i}.npz")], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:   # never leave a peer waiting on a dead coordinator
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]

  results = [dict(np.load(tmp_path / f"proc{i}.npz")) for i in range(2)]
  for name, (value, (grad, param_grad)) in _reference().items():
    merged = np.zeros((N, D), np.float32)
    seen = np.zeros(N, bool)
    for res in results:
      np.testing.assert_allclose(res[f"{name}/value"], value, rtol=1e-5, err_msg=name)
      np.testing.assert_allclose(res[f"{name}/param_grad"], param_grad, rtol=1e-5, err_msg=name)
      for key, rows in res.items():
        if key.startswith(f"{name}/grad/"):
          start = int(key.rsplit("/", 1)[1])
          merged[start:start + len(rows)] = rows
          seen[start:start + len(rows)] = True
    assert seen.all(), name
    np.testing.assert_allclose(merged, grad, rtol=1e-5, atol=1e-5 * float(np.abs(grad).max()),
                               err_msg=name)
  assert not math.isnan(float(np.sum(merged)))
