"""DenseNet-121 (Huang et al. 2017), a backbone of seed 004's comparison: torchvision's
architecture (parameter count equal to torchvision's without the classifier). Returns the final
feature map [B, h, w, 1024] for the `Encoder` to pool.

The transitions' 2x2 average pools are skipped on 1-pixel maps, so inputs from 8 px up run;
224 px is the published setting.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models.encoder import Conv, batch_norm, conv_padding, maybe_remat


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1(bn_size * growth) -> BN-ReLU-conv3x3(growth); concatenated to the input."""
  growth: int = 32
  bn_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nn.relu(batch_norm(train, self.dtype, "norm1")(x))
    y = Conv(self.bn_size * self.growth, (1, 1), dtype=self.dtype, name="conv1")(y)
    y = nn.relu(batch_norm(train, self.dtype, "norm2")(y))
    y = Conv(self.growth, (3, 3), padding=conv_padding(3), dtype=self.dtype, name="conv2")(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseNet121(nn.Module):
  """Huang et al. 2017, blocks (6, 12, 24, 16), growth 32; output [B, H/32, W/32, 1024]
  after the final BatchNorm and ReLU."""
  dtype: Any = jnp.float32
  remat: bool = False
  stem_path = ("conv0",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(64, (7, 7), 2, padding=conv_padding(7), dtype=self.dtype, name="conv0")(x)
    x = nn.relu(batch_norm(train, self.dtype, "norm0")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=conv_padding(3))
    layer = maybe_remat(DenseLayer, self.remat)
    for b, n in enumerate((6, 12, 24, 16)):
      for i in range(n):
        x = layer(32, 4, self.dtype, name=f"denseblock{b + 1}_layer{i + 1}")(x, train)
      if b < 3:
        x = nn.relu(batch_norm(train, self.dtype, f"transition{b + 1}_norm")(x))
        x = Conv(x.shape[-1] // 2, (1, 1), dtype=self.dtype, name=f"transition{b + 1}_conv")(x)
        if min(x.shape[1:3]) >= 2:
          x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.relu(batch_norm(train, self.dtype, "norm5")(x))
