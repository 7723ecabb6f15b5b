"""sim_jax.losses.manifold against an explicit NumPy loop (graph, random walk by a solved linear
system, hinge terms one by one), central differences of that loop, pytorch-metric-learning's
ManifoldLoss with the same meta classes (pml inverts in float32: 1e-5), jit / eager / vmap,
check_grads, and its bad-input errors."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sim_jax import losses
from tests.helpers import numeric_grad

# The module (sim_jax.losses.manifold is also the name of the function the package exports).
manifold_mod = importlib.import_module("sim_jax.losses.manifold")

N, K, D = 7, 3, 4
META = np.array([0, 1, 2, 1, 0, 2, 2], np.int32)


def _data(seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(N, D)), rng.normal(size=(K, D))


def ref_manifold(x, p, meta, lambda_c=1.0, alpha=0.8, margin=5e-4):
  e = np.concatenate([x, p])
  m = len(e)
  unit = [v / np.linalg.norm(v) for v in e]
  s = np.zeros((m, m))
  for i in range(m):
    for j in range(m):
      if i != j:
        s[i, j] = np.exp(max(unit[i] @ unit[j], 0.0) / 0.5)
  deg = s.sum(axis=1)
  s_bar = np.array([[s[i, j] / np.sqrt(deg[i] * deg[j]) for j in range(m)] for i in range(m)])
  f = (1 - alpha) * np.linalg.solve(np.eye(m) - alpha * s_bar, np.eye(m))
  n = len(x)

  def h(a):
    total = 0.0
    for i in range(n):
      inner = 0.0
      for k in range(a.shape[1]):
        t = a[i, k] - a[i, meta[i]] + margin
        if k != meta[i] and t >= 0:
          inner += np.exp(t)
      total += np.log(1 + inner)
    return total / n

  g = f[:n, n:]
  c = np.array([[f[i] @ f[n + k] / (np.linalg.norm(f[i]) * np.linalg.norm(f[n + k]))
                 for k in range(len(p))] for i in range(n)])
  return h(g) + lambda_c * h(c)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("use_jit", [False, True])
def test_value_and_grad_match_the_loop(x64, use_jit):
  x, p = _data(0)
  dtype = jnp.float64 if x64 else jnp.float32
  with jax.enable_x64(x64):
    fn = functools.partial(losses.manifold, meta_classes=jnp.asarray(META), lambda_c=0.7)
    vg = jax.value_and_grad(fn, argnums=(0, 1))
    vg = jax.jit(vg) if use_jit else vg
    value, (gx, gp) = vg(jnp.asarray(x, dtype), jnp.asarray(p, dtype))
    assert value.dtype == dtype
  rtol = 1e-9 if x64 else 2e-5
  ref = ref_manifold(x, p, META, lambda_c=0.7)
  assert ref > 0.1  # the hinge terms are active
  np.testing.assert_allclose(value, ref, rtol=rtol)
  num_x = numeric_grad(lambda v: ref_manifold(v, p, META, lambda_c=0.7), x)
  num_p = numeric_grad(lambda v: ref_manifold(x, v, META, lambda_c=0.7), p)
  tol = 1e-6 if x64 else 2e-4
  np.testing.assert_allclose(gx, num_x, rtol=tol, atol=tol * np.abs(num_x).max())
  np.testing.assert_allclose(gp, num_p, rtol=tol, atol=tol * np.abs(num_p).max())


def test_check_grads_and_vmap():
  x, p = _data(1)
  with jax.enable_x64(True):
    f = lambda a, b: losses.manifold(a, b, jnp.asarray(META))
    check_grads(f, (jnp.asarray(x), jnp.asarray(p)), order=1, modes=("rev",))
  xs = np.stack([_data(s)[0] for s in (2, 3)])
  out = jax.vmap(lambda a: losses.manifold(a, jnp.asarray(p, jnp.float32),
                                           jnp.asarray(META)))(jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(out, [ref_manifold(v, p, META) for v in xs], rtol=2e-5)


def test_matches_pytorch_metric_learning():
  torch = pytest.importorskip("torch")
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  x, p = _data(4)
  crit = pml_losses.ManifoldLoss(l=D, K=K, lambdaC=0.5).double()
  with torch.no_grad():
    crit.proxies.copy_(torch.from_numpy(p))
  xt = torch.from_numpy(x).requires_grad_(True)
  loss = crit(xt, None, torch.from_numpy(META.astype(np.int64)))
  loss.backward()
  with jax.enable_x64(True):
    value, (gx, gp) = jax.value_and_grad(losses.manifold, argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(p), jnp.asarray(META), 0.5)
  # pml casts the (N + K) x (N + K) system to float32 for torch.inverse.
  np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
  np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gp, crit.proxies.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_random_meta_classes_use_every_proxy():
  meta = np.asarray(manifold_mod.random_meta_classes(jax.random.key(0), 20, 6))
  assert meta.shape == (20,) and set(meta.tolist()) == set(range(6))
  with pytest.raises(ValueError, match="n >= k"):
    manifold_mod.random_meta_classes(jax.random.key(0), 3, 6)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(meta_classes=np.array([0, 1, 2, 1, 0, 2, 3])), "meta_classes must lie in"),
    (dict(meta_classes=np.zeros(6, np.int32)), "meta_classes must have shape"),
    (dict(proxies=np.ones((K, D + 1))), "proxies must have shape"),
    (dict(alpha=1.0), "alpha must be in \\(0, 1\\), got 1.0"),
    (dict(lambda_c=-1.0), "lambda_c must be in \\[0, inf\\), got -1.0"),
])
def test_bad_input_names_the_argument(kwargs, needle):
  x, p = _data(5)
  args = dict(embeddings=jnp.asarray(x, jnp.float32), proxies=jnp.asarray(p, jnp.float32),
              meta_classes=jnp.asarray(META))
  args.update(kwargs)
  with pytest.raises(ValueError, match=needle):
    losses.manifold(**args)
