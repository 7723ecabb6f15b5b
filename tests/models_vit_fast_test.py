"""The ViT's formulations against independent references: exact GELU (sim_jax.models.vit) vs
math.erf in float64 and torch, the attention vs NumPy and torch, and the XLA:CPU forms
(sim_jax.models.cpu_ops, sim_jax.cpu.kernels): token-flattened Dense layers vs a NumPy forward /
backward, the LayerNorm folded into the next Dense vs float64 autodiff, the fused block vs the
plain one, and the compiled block gradient free of the transposed copies the 2-D formulation
exists to avoid."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.cpu import kernels
from sim_jax.models import cpu_ops, vit


def _gelu_ref(x):
  return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.ravel()],
                  np.float64).reshape(x.shape)


def _gelu_grad_ref(x):
  cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.ravel()]).reshape(x.shape)
  return cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def test_gelu_is_exact_erf_gelu_value_and_gradient():
  x = np.concatenate([np.linspace(-12.0, 12.0, 961), [0.0, -1e-4, 1e-4, -40.0, 40.0]])
  x = x.astype(np.float32)
  got = np.asarray(jax.jit(vit.gelu)(jnp.asarray(x)), np.float64)
  # 1 + erf cancels for x << 0 in float32 (as in torch's formula): ~1e-6 absolute there.
  np.testing.assert_allclose(got, _gelu_ref(x.astype(np.float64)), rtol=2e-6, atol=1e-6)
  grad = np.asarray(jax.jit(jax.vmap(jax.grad(vit.gelu)))(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(grad, _gelu_grad_ref(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_matches_torch_exact_gelu():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(4096,)).astype(np.float32) * 4
  want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(vit.gelu(jnp.asarray(x))), want, rtol=1e-6, atol=1.5e-6)


class _Tokens(nn.Module):
  @nn.compact
  def __call__(self, x):
    return cpu_ops.dense_tokens(5, x, "lin", jnp.float32)


def test_dense_tokens_value_and_gradients_match_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 7, 4)).astype(np.float32)
  dy = rng.normal(size=(3, 7, 5)).astype(np.float32)
  m = _Tokens()
  params = m.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  assert jax.tree.map(jnp.shape, params) == {"lin": {"kernel": (4, 5), "bias": (5,)}}
  w, b = (np.asarray(params["lin"][k], np.float64) for k in ("kernel", "bias"))
  y, vjp = jax.vjp(lambda p, xx: m.apply({"params": p}, xx), params, jnp.asarray(x))
  gp, gx = vjp(jnp.asarray(dy))
  x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
  np.testing.assert_allclose(np.asarray(y), x64 @ w + b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gx), dy64 @ w.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gp["lin"]["kernel"]),
                             np.einsum("bnk,bnf->kf", x64, dy64), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gp["lin"]["bias"]), dy64.sum((0, 1)), rtol=1e-5,
                             atol=1e-5)


def test_block_gradient_has_no_transposed_activation_copies():
  # With 3-D Dense inputs XLA:CPU copied each [B*N, features] output gradient to [features, B*N]
  # before the weight-gradient dot (13% of the ViT-Ti step); the 2-D formulation avoids them.
  b, n, d = 4, 17, 32
  block = cpu_ops.FusedBlock(heads=2, mlp_dim=4 * d)
  x = jnp.ones((b, n, d))
  params = block.init(jax.random.PRNGKey(0), x, False)

  def loss(p, xx):
    return jnp.sum(jnp.sin(block.apply(p, xx, False)))

  hlo = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
  shapes = re.findall(r"= f32\[(\d+),(\d+)\]\{1,0\} (?:fusion|copy|transpose)\(", hlo)
  transposed = [s for s in shapes if int(s[1]) == b * n and int(s[0]) in (d, 3 * d, 4 * d)]
  assert not transposed, f"transposed activation copies in the block gradient: {transposed}"


def _attention_numpy(x, wqkv, bqkv, wp, bp, heads):
  """timm's Attention in float64 NumPy: qkv -> [3, B, h, N, d], softmax(q k^T / sqrt d) v."""
  b, n, dim = x.shape
  hd = dim // heads
  qkv = (x @ wqkv + bqkv).reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
  s = np.einsum("bhqd,bhkd->bhqk", qkv[0], qkv[1]) / np.sqrt(hd)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bhkd->bqhd", p, qkv[2]).reshape(b, n, dim)
  return o @ wp + bp


