"""Model behaviour: batch norm train vs eval, gradients, attention settings, heads vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.models import default_config, get_model, get_pair_head, heads
from sim_jax.models.testing import random_variables
from sim_jax.models.vit import drop_path


def _cfg(name, **kw):
  c = default_config()
  c.name = name
  c.update(kw)
  return c


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _conv3x3_same(x, w):
  """Reference 3x3 convolution, zero padding 1, stride 1, by explicit loops. x [B,H,W,I]."""
  b, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, h, wd, w.shape[-1]))
  for i in range(h):
    for j in range(wd):
      out[:, i, j] = np.einsum("bkli,klio->bo", xp[:, i:i + 3, j:j + 3], w)
  return out


def test_batch_norm_train_uses_batch_stats_and_updates_running_averages():
  model = get_model(_cfg("resnet_tiny", input_norm="none"))
  x = _images((4, 6, 6, 1))
  variables = random_variables(model, x)
  fwd_train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  (emb_train, _), updated = fwd_train(variables, x)
  # Reference: stem conv1 (3x3, no bias) by loops, then the momentum-0.9 update with the biased
  # batch variance over (B, H, W).
  y = _conv3x3_same(np.asarray(x, np.float64),
                    np.asarray(variables["params"]["backbone"]["conv1"]["kernel"], np.float64))
  old = variables["batch_stats"]["backbone"]["bn1"]
  new = updated["batch_stats"]["backbone"]["bn1"]
  np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * y.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * y.var((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  # Eval mode: each example's embedding is independent of the rest of the batch; train mode
  # normalises with the batch statistics, so it is not.
  fwd_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))
  emb_eval, _ = fwd_eval(variables, x)
  emb_eval_first, _ = fwd_eval(variables, x[:2])
  np.testing.assert_allclose(emb_eval[:2], emb_eval_first, rtol=1e-5, atol=1e-6)
  (emb_train_first, _), _ = fwd_train(variables, x[:2])
  assert np.max(np.abs(np.asarray(emb_train[:2]) - np.asarray(emb_train_first))) > 1e-3
  assert np.max(np.abs(np.asarray(emb_train) - np.asarray(emb_eval))) > 1e-3


GRAD_CASES = [
    ("lenet5", (2, 8, 8, 1), {}),
    ("resnet_tiny", (2, 8, 8, 3), {"projection_depth": 2, "projection_hidden_dim": 16}),
    ("multiscale_tiny", (2, 8, 8, 1), {"attention": "after", "embedding_dim": 16,
                                       "attention_tokens": 4, "attention_heads": 2}),
    ("vgg_tiny", (2, 8, 8, 3), {}),  # attention="before" is VGG's default (seed 003)
    ("vit_tiny", (2, 8, 8, 3), {"patch_size": 4, "dropout_rate": 0.1, "stochastic_depth": 0.1}),
]


@pytest.mark.parametrize("name,shape,kw", GRAD_CASES)
def test_gradients_reach_every_parameter(name, shape, kw):
  model = get_model(_cfg(name, **kw))
  x = _images(shape)
  variables = random_variables(model, x)
  w = np.random.default_rng(1).normal(size=(shape[0], 128))

  @jax.jit
  def grads(params):
    def loss(params):
      (e, aux), _ = model.apply({**variables, "params": params}, x, train=True,
                                rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
      out = jnp.sum(e * w[:, :e.shape[1]])
      return out + (jnp.sum(aux["projection"] ** 2) if "projection" in aux else 0.0)
    return jax.grad(loss)(params)

  g = grads(variables["params"])
  dead = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_leaves_with_path(g)
          if not np.any(np.asarray(leaf) != 0)]
  assert not dead, f"parameters without gradient: {dead}"


def test_three_attention_settings_same_interface_different_functions():
  x = _images((3, 8, 8, 1))
  outs, trees = {}, {}
  for setting in ("none", "before", "after"):
    model = get_model(_cfg("multiscale_tiny", attention=setting, embedding_dim=16,
                           attention_tokens=4, attention_heads=2))
    trees[setting] = random_variables(model, x, seed=0)
    outs[setting] = jax.jit(model.apply)(trees[setting], x)
  for emb, aux in outs.values():
    assert emb.shape == (3, 16) and set(aux) == {"features"}
  # "before" gates the feature map (pooled features change), "after" only the embedding.
  before_attn = trees["before"]["params"]["attention"]
  after_attn = trees["after"]["params"]["attention"]
  assert set(before_attn) == {"channel_fc1", "channel_fc2", "spatial_conv"}
  assert set(after_attn) == {"mhsa", "norm"}
  shared = trees["none"]["params"]
  assert set(trees["before"]["params"]) == set(shared) | {"attention"}
  # Same backbone and embedding weights (seeded identically): only the attention differs.
  np.testing.assert_allclose(outs["after"][1]["features"], outs["none"][1]["features"], rtol=1e-6)
  assert np.max(np.abs(np.asarray(outs["before"][1]["features"])
                       - np.asarray(outs["none"][1]["features"]))) > 1e-4
  for a, b in (("none", "before"), ("none", "after"), ("before", "after")):
    assert np.max(np.abs(np.asarray(outs[a][0]) - np.asarray(outs[b][0]))) > 1e-3


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def test_channel_spatial_attention_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype(np.float32)
  module = heads.ChannelSpatialAttention(reduction=4)
  v = random_variables(module, jnp.asarray(x))
  out = module.apply(v, jnp.asarray(x))
  p = v["params"]
  mlp = lambda u: (np.maximum(u @ p["channel_fc1"]["kernel"] + p["channel_fc1"]["bias"], 0)
                   @ p["channel_fc2"]["kernel"] + p["channel_fc2"]["bias"])
  xc = x * _sigmoid(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None, :]
  s = np.concatenate([xc.mean(-1, keepdims=True), xc.max(-1, keepdims=True)], -1)
  sp = np.pad(s, ((0, 0), (3, 3), (3, 3), (0, 0)))
  k = np.asarray(p["spatial_conv"]["kernel"])
  gate = np.zeros((2, 5, 5, 1))
  for i in range(5):
    for j in range(5):
      gate[:, i, j] = np.einsum("bkli,klio->bo", sp[:, i:i + 7, j:j + 7], k)
  ref = xc * _sigmoid(gate + np.asarray(p["spatial_conv"]["bias"]))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_embedding_self_attention_matches_numpy():
  e = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
  module = heads.EmbeddingSelfAttention(tokens=3, heads=2)
  v = random_variables(module, jnp.asarray(e))
  out = np.asarray(module.apply(v, jnp.asarray(e)))
  p = v["params"]["mhsa"]
  t = e.reshape(3, 3, 4)  # [B, T, D]
  proj = lambda name: np.einsum("btd,dhk->bthk", t, p[name]["kernel"]) + np.asarray(
      p[name]["bias"])
  q, k, val = proj("query"), proj("key"), proj("value")  # [B, T, heads, 2]
  ref = np.zeros((3, 3, 4))
  for b in range(3):
    for h in range(2):
      scores = q[b, :, h] @ k[b, :, h].T / np.sqrt(2)
      w = np.exp(scores - scores.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      ref[b] += (w @ val[b, :, h]) @ np.asarray(p["out"]["kernel"][h])
  y = t + ref + np.asarray(p["out"]["bias"])
  mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
  n = v["params"]["norm"]
  ref = (y - mu) / np.sqrt(var + 1e-6) * np.asarray(n["scale"]) + np.asarray(n["bias"])
  np.testing.assert_allclose(out, ref.reshape(3, 12), rtol=1e-4, atol=1e-5)


def test_embedding_self_attention_rejects_indivisible_sizes():
  with pytest.raises(ValueError, match="embedding_dim=10.*attention_tokens=3"):
    heads.EmbeddingSelfAttention(tokens=3, heads=1).init(jax.random.key(0), jnp.zeros((1, 10)))


def test_projection_head_matches_numpy_and_uses_unnormalised_embedding():
  model = get_model(_cfg("lenet5", normalize=False, embedding_dim=6, projection_depth=3,
                         projection_hidden_dim=5, projection_dim=4))
  x = _images((2, 8, 8, 1))
  v = random_variables(model, x)
  e, aux = jax.jit(model.apply)(v, x)
  p = v["params"]["projection"]
  z = np.asarray(e, np.float64)
  for i in range(3):
    z = z @ np.asarray(p[f"dense_{i}"]["kernel"]) + np.asarray(p[f"dense_{i}"]["bias"])
    z = np.maximum(z, 0) if i < 2 else z
  np.testing.assert_allclose(aux["projection"], z, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["abs_diff", "euclidean"])
def test_pair_head_matches_numpy(mode):
  rng = np.random.default_rng(0)
  e1, e2 = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
  head = get_pair_head(_cfg("lenet5", pair_head=mode))
  v = random_variables(head, jnp.asarray(e1), jnp.asarray(e2))
  logit = np.asarray(head.apply(v, jnp.asarray(e1), jnp.asarray(e2)))
  p = v["params"]
  if mode == "abs_diff":
    ref = np.abs(e1 - e2) @ np.asarray(p["dense"]["kernel"])[:, 0] + np.asarray(p["dense"]["bias"])
  else:
    d = np.array([np.sqrt(sum((a - b) ** 2 for a, b in zip(r1, r2))) for r1, r2 in zip(e1, e2)])
    ref = float(p["bias"]) - float(p["scale"]) * d
  assert logit.shape == (5,)
  np.testing.assert_allclose(logit, ref, rtol=1e-5, atol=1e-5)
  sim = head.apply(v, jnp.asarray(e1), jnp.asarray(e2), method=head.similarity)
  np.testing.assert_allclose(sim, _sigmoid(ref), rtol=1e-5)


def test_pair_head_euclidean_init_and_bad_input():
  head = get_pair_head(_cfg("lenet5", pair_head="euclidean"))
  e = jnp.zeros((2, 3))
  v = head.init(jax.random.key(0), e, e)
  assert float(v["params"]["scale"]) == 1.0 and float(v["params"]["bias"]) == 1.0
  # Identical pairs: distance 0 -> logit 1 -> similarity sigmoid(1), gradient finite.
  g = jax.grad(lambda a: jnp.sum(head.apply(v, a, a)))(e)
  assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match=r"e1 \(2, 3\), e2 \(2, 4\)"):
    head.apply(v, e, jnp.zeros((2, 4)))


def test_l2_normalize_matches_numpy_and_keeps_zero_rows():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], np.float32)
  out = np.asarray(heads.l2_normalize(jnp.asarray(x)))
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)


def test_drop_path_and_dropout_only_in_train_mode():
  model = get_model(_cfg("vit_tiny", patch_size=4, stochastic_depth=0.5, dropout_rate=0.2))
  x = _images((4, 8, 8, 3))
  v = random_variables(model, x)
  fwd = jax.jit(lambda v, x, k, train: model.apply(v, x, train=train, rngs={"dropout": k}),
                static_argnums=3)
  e_eval1, _ = fwd(v, x, jax.random.key(1), False)
  e_eval2, _ = fwd(v, x, jax.random.key(2), False)
  np.testing.assert_array_equal(e_eval1, e_eval2)
  e_tr1, _ = fwd(v, x, jax.random.key(1), True)
  e_tr2, _ = fwd(v, x, jax.random.key(2), True)
  assert np.max(np.abs(np.asarray(e_tr1) - np.asarray(e_tr2))) > 1e-4
  # drop_path keeps each sample with prob 1 - rate, scaled by 1 / (1 - rate).
  y = np.asarray(drop_path(jnp.ones((20000, 2)), 0.25, jax.random.key(0)))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
  assert np.all(y[:, 0] == y[:, 1])
  assert abs(np.mean(y[:, 0] == 0) - 0.25) < 0.015


def test_real_init_matches_eval_shape():
  # The slow path the trainer takes (model.init); "rbg" keys keep its compile time small here.
  model = get_model(_cfg("resnet_tiny", width=4))
  x = jnp.zeros((1, 8, 8, 3))
  real = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert jax.tree_util.tree_structure(real) == jax.tree_util.tree_structure(shapes)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(real))
  np.testing.assert_array_equal(real["batch_stats"]["backbone"]["bn1"]["var"], np.ones(4))
