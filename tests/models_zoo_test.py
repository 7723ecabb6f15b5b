"""get_model: output shapes, published parameter counts, bad input, dtype / remat, summary."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.models import MODEL_NAMES, default_config, get_model, summary
from sim_jax.models.testing import random_variables


def _cfg(name, **kw):
  c = default_config()
  c.name = name
  c.update(kw)
  return c


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _init_shapes(cfg, shape):
  return jax.eval_shape(get_model(cfg).init, jax.random.key(0), jnp.zeros(shape))


# Published counts (no classifier): torchvision resnet18/34/50 minus fc, vgg16().features,
# timm vit_*_patch16_224 minus head (e.g. 86,567,656 - 769,000 for ViT-B/16), LeNet-5 with its
# 10-unit output layer (LeCun et al. 1998: 61,706 trainable weights for 6-16-120-84-10).
PUBLISHED = [
    ("resnet18", (1, 224, 224, 3), {}, 11_176_512),
    ("resnet34", (1, 224, 224, 3), {}, 21_284_672),
    ("resnet50", (1, 224, 224, 3), {}, 23_508_032),
    ("vgg16", (1, 224, 224, 3), {"attention": "none"}, 14_714_688),
    ("vit_ti", (1, 224, 224, 3), {}, 5_524_416),
    ("vit_s", (1, 224, 224, 3), {}, 21_665_664),
    ("vit_b", (1, 224, 224, 3), {}, 85_798_656),
]


@pytest.mark.parametrize("name,shape,kw,expected", PUBLISHED)
def test_backbone_parameter_counts_match_published(name, shape, kw, expected):
  params = _init_shapes(_cfg(name, embedding_dim=0, **kw), shape)["params"]
  assert _count(params) == expected


@pytest.mark.parametrize("size", [28, 32])
def test_lenet5_has_61706_parameters(size):
  params = _init_shapes(_cfg("lenet5", embedding_dim=10), (1, size, size, 1))["params"]
  assert _count(params) == 61_706


def test_resnet_stem_choice_by_image_size():
  small = _init_shapes(_cfg("resnet50", embedding_dim=0), (1, 32, 32, 3))["params"]
  large = _init_shapes(_cfg("resnet50", embedding_dim=0), (1, 224, 224, 3))["params"]
  assert small["backbone"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
  assert large["backbone"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
  forced = _init_shapes(_cfg("resnet50", embedding_dim=0, stem="imagenet"), (1, 32, 32, 3))
  assert forced["params"]["backbone"]["conv1"]["kernel"].shape == (7, 7, 3, 64)


# (name, input shape, config overrides, expected feature size F of aux["features"])
SHAPES = [
    ("lenet5", (2, 8, 8, 1), {}, 84),
    ("lenet5", (2, 28, 28, 1), {}, 84),
    ("multiscale_tiny", (2, 8, 8, 1), {}, 12 * 4),
    ("multiscale_tiny", (2, 28, 28, 1),
     {"attention": "after", "attention_tokens": 4, "attention_heads": 2}, 12 * 4),
    ("resnet_tiny", (2, 32, 32, 3), {}, 8 * 8),
    ("resnet_tiny_bottleneck", (2, 64, 64, 3), {"width": 4}, 32 * 4),
    ("vgg_tiny", (2, 32, 32, 3), {}, 8 * 8),
    ("vit_tiny", (2, 32, 32, 3), {"patch_size": 8, "pooling": "mean"}, 32),
    ("vit_tiny", (2, 28, 28, 1), {"patch_size": 7}, 32),
]


@pytest.mark.parametrize("name,shape,kw,features", SHAPES)
def test_output_shapes_and_unit_norm(name, shape, kw, features):
  model = get_model(_cfg(name, embedding_dim=16, projection_depth=2, projection_dim=8, **kw))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=shape), jnp.float32)
  variables = random_variables(model, x)
  emb, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert emb.shape == (shape[0], 16) and emb.dtype == jnp.float32
  assert aux["features"].shape == (shape[0], features)
  assert aux["projection"].shape == (shape[0], 8)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown model name 'resnet51'") as err:
    get_model(_cfg("resnet51"))
  for name in ("lenet5", "vgg16", "resnet50", "vit_b", "multiscale"):
    assert name in str(err.value) and name in MODEL_NAMES


@pytest.mark.parametrize("field,value", [("attention", "middle"), ("pooling", "sum"),
                                         ("stem", "huge"), ("dtype", "float16"),
                                         ("input_norm", "zscore")])
def test_bad_config_values_name_field_and_value(field, value):
  with pytest.raises(ValueError, match=f"{field}.*{value}"):
    get_model(_cfg("resnet_tiny", **{field: value}))


def test_wrong_rank_names_expected_and_actual_shape():
  model = get_model(_cfg("lenet5"))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\].*\(28, 28, 1\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((28, 28, 1)))


def test_wrong_channel_count_names_expected_and_actual_shape():
  model = get_model(_cfg("resnet_tiny"))
  variables = random_variables(model, jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match=r"1 channels.*\[B, H, W, 1\].*\(2, 8, 8, 3\)"):
    model.apply(variables, jnp.zeros((2, 8, 8, 3)))
  explicit = get_model(_cfg("resnet_tiny", in_channels=3))
  with pytest.raises(ValueError, match=r"3 channels.*\(2, 8, 8, 1\)"):
    jax.eval_shape(explicit.init, jax.random.key(0), jnp.zeros((2, 8, 8, 1)))


def test_vit_rejects_image_not_multiple_of_patch():
  with pytest.raises(ValueError, match=r"patch_size=16.*\(1, 28, 28, 3\)"):
    _init_shapes(_cfg("vit_tiny"), (1, 28, 28, 3))


def test_attention_before_on_pooled_backbone_raises():
  with pytest.raises(ValueError, match="attention='before'.*LeNet5"):
    _init_shapes(_cfg("lenet5", attention="before"), (1, 8, 8, 1))


def test_bfloat16_compute_keeps_float32_params_and_is_close():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 3)), jnp.float32)
  f32 = get_model(_cfg("resnet_tiny"))
  b16 = get_model(_cfg("resnet_tiny", dtype="bfloat16"))
  variables = random_variables(f32, x)
  assert all(p.dtype == jnp.float32
             for p in jax.tree_util.tree_leaves(jax.eval_shape(b16.init, jax.random.key(0), x)))
  e32, _ = jax.jit(f32.apply)(variables, x)
  e16, _ = jax.jit(b16.apply)(variables, x)
  assert e16.dtype == jnp.float32
  # bf16 has an 8-bit mantissa: cosine of the unit embeddings must still be ~1.
  assert np.all(np.sum(np.asarray(e32) * np.asarray(e16), axis=1) > 0.98)


def test_remat_computes_the_same_function():
  # Forward only for a conv net (its backward compiles slowly on CPU); gradients on the ViT below.
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 8, 8, 3)), jnp.float32)
  plain = get_model(_cfg("resnet_tiny", width=4))
  remat = get_model(_cfg("resnet_tiny", width=4, remat=True))
  variables = random_variables(plain, x)
  fwd = lambda m: jax.jit(lambda v: m.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
  # The remat model really wraps blocks in a checkpoint (rematerialisation) primitive.
  jaxpr = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x, train=False))(variables))
  assert "remat" in jaxpr(remat) and "remat" not in jaxpr(plain)
  (e1, _), s1 = fwd(plain)
  (e2, _), s2 = fwd(remat)
  np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_gives_the_same_gradient():
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 8, 8, 3)), jnp.float32)
  plain = get_model(_cfg("vit_tiny", patch_size=4))
  remat = get_model(_cfg("vit_tiny", patch_size=4, remat=True))
  variables = random_variables(plain, x)

  def loss(params, model):
    e, _ = model.apply({**variables, "params": params}, x, train=True)
    return jnp.sum(e[:, 0])
  g1 = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], plain)
  g2 = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], remat)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_summary_counts_and_flops():
  # LeNet-5 on 28x28x1 with SAME conv1: multiply-adds by hand, 2 FLOPs each.
  macs = (28 * 28 * 6 * 25) + (10 * 10 * 16 * 25 * 6) + 400 * 120 + 120 * 84 + 84 * 10
  s = summary.summarize(_cfg("lenet5", embedding_dim=10, normalize=False), (28, 28, 1))
  assert s["params"] == 61_706 and s["params_backbone"] == 61_706 - 850
  assert s["batch_stats"] == 0
  # XLA skips the zero-padding taps of conv1 and adds bias / ReLU / pooling ops: within a few %.
  assert 0.98 * 2 * macs <= s["flops_per_image"] <= 1.1 * 2 * macs