@pytest.mark.parametrize("heads,dim", [(3, 48), (2, 20)])
def test_attention_matches_numpy_and_torch_gradients(heads, dim):
  rng = np.random.default_rng(heads)
  x = rng.normal(size=(3, 9, dim)).astype(np.float32)
  attn = vit.Attention(heads)
  params = attn.init(jax.random.PRNGKey(0), jnp.asarray(x), False)["params"]
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)
                                              / np.sqrt(a.shape[0])), params)
  assert jax.tree.map(jnp.shape, params) == {"qkv": {"kernel": (dim, 3 * dim), "bias": (3 * dim,)},
                                             "proj": {"kernel": (dim, dim), "bias": (dim,)}}
  p64 = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  want = _attention_numpy(x.astype(np.float64), p64["qkv"]["kernel"], p64["qkv"]["bias"],
                          p64["proj"]["kernel"], p64["proj"]["bias"], heads)
  got = attn.apply({"params": params}, jnp.asarray(x), False)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)

  torch = pytest.importorskip("torch")
  r = rng.normal(size=want.shape).astype(np.float32)
  gp, gx = jax.grad(lambda p, xx: jnp.sum(attn.apply({"params": p}, xx, False) * r),
                    argnums=(0, 1))(params, jnp.asarray(x))
  tp = {k: {n: torch.tensor(v, requires_grad=True) for n, v in d.items()} for k, d in p64.items()}
  tx = torch.tensor(x.astype(np.float64), requires_grad=True)
  b, n, _ = x.shape
  qkv = (tx @ tp["qkv"]["kernel"] + tp["qkv"]["bias"]).reshape(b, n, 3, heads, dim // heads)
  q, k, v = qkv.permute(2, 0, 3, 1, 4)
  o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim)
  out = o @ tp["proj"]["kernel"] + tp["proj"]["bias"]
  (out * torch.from_numpy(r.astype(np.float64))).sum().backward()
  np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
  for key in ("qkv", "proj"):
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(np.asarray(gp[key][name]), tp[key][name].grad.numpy(),
                                 rtol=1e-4, atol=1e-4)


def _ln_dense_numpy(x, gamma, beta, w, b, s, eps=vit.LN_EPS):
  mean = x.mean(-1, keepdims=True)
  xhat = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
  return ((xhat * gamma + beta) @ w + b) * s


def test_layer_norm_dense_value_and_all_gradients_match_float64_autodiff():
  # The hand-written backward against torch's float64 autodiff of the unfused LayerNorm -> Dense
  # (x with a large common offset: the two-pass variance must not cancel).
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  m, d, f = 37, 24, 40
  x = (rng.normal(size=(m, d)) * rng.uniform(0.1, 3.0, size=(m, 1)) + 50.0).astype(np.float32)
  gamma, beta = (rng.normal(size=d).astype(np.float32) for _ in range(2))
  w = (rng.normal(size=(d, f)) / np.sqrt(d)).astype(np.float32)
  b = rng.normal(size=f).astype(np.float32)
  s = rng.uniform(0.5, 2.0, size=f).astype(np.float32)
  r = rng.normal(size=(m, f)).astype(np.float32)

  def f_jax(x, gamma, beta, w, b):
    y = kernels.layer_norm_dense(x, (gamma, beta), w, b, vit.LN_EPS, column_scale=jnp.asarray(s))
    return jnp.sum(y * r), y

  (_, y), grads = jax.jit(jax.value_and_grad(f_jax, argnums=(0, 1, 2, 3, 4), has_aux=True))(
      *map(jnp.asarray, (x, gamma, beta, w, b)))
  t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, gamma, beta, w, b)]
  want = torch.nn.functional.layer_norm(t[0], (d,), t[1], t[2], eps=vit.LN_EPS) @ t[3] + t[4]
  want = want * torch.from_numpy(s.astype(np.float64))
  (want * torch.from_numpy(r.astype(np.float64))).sum().backward()
  np.testing.assert_allclose(np.asarray(y), want.detach().numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(y), _ln_dense_numpy(*(a.astype(np.float64) for a in (
      x, gamma, beta, w, b, s))), rtol=1e-4, atol=1e-4)
  for name, got, ref in zip(("x", "gamma", "beta", "kernel", "bias"), grads, t):
    want_g = ref.grad.numpy()
    np.testing.assert_allclose(np.asarray(got), want_g, rtol=2e-4,
                               atol=2e-4 * np.abs(want_g).max(), err_msg=name)


def test_layer_norm_dense_block_equals_unfused_flax_block():
  # FusedBlock folds each LayerNorm into the next projection: same parameters as flax's LayerNorm +
  # Dense (names, shapes, init values), same outputs and gradients as the unfused composition.
  b, n, d, heads = 2, 9, 24, 3
  x = jnp.asarray(np.random.default_rng(3).normal(size=(b, n, d)).astype(np.float32) * 2 + 1)
  block = cpu_ops.FusedBlock(heads=heads, mlp_dim=4 * d)
  params = block.init(jax.random.PRNGKey(0), x, False)["params"]
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape),
                        params)

  class Unfused(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.LayerNorm(vit.LN_EPS, name="norm1")(x)
      x = x + vit.Attention(heads, name="attn")(y, False)
      y = nn.LayerNorm(vit.LN_EPS, name="norm2")(x)
      return x + vit.Mlp(4 * d, name="mlp")(y, False)

  ref = Unfused()
  ref_params = ref.init(jax.random.PRNGKey(0), x)["params"]
  assert jax.tree.map(jnp.shape, ref_params) == jax.tree.map(jnp.shape, params)
  init = block.init(jax.random.PRNGKey(0), x, False)["params"]
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, init, ref_params)))
  r = jnp.asarray(np.random.default_rng(4).normal(size=(b, n, d)).astype(np.float32))

  def loss(m, extra):
    return lambda p, xx: jnp.sum(m.apply({"params": p}, xx, *extra) * r)

  (got, g_got) = jax.value_and_grad(loss(block, (False,)), argnums=(0, 1))(params, x)
  (want, g_want) = jax.value_and_grad(loss(ref, ()), argnums=(0, 1))(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(c))))
