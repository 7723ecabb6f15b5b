"""LeNet-5 (LeCun et al. 1998) as the Siamese subnet of seed 002.

conv1 6@5x5 -> ReLU -> 2x2 max-pool -> conv2 16@5x5 -> ReLU -> 2x2 max-pool -> flatten ->
fc1 120 -> ReLU -> fc2 84 -> ReLU; returns the 84-d features [B, 84]. The `Encoder`'s embedding
Dense is the classic F7 layer (84 -> E): with E = 10 the network has the published 61,706
parameters at 32x32x1 and at 28x28x1. ReLU and max-pooling replace the original scaled tanh and
trainable subsampling, as in seed 002 and every modern re-implementation.
Padding: conv1 uses 'SAME' when H < 32 (MNIST's 28x28 padded by 2, as in the original paper's
32x32 framing) else 'VALID'; conv2 uses 'VALID' unless the map is smaller than 5 (8x8 digits);
pools are skipped on 1-pixel maps. So 8x8, 28x28, 32x32 and 64x64 inputs all work.
On CPU `get_model` builds each conv -> ReLU -> pool stage as
`sim_jax.models.cpu_ops.FusedConvReluPool` (same parameters and function, one custom VJP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvReluPool(nn.Conv):
  """`nn.Conv` -> ReLU -> 2x2 / stride-2 max pool; the pool is skipped when the convolution's
  output is under 2 pixels high or wide. The parameters are nn.Conv's (`kernel`, `bias`)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(super().__call__(x))
    return nn.max_pool(y, (2, 2), (2, 2)) if min(y.shape[1:3]) >= 2 else y


class LeNet5(nn.Module):
  """LeNet-5 up to F6 (84 units); see the module docstring for padding rules.

  `stage` builds conv1 and conv2 with nn.Conv's arguments (features, kernel_size, padding=,
  dtype=, name=): `ConvReluPool` here, `cpu_ops.FusedConvReluPool` on CPU.
  """
  dtype: Any = jnp.float32
  stage: Callable[..., nn.Module] = ConvReluPool
  stem_path = ("conv1",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no batch norm or dropout
    pad1 = "SAME" if x.shape[1] < 32 else "VALID"
    x = self.stage(6, (5, 5), padding=pad1, dtype=self.dtype, name="conv1")(x)
    pad2 = "VALID" if min(x.shape[1:3]) >= 5 else "SAME"
    x = self.stage(16, (5, 5), padding=pad2, dtype=self.dtype, name="conv2")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, dtype=self.dtype, name="fc1")(x))
    return nn.relu(nn.Dense(84, dtype=self.dtype, name="fc2")(x))
