"""Sharded streaming losses on 1, 2 and 4 fake CPU devices equal the single-device dense losses.

One subprocess per device count (the fake device count must be set before JAX starts) runs every
check on a mesh over its 1, 2 or 4 devices: value and gradient (embeddings and the scalar
parameters, rtol 1e-5) of every ring / gather form against the dense cores of sim_jax.losses,
which see the same global batch on one device (each dense reference compiled once).
"""

import pytest

from tests.helpers import run_python

_CHILD = r"""
import importlib, math, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sim_jax.losses import infonce, nt_xent, two_tower

K = __K__   # this process's fake devices: the mesh spans all of them
assert jax.device_count() == K, jax.devices()
triplet_mod = importlib.import_module("sim_jax.losses.triplet")
rng = np.random.default_rng(0)
N, D = 40, 8
x = jnp.asarray(rng.normal(size=(N, D)) * 0.5, jnp.float32)
y = jnp.asarray(rng.integers(0, 6, size=N), jnp.int32)
txt = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
dense_cache = {}

def check(name, sharded, dense, params, args_s, args_d):
  # sum_i w_i num_i: a non-uniform cotangent, so per-anchor gradients are checked too. Each
  # parameter value reuses the one compiled sharded function (a traced argument).
  # The second output (den: counts) rides along as aux.
  w = jnp.linspace(0.5, 1.5, args_d.shape[0])
  weighted = lambda fn: lambda x, p: (lambda o: (jnp.sum(o[0] * w), o[1]))(fn(x, p))
  f_s = jax.jit(jax.value_and_grad(weighted(sharded), (0, 1), has_aux=True))
  f_d = jax.jit(jax.value_and_grad(weighted(dense), (0, 1), has_aux=True))
  for param in params:
    if (name, param) not in dense_cache:
      dense_cache[(name, param)] = f_d(args_d, param)
    ((v_s, den_s), (g_s, p_s)), ((v_d, den_d), (g_d, p_d)) = (f_s(args_s, param),
                                                              dense_cache[(name, param)])
    np.testing.assert_allclose(v_s, v_d, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(den_s, den_d, err_msg=name)
    np.testing.assert_allclose(g_s, g_d, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(g_d))),
                               err_msg=name)
    np.testing.assert_allclose(p_s, p_d, rtol=1e-5, err_msg=name)
    assert g_s.sharding.spec[0] == "data", (name, g_s.sharding)  # gradient stays sharded
    print("ok", name, param, k, flush=True)

k = K
start = time.time()
mesh = Mesh(np.array(jax.devices()[:k]), ("data",))
rows = NamedSharding(mesh, P("data"))
xs, ys = jax.device_put(x, rows), jax.device_put(y, rows)

check("nt_xent", lambda x, t: infonce.nt_xent_stats(x, ys, temperature=t, block_size=3,
                                                    mesh=mesh),
      lambda x, t: infonce.nt_xent_stats_dense(x, y, t), (0.05, 0.004), xs, x)
check("supcon", lambda x, t: infonce.supcon_stats(x, ys, temperature=t, block_size=4,
                                                  mesh=mesh),
      lambda x, t: infonce.supcon_stats_dense(x, y, t), (0.5,), xs, x)
# NT-Xent's ring sorts each device's rows by label and visits only the 128-wide column tiles
# that hold positives when the local rows are a multiple of 128 (here on 1 and 2 devices): two
# views of 128 instances, and one class for the whole batch (no negatives: loss and gradient 0).
xb = jnp.asarray(rng.normal(size=(256, D)), jnp.float32)
for tag, yb in [("two_views", jnp.tile(jnp.arange(128, dtype=jnp.int32), 2)),
                ("one_class", jnp.zeros(256, jnp.int32))]:
  ybs = jax.device_put(yb, rows)
  check("nt_xent_" + tag,
        lambda x, t: infonce.nt_xent_stats(x, ybs, temperature=t, block_size=64, mesh=mesh),
        lambda x, t: infonce.nt_xent_stats_dense(x, yb, t), (0.1,), jax.device_put(xb, rows), xb)
for mining, distance in [("batch_hard", "euclidean"), ("semi_hard", "cosine"),
                         ("batch_all", "squared_euclidean")]:
  check(mining, lambda x, m: triplet_mod.triplet_stats(x, ys, margin=m, mining=mining,
                                                       distance=distance, soft=False,
                                                       block_size=3, mesh=mesh),
        lambda x, m: triplet_mod.triplet_stats_dense(x, y, m, mining, distance, False),
        (0.3,), xs, x)

# The public losses route block_size + mesh here.
v_s = jax.jit(lambda x: nt_xent(x, ys, 0.1, block_size=4, mesh=mesh))(xs)
np.testing.assert_allclose(v_s, nt_xent(x, y, 0.1), rtol=1e-5)

# Two-tower: ring over text chunks, every image against the global batch. t = 0.004 takes
# CLIP's exact two-pass branch (the fixed-shift sums underflow), same compiled function.
txt_s = jax.device_put(txt, rows)
for name, fn, param_sets in [("clip", two_tower.clip_infonce, [(0.07,), (0.004,)]),
                             ("siglip", two_tower.siglip, [(math.log(10.0), -10.0)])]:
  argnums = tuple(range(2 + len(param_sets[0])))
  grad_s = jax.jit(jax.value_and_grad(lambda *a: fn(*a, block_size=3, mesh=mesh), argnums))
  grad_d = jax.jit(jax.value_and_grad(lambda *a: fn(*a), argnums))
  for params in param_sets:
    (v_s, g_s), (v_d, g_d) = grad_s(xs, txt_s, *params), grad_d(x, txt, *params)
    np.testing.assert_allclose(v_s, v_d, rtol=1e-5, err_msg=name)
    for a, b in zip(g_s, g_d):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))),
                                 err_msg=name)
    print("ok", name, params, k, flush=True)
print("mesh", k, "checked in", round(time.time() - start, 1), "s", flush=True)

# Errors: a mesh without a data axis, a batch that does not split over the shards.
for bad_mesh, bad_x, bad_y, match in [
    (jax.make_mesh((K,), ("batch",)), x, y, "data"),
    (mesh, x[:38], y[:38], "divisible")][:2 if K == 4 else 1]:
  try:
    infonce.nt_xent_stats(bad_x, bad_y, temperature=0.1, block_size=4, mesh=bad_mesh)
  except ValueError as e:
    assert match in str(e), e
  else:
    raise AssertionError("no ValueError for " + match)
print("ALL OK")
"""


@pytest.mark.parametrize("num_devices", [1, 2, 4])
def test_sharded_streaming_equals_single_device_dense(num_devices):
  proc = run_python(_CHILD.replace("__K__", str(num_devices)), num_devices=num_devices,
                    timeout=900)
  assert "ALL OK" in proc.stdout, proc.stdout
