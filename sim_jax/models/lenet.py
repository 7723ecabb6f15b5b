"""LeNet-5 (LeCun et al. 1998) as the Siamese subnet of seed 002.

conv1 6@5x5 -> ReLU -> 2x2 max-pool -> conv2 16@5x5 -> ReLU -> 2x2 max-pool -> flatten ->
fc1 120 -> ReLU -> fc2 84 -> ReLU; returns the 84-d features [B, 84]. The `Encoder`'s embedding
Dense is the classic F7 layer (84 -> E): with E = 10 the network has the published 61,706
parameters at 32x32x1 and at 28x28x1. ReLU and max-pooling replace the original scaled tanh and
trainable subsampling, as in seed 002 and every modern re-implementation.
Padding: conv1 uses 'SAME' when H < 32 (MNIST's 28x28 padded by 2, as in the original paper's
32x32 framing) else 'VALID'; conv2 uses 'VALID' unless the map is smaller than 5 (8x8 digits);
pools are skipped on 1-pixel maps. So 8x8, 28x28, 32x32 and 64x64 inputs all work.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.models.encoder import conv_nhwc, conv_relu_max_pool


class ConvReluPool(nn.Module):
  """nn.Conv(features, (5, 5), padding) -> ReLU -> 2x2 max pool (skipped on 1-pixel maps).

  The parameters are nn.Conv's (kernel [5, 5, C, features] lecun-normal, bias zeros, float32,
  computed in `dtype`); values and gradients are those of the composition with nn.max_pool.
  The stage runs as `encoder.conv_relu_max_pool` (one custom VJP; a C_in = 1 convolution as
  fused shifted multiply-adds), which made the LeNet-5 train step faster on XLA:CPU
  (bench/README.md).
  """
  features: int
  padding: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (5, 5, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = tuple((int(lo), int(hi)) for lo, hi in
                 lax.padtype_to_pads(x.shape[1:3], (5, 5), (1, 1), self.padding))
    out_hw = [x.shape[1 + a] + sum(pads[a]) - 4 for a in range(2)]
    if min(out_hw) >= 2:
      return conv_relu_max_pool(x, kernel, bias, pads)
    return nn.relu(conv_nhwc(x, kernel, pads) + bias)


class LeNet5(nn.Module):
  """LeNet-5 up to F6 (84 units); see the module docstring for padding rules."""
  dtype: Any = jnp.float32
  stem_path = ("conv1",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no batch norm or dropout
    pad1 = "SAME" if x.shape[1] < 32 else "VALID"
    x = ConvReluPool(6, pad1, self.dtype, name="conv1")(x)
    pad2 = "VALID" if min(x.shape[1:3]) >= 5 else "SAME"
    x = ConvReluPool(16, pad2, self.dtype, name="conv2")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, dtype=self.dtype, name="fc1")(x))
    return nn.relu(nn.Dense(84, dtype=self.dtype, name="fc2")(x))
