"""The XLA:CPU forms `get_model` selects on CPU (sim_jax.models.cpu_ops) against the plain Flax
modules every other platform gets: which form each platform builds, and for the same variables
the same parameter tree, initial values, embeddings, batch statistics and gradients.

The plain modules are the reference here; they are checked against PyTorch and NumPy in
tests/models_fastconv_test.py (LeNet-5), tests/models_vit_fast_test.py (attention) and
tests/models_convert_test.py (the whole ViT)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.cpu import kernels
from sim_jax.models import cpu_ops, default_config, get_model, lenet, multiscale, vit
from sim_jax.models.testing import random_variables


def _cfg(name, **kw):
  c = default_config()
  c.name = name
  c.update(kw)
  return c


@pytest.mark.parametrize("name,kw,field,cpu,plain", [
    ("lenet5", {}, "stage", cpu_ops.FusedConvReluPool, lenet.ConvReluPool),
    ("multiscale_tiny", {}, "pool", kernels.max_pool_2x2, multiscale.max_pool),
    ("vit_tiny", {"patch_size": 4}, "block", cpu_ops.FusedBlock, vit.Block),
    ("resnet_tiny", {}, "materialize", True, False),
    ("resnet_tiny", {"materialize": "on"}, "materialize", True, True),
    ("resnet_tiny", {"materialize": "off"}, "materialize", False, False),
    ("mobilenet_v3_small", {}, "depthwise", cpu_ops.ShiftedDepthwiseConv, nn.Conv),
    ("efficientnet_b0", {}, "depthwise", cpu_ops.ShiftedDepthwiseConv, nn.Conv),
])
def test_cpu_forms_are_selected_on_cpu_only(name, kw, field, cpu, plain):
  cfg = _cfg(name, **kw)
  assert getattr(get_model(cfg, "cpu").backbone, field) is cpu
  assert getattr(get_model(cfg, "gpu").backbone, field) is plain
  assert getattr(get_model(cfg, "tpu").backbone, field) is plain
  default = cpu if jax.default_backend() == "cpu" else plain
  assert getattr(get_model(cfg).backbone, field) is default


def test_unknown_platform_is_refused_by_name():
  with pytest.raises(ValueError, match=r"platform must be one of .*'CPU'"):
    get_model(_cfg("lenet5"), "CPU")


def test_other_backbones_are_the_same_on_every_platform():
  for name in ("vgg_tiny", "swin_tiny", "densenet121"):
    assert get_model(_cfg(name), "cpu") == get_model(_cfg(name), "tpu"), name


# (name, image shape, config overrides, relative tolerance of embeddings / gradients).
CASES = [
    ("lenet5", (3, 28, 28, 1), {}, 1e-5),      # conv1 from parity planes, conv2 s2d gradient
    ("lenet5", (2, 8, 8, 1), {}, 1e-5),        # conv2 with 'SAME' padding
    ("lenet5", (2, 3, 3, 1), {}, 1e-5),        # conv2's output is 1 pixel: its pool is skipped
    ("multiscale_tiny", (2, 9, 9, 1), {}, 0.0),  # odd edges dropped; the same function exactly
    ("resnet_tiny", (2, 8, 8, 3), {}, 0.0),    # materialize is an identity, bit for bit
    ("vit_tiny", (2, 8, 8, 3), {"patch_size": 4, "dropout_rate": 0.1, "stochastic_depth": 0.2},
     1e-4),
    ("vit_tiny", (2, 8, 12, 3), {"patch_size": 4, "pooling": "mean", "remat": True}, 1e-4),
    # 3x3 and 5x5 depthwise taps at strides 1 and 2 on odd and even maps, down to 1 pixel.
    ("mobilenet_v3_small", (8, 28, 28, 1), {}, 1e-4),
    ("efficientnet_b0", (8, 27, 21, 3), {"remat": True}, 1e-4),
]


def _outputs(model, variables, x, r):
  """(embeddings, batch statistics, gradients of sum(embeddings * r) w.r.t. the params) of a
  training-mode step with fixed dropout randomness."""
  def loss(params):
    (e, _), state = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(7)})
    return jnp.sum(e * r), (e, state)
  (_, (e, state)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return e, state, grads


@pytest.mark.parametrize("name,shape,kw,tol", CASES)
def test_cpu_form_computes_the_plain_modules_function(name, shape, kw, tol):
  cfg = _cfg(name, **kw)
  fused, plain = get_model(cfg, "cpu"), get_model(cfg, "gpu")
  x = jnp.asarray(np.random.default_rng(0).uniform(size=shape).astype(np.float32))
  shapes = [jax.eval_shape(m.init, jax.random.PRNGKey(0), x) for m in (fused, plain)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, *shapes)))
  variables = random_variables(plain, x)
  r = jnp.asarray(np.random.default_rng(1).normal(size=(shape[0], cfg.embedding_dim)),
                  jnp.float32)
  got, want = _outputs(fused, variables, x, r), _outputs(plain, variables, x, r)
  for part, a, b in zip(("embeddings", "batch_stats", "grads"), got, want):
    assert jax.tree.structure(a) == jax.tree.structure(b), part
    # The absolute tolerance scales with the part's largest value, not the leaf's: a leaf can be
    # zero up to rounding (a BatchNorm bias whose shift the next BatchNorm removes, as after
    # MBConv's projection), and relative to itself that rounding is O(1).
    part_scale = max((float(np.max(np.abs(np.asarray(v)))) for v in jax.tree.leaves(b)),
                     default=0.0) or 1.0
    for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
      scale = part_scale
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol * scale,
                                 err_msg=f"{part} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name,shape,kw", [
    ("lenet5", (1, 28, 28, 1), {}),
    ("vit_tiny", (1, 8, 8, 3), {"patch_size": 4}),
    ("mobilenet_v3_small", (1, 16, 16, 3), {}),
])
def test_cpu_form_initialises_the_same_values(name, shape, kw):
  # A run started on CPU and one started on TPU from the same seed begin from the same weights.
  cfg = _cfg(name, **kw)
  x = jnp.zeros(shape)
  fused, plain = (jax.jit(get_model(cfg, p).init)(jax.random.PRNGKey(3), x)
                  for p in ("cpu", "tpu"))
  assert jax.tree.structure(fused) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
