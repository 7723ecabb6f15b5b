"""Sharded pair / tuple losses (`sim_jax.losses.sharded`) on 1, 2 and 4 fake CPU devices equal
the dense single-device losses: value and gradient, per anchor and reduced (rtol 1e-5, float32).

One subprocess with 4 fake CPU devices (the count must be set before JAX starts) builds meshes
over 1, 2 and 4 of them. The dense forms themselves are checked against NumPy loops in
losses_tuple_test.py.
"""

from tests.helpers import run_python

_CHILD = r"""
import functools
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sim_jax import losses
from sim_jax.losses import objective

assert jax.device_count() == 4, jax.devices()
# Meshes over the first 1, 2 and 4 devices; block_size None (one strip per device) and 5 (strips
# that do not divide the shard: padded rows).
MESHES = [(jax.make_mesh((k,), ("data",), devices=jax.devices()[:k]), block)
          for k, block in ((1, 5), (2, None), (4, 5))]
mesh = MESHES[-1][0]
rng = np.random.default_rng(0)
N, D = 24, 6
x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
y = jnp.asarray(rng.integers(0, 5, size=N), jnp.int32)
y = y.at[7].set(9)  # an anchor without a positive
w = jnp.asarray(rng.uniform(0.5, 1.5, size=N), jnp.float32)
LOSSES = {
  "multi_similarity": dict(alpha=2.0, beta=10.0, base=0.5),
  "circle": dict(m=0.4, gamma=8.0),
  "generalized_lifted_structure": dict(neg_margin=1.0, pos_margin=0.1),
  "lifted_structure": dict(neg_margin=1.0, pos_margin=0.1),
  "nca": dict(scale=2.0),
}
for name, kw in LOSSES.items():
  fn = getattr(losses, name)
  def weighted(x, y, **extra):
    # A non-uniform cotangent per anchor: the per-anchor gradients are compared, not only the sum.
    return jnp.sum(w * fn(x, y, reduction="none", **kw, **extra))
  v_d, g_d = jax.jit(jax.value_and_grad(weighted))(x, y)
  for m, block in MESHES:
    rows = NamedSharding(m, P("data"))
    xs, ys = jax.device_put(x, rows), jax.device_put(y, rows)
    f_s = jax.jit(jax.value_and_grad(functools.partial(weighted, block_size=block, mesh=m)))
    v_s, g_s = f_s(xs, ys)
    np.testing.assert_allclose(v_s, v_d, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(g_s, g_d, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(g_d))),
                               err_msg=name)
    assert g_s.sharding.spec[0] == "data", (name, g_s.sharding)  # gradient stays sharded
  print("ok", name)

# The trainer's loss table routes a mesh to the sharded form (the value under a mesh equals the
# dense one, and the jitted program holds an all-gather).
cfg = losses.default_config()
with cfg.unlocked():
  cfg.name, cfg.block_size = "circle", 4
loss_fn = jax.jit(lambda x, y: objective.LOSSES["circle"].fn(cfg, {}, x, y, mesh))
np.testing.assert_allclose(loss_fn(xs, ys), losses.circle(x, y), rtol=1e-5)
assert "all-gather" in loss_fn.lower(xs, ys).compile().as_text()

# Bad input: a mesh without a data axis, a batch that does not split, a mesh with a dense mask.
for kwargs, match in [(dict(mesh=jax.make_mesh((4,), ("batch",))), "'data'"),
                      (dict(mesh=mesh, x=x[:22], y=y[:22]), "divisible"),
                      (dict(mesh=mesh, mask=jnp.ones((N, N), bool)), "mesh")]:
  args = dict(x=x, y=y)
  args.update(kwargs)
  try:
    losses.nca(args.pop("x"), args.pop("y"), **args)
  except ValueError as e:
    assert match in str(e), e
  else:
    raise AssertionError("no ValueError for " + match)
print("ALL OK")
"""


def test_sharded_tuple_losses_equal_single_device_dense_on_1_2_4_devices():
  proc = run_python(_CHILD, num_devices=4, timeout=300)
  assert "ALL OK" in proc.stdout, proc.stdout
