"""Second-priority backbones (seed 004): published counts, shapes, Swin attention vs loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.models import default_config, get_model
from sim_jax.models.swin import ShiftedWindowAttention
from sim_jax.models.testing import random_variables


def _cfg(name, **kw):
  c = default_config()
  c.name = name
  c.update(kw)
  return c


# torchvision totals minus their classifiers: mobilenet_v3_small 2,542,856 - (576*1024 + 1024 +
# 1024*1000 + 1000); efficientnet_b0 5,288,548 - (1280*1000 + 1000); densenet121 7,978,856 -
# (1024*1000 + 1000); swin_t 28,288,354 - (768*1000 + 1000).
PUBLISHED = [("mobilenet_v3_small", 927_008, 576), ("efficientnet_b0", 4_007_548, 1280),
             ("densenet121", 6_953_856, 1024), ("swin_t", 27_519_354, 768)]


@pytest.mark.parametrize("name,count,features", PUBLISHED)
def test_parameter_counts_and_shapes(name, count, features):
  model = get_model(_cfg(name, embedding_dim=0))
  for size in (224, 8):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    emb, aux = jax.eval_shape(model.apply, variables, x)
    assert emb.shape == (2, features) and aux["features"].shape == (2, features)
    if size == 224:
      leaves = jax.tree_util.tree_leaves(variables["params"])
      assert sum(math.prod(p.shape) for p in leaves) == count


def test_mobilenet_forward_runs():
  model = get_model(_cfg("mobilenet_v3_small", embedding_dim=16))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
  emb, aux = jax.jit(model.apply)(random_variables(model, x), x)
  assert emb.shape == (2, 16) and aux["features"].shape == (2, 576)
  assert np.all(np.isfinite(np.asarray(emb)))


@pytest.mark.parametrize("name,shape", [("swin_tiny", (2, 16, 16, 3))])
def test_forward_and_gradients_reach_every_parameter(name, shape):
  model = get_model(_cfg(name, embedding_dim=16, stochastic_depth=0.1))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=shape), jnp.float32)
  variables = random_variables(model, x)
  w = np.random.default_rng(1).normal(size=(shape[0], 16))

  @jax.jit
  def loss_and_grads(params):
    def loss(params):
      (e, _), _ = model.apply({**variables, "params": params}, x, train=True,
                              rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
      return jnp.sum(e * w), e
    return jax.value_and_grad(loss, has_aux=True)(params)

  (_, emb), grads = loss_and_grads(variables["params"])
  assert emb.shape == (shape[0], 16)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g) != 0)]
  assert not dead, f"parameters without gradient: {dead}"


def _window_attention_loops(x, p, heads, w, shift):
  """Shifted-window attention token by token (Liu et al. 2021, torchvision's padding rules)."""
  h, wd, c = x.shape
  hp, wp = -(-h // w) * w, -(-wd // w) * w
  xp = np.zeros((hp, wp, c))
  xp[:h, :wd] = x
  sh = 0 if w >= hp else shift
  sw = 0 if w >= wp else shift
  xr = np.empty_like(xp)
  for i in range(hp):
    for j in range(wp):
      xr[i, j] = xp[(i + sh) % hp, (j + sw) % wp]
  dh = c // heads
  qkv = (xr @ p["qkv"]["kernel"] + p["qkv"]["bias"]).reshape(hp, wp, 3, heads, dh)

  def region(i, n, s):
    return 0 if not s else (0 if i < n - w else 1 if i < n - s else 2)

  table = np.asarray(p["relative_position_bias_table"])
  out = np.zeros((hp, wp, c))
  for i in range(hp):
    for j in range(wp):
      others = [(a, b) for a in range(hp) for b in range(wp)
                if a // w == i // w and b // w == j // w]
      for hd in range(heads):
        scores = []
        for a, b in others:
          s = qkv[i, j, 0, hd] @ qkv[a, b, 1, hd] * dh ** -0.5
          s += table[(i % w - a % w + w - 1) * (2 * w - 1) + (j % w - b % w + w - 1), hd]
          if (region(i, hp, sh), region(j, wp, sw)) != (region(a, hp, sh), region(b, wp, sw)):
            s -= 100.0
          scores.append(s)
        a_ = np.exp(np.array(scores) - max(scores))
        a_ /= a_.sum()
        out[i, j, hd * dh:(hd + 1) * dh] = sum(wt * qkv[a, b, 2, hd] for wt, (a, b) in
                                               zip(a_, others))
  out = out @ p["proj"]["kernel"] + p["proj"]["bias"]
  final = np.empty_like(out)
  for i in range(hp):
    for j in range(wp):
      final[(i + sh) % hp, (j + sw) % wp] = out[i, j]
  return final[:h, :wd]


@pytest.mark.parametrize("size,window,shift", [(5, 3, 1), (4, 2, 0), (3, 4, 2)])
def test_shifted_window_attention_matches_loops(size, window, shift):
  x = np.random.default_rng(0).normal(size=(1, size, size, 4)).astype(np.float32)
  module = ShiftedWindowAttention(heads=2, window=window, shift=shift)
  v = random_variables(module, jnp.asarray(x))
  v["params"]["relative_position_bias_table"] *= 20  # make the bias matter
  out = np.asarray(jax.jit(module.apply)(v, jnp.asarray(x)))[0]
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["params"])
  ref = _window_attention_loops(x[0].astype(np.float64), p, 2, window, shift)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
