"""`sim_jax.cpu.kernels.materialize` (config.model.materialize): the identity XLA:CPU cannot fuse
through; `cpu_ops.resolve_materialize`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax import models
from sim_jax.cpu import kernels
from sim_jax.models import cpu_ops


def test_values_are_bit_identical_including_nan_inf_and_bfloat16():
  """NaN payload, -0.0, infinities and bfloat16 pass unchanged; denormals behave as after ReLU."""
  x = np.array([[np.nan, 1.5, -0.0], [np.inf, -np.inf, 1e-30]], np.float32)
  out = np.asarray(jax.jit(kernels.materialize)(x))
  np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))
  # XLA:CPU flushes denormals to zero in arithmetic; ReLU itself does, so materialize(relu(x))
  # changes nothing a ReLU network sees.
  tiny = np.array([3e-39, -3e-39, 2.0], np.float32)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda a: kernels.materialize(jax.nn.relu(a)))(tiny)).view(np.uint32),
      np.asarray(jax.jit(jax.nn.relu)(tiny)).view(np.uint32))
  xb = jnp.asarray([[1.25, -7.0], [0.1, 300.0]], jnp.bfloat16)
  assert kernels.materialize(xb).dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(kernels.materialize(xb), np.float32),
                                np.asarray(xb, np.float32))
  empty = jnp.zeros((0, 3))
  assert kernels.materialize(empty).shape == (0, 3)


def test_gradients_are_the_identity():
  """d/dx sum(w * materialize(relu(x))) = w * [x > 0], the closed form, forward and reverse."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 4)).astype(np.float32)
  w = rng.standard_normal((3, 4)).astype(np.float32)
  f = lambda x: jnp.sum(w * kernels.materialize(jax.nn.relu(x)))  # noqa: E731
  np.testing.assert_allclose(jax.jit(jax.grad(f))(x), w * (x > 0), rtol=0, atol=0)
  _, tangent = jax.jvp(kernels.materialize, (x,), (w,))
  np.testing.assert_array_equal(tangent, w)


def test_xla_cpu_keeps_the_loop_so_the_buffer_is_materialised():
  """The mechanism: XLA removes a barrier, an identity cond and loop-invariant state; this one
  trip `while` must survive the CPU compiler (if a later XLA folds it, this test says so)."""
  def f(a, b, s):
    y = kernels.materialize(jax.nn.relu(a * s + b))
    return jnp.transpose(y, (3, 1, 2, 0)).sum(0) + y.sum(-1).T.reshape(4, 4, 2)

  args = (jnp.ones((2, 4, 4, 3)), jnp.ones((3,)), jnp.ones((3,)))
  hlo = jax.jit(f).lower(*args).compile().as_text()
  assert hlo.count(" while(") == 1, hlo


def _tiny_resnet_grads(mode):
  cfg = models.default_config()
  cfg.name, cfg.materialize = "resnet_tiny", mode
  model = models.get_model(cfg)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32))
  variables = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)

  def loss(params):
    (e, _), state = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
    return jnp.sum(e * jnp.arange(e.shape[-1])), state

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value, state), grads = step(variables["params"])
  return value, state, grads, step.lower(variables["params"]).compile().as_text()


def test_resnet_with_and_without_materialize_are_bit_identical():
  on, off = _tiny_resnet_grads("on"), _tiny_resnet_grads("off")
  # One loop per ReLU output on, none off: stem + 4 basic blocks x 2 ReLUs = 9.
  assert on[3].count(" while(") == 9 and off[3].count(" while(") == 0
  assert float(on[0]) == float(off[0])
  for a, b in zip(jax.tree.leaves((on[1], on[2])), jax.tree.leaves((off[1], off[2]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_auto_is_on_for_cpu_only_and_bad_values_name_the_key():
  assert cpu_ops.resolve_materialize("auto", "cpu") is True
  assert cpu_ops.resolve_materialize("auto", "gpu") is False
  assert cpu_ops.resolve_materialize("auto", "tpu") is False
  assert cpu_ops.resolve_materialize("on", "gpu") is True
  assert cpu_ops.resolve_materialize("off", "cpu") is False
  assert cpu_ops.resolve_materialize("auto") is (jax.default_backend() == "cpu")
  cfg = models.default_config()
  cfg.name, cfg.materialize = "vit_tiny", "always"
  with pytest.raises(ValueError, match=r"materialize must be one of .*'always'"):
    models.get_model(cfg)
  # A model config saved before the field existed still builds (it means "auto").
  old = models.default_config()
  del old["materialize"]
  old.name = "resnet_tiny"
  assert models.get_model(old).backbone.materialize is (jax.default_backend() == "cpu")
