"""The fused conv -> ReLU -> 2x2 max-pool stage (`sim_jax.cpu.kernels.conv_relu_max_pool`) against
PyTorch: values and gradients of x, kernel and bias, with ties, odd sizes and both code paths
(C_in = 1 polyphase sums, C_in > 1 XLA convolution); and the whole LeNet-5 against a torch
LeNet-5 with the same weights, in its plain form and its CPU form (`cpu_ops.FusedConvReluPool`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.cpu.kernels import conv_relu_max_pool
from sim_jax.models import cpu_ops, lenet

torch = pytest.importorskip("torch", reason="torch (the `bench`/`test` extra) is not installed")
F = torch.nn.functional


def _torch_stage(x, kernel, bias, pads, g):
  """relu(conv2d) -> max_pool2d(2) in torch (NCHW / OIHW); returns y and the gradients."""
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
  kt = torch.from_numpy(kernel).permute(3, 2, 0, 1).requires_grad_(True)
  bt = torch.from_numpy(bias).requires_grad_(True)
  (top, bottom), (left, right) = pads
  y = F.conv2d(F.pad(xt, (left, right, top, bottom)), kt, bt)
  y = F.max_pool2d(F.relu(y), 2)
  y.backward(torch.from_numpy(g).permute(0, 3, 1, 2))
  return (y.detach().permute(0, 2, 3, 1).numpy(), xt.grad.permute(0, 2, 3, 1).numpy(),
          kt.grad.permute(2, 3, 1, 0).numpy(), bt.grad.numpy())


@pytest.mark.parametrize("shape,cout,pads,ties", [
    ((3, 12, 12, 1), 4, ((2, 2), (2, 2)), True),   # LeNet conv1 path (C_in = 1), even output
    ((2, 11, 9, 1), 3, ((1, 2), (0, 1)), True),    # odd output rows / columns dropped
    ((2, 9, 10, 1), 5, ((0, 0), (0, 0)), False),
    ((3, 10, 10, 3), 4, ((0, 0), (0, 0)), True),   # C_in > 1: XLA convolution path
    ((2, 9, 8, 2), 3, ((2, 2), (1, 1)), False),
])
def test_conv_relu_max_pool_matches_torch(shape, cout, pads, ties):
  rng = np.random.default_rng(0)
  cin = shape[-1]
  if ties:  # small integers: exact in float32 on both sides, many equal maxima and zeros
    x = rng.integers(0, 3, shape).astype(np.float32)
    kernel = rng.integers(-1, 2, (5, 5, cin, cout)).astype(np.float32)
    bias = rng.integers(-1, 2, (cout,)).astype(np.float32)
  else:
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(5, 5, cin, cout)).astype(np.float32)
    bias = rng.normal(size=(cout,)).astype(np.float32)
  ho = (shape[1] + sum(pads[0]) - 4) // 2
  wo = (shape[2] + sum(pads[1]) - 4) // 2
  g = rng.normal(size=(shape[0], ho, wo, cout)).astype(np.float32)
  if ties:
    g = np.round(4 * g)
  ref = _torch_stage(x, kernel, bias, pads, g)
  for fn in (conv_relu_max_pool, jax.jit(conv_relu_max_pool, static_argnums=3)):
    y, vjp = jax.vjp(lambda a, k, b, f=fn: f(a, k, b, pads), x, kernel, bias)
    got = (y, *vjp(g))
    tol = dict(rtol=0, atol=0) if ties else dict(rtol=1e-5, atol=1e-4)
    for name, a, b in zip(("y", "dx", "dkernel", "dbias"), got, ref):
      np.testing.assert_allclose(np.asarray(a), b, err_msg=name, **tol)
  if ties:  # the tie-breaking matters here: some window has two equal positive maxima
    corners = np.stack([np.asarray(jax.nn.relu(jax.lax.conv_general_dilated(
        x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias))
        [:, a:2 * ho:2, c:2 * wo:2] for a in (0, 1) for c in (0, 1)])
    top = corners.max(0)
    assert ((corners == top).sum(0)[top > 0] > 1).any()


def _torch_lenet(params, size):
  """torch LeNet-5 (conv1 'SAME' below 32 px, as sim_jax) with sim_jax's parameters."""
  nn = torch.nn
  pad1 = 2 if size < 32 else 0
  hw = ((size + 2 * pad1 - 4) // 2 - 4) // 2
  model = nn.Sequential(
      nn.Conv2d(1, 6, 5, padding=pad1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
  head = nn.Sequential(nn.Linear(16 * hw * hw, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
  p = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), params)
  with torch.no_grad():
    for layer, name in ((model[0], "conv1"), (model[3], "conv2")):
      layer.weight.copy_(p[name]["kernel"].permute(3, 2, 0, 1))
      layer.bias.copy_(p[name]["bias"])
    for layer, name in ((head[0], "fc1"), (head[2], "fc2")):
      layer.weight.copy_(p[name]["kernel"].T)
      layer.bias.copy_(p[name]["bias"])

  def forward(x):  # NHWC in; flatten in (h, w, c) order as the Flax model does
    f = model(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return head(f.reshape(f.shape[0], -1))
  return forward, model, head


@pytest.mark.parametrize("stage", [lenet.ConvReluPool, cpu_ops.FusedConvReluPool])
@pytest.mark.parametrize("size", [28, 32])
def test_lenet5_matches_torch_values_and_gradients(size, stage):
  rng = np.random.default_rng(1)
  x = rng.random((4, size, size, 1)).astype(np.float32)
  module = lenet.LeNet5(stage=stage)
  params = module.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  r = rng.normal(size=(4, 84)).astype(np.float32)

  def loss(p):
    return jnp.sum(module.apply({"params": p}, x) * r)
  value, grads = jax.jit(jax.value_and_grad(loss))(params)

  forward, model, head = _torch_lenet(params, size)
  out = forward(torch.from_numpy(x))
  ref_loss = (out * torch.from_numpy(r)).sum()
  ref_loss.backward()
  np.testing.assert_allclose(float(value), float(ref_loss.detach()), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(module.apply({"params": params}, x)),
                             out.detach().numpy(), rtol=1e-5, atol=1e-5)
  ref = {"conv1": model[0], "conv2": model[3], "fc1": head[0], "fc2": head[2]}
  for name, layer in ref.items():
    gk = layer.weight.grad.numpy()
    gk = gk.transpose(2, 3, 1, 0) if gk.ndim == 4 else gk.T
    np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), gk, rtol=1e-4, atol=1e-5,
                               err_msg=name)
    np.testing.assert_allclose(np.asarray(grads[name]["bias"]), layer.bias.grad.numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=name)
