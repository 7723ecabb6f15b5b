"""The ViT's faster formulations (sim_jax.models.vit) against independent references: exact GELU
vs math.erf in float64 and torch, token-flattened Dense layers vs a NumPy forward / backward, and
the compiled block gradient free of the transposed copies the 2-D formulation exists to avoid."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.models import vit


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
    return vit.dense_tokens(5, x, "lin", jnp.float32)


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
  block = vit.Block(heads=2, mlp_dim=4 * d)
  x = jnp.ones((b, n, d))
  params = block.init(jax.random.PRNGKey(0), x, False)

  def loss(p, xx):
    return jnp.sum(jnp.sin(block.apply(p, xx, False)))

  hlo = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
  shapes = re.findall(r"= f32\[(\d+),(\d+)\]\{1,0\} (?:fusion|copy|transpose)\(", hlo)
  transposed = [s for s in shapes if int(s[1]) == b * n and int(s[0]) in (d, 3 * d, 4 * d)]
  assert not transposed, f"transposed activation copies in the block gradient: {transposed}"
