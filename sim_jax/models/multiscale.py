"""The multi-scale encoder for small, feature-sparse images (seed 000, section 3.2).

Seed 000 runs "multiple filter sizes (1x1, 3x3, 5x5) in parallel within the same layer"
(Inception-style, Szegedy et al. 2015) so fine details (1x1, 3x3) and broader shapes (5x5) are
captured at every depth of a shallow network. Layout (w = width, default 32):
  stem: 3x3 conv w -> BN -> ReLU
  stage s = 1..3: MultiScaleBlock(w * 2^(s-1)) = concat[branch_k for k in (1, 3, 5)],
      branch_k = ReLU(BN(conv kxk, w * 2^(s-1) filters))  -> 3 w 2^(s-1) channels,
    followed by a 2x2 max-pool after stages 1 and 2 (skipped on 1-pixel maps).
Output [B, H/4, W/4, 12 w]. The seed's attention comparison ("none" / "before" / "after",
Table 1) is the `Encoder`'s `attention` field: "before" gates this feature map with channel and
spatial attention, "after" applies self-attention to the embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models.encoder import Conv, batch_norm, conv_padding, maybe_remat

KERNELS = (1, 3, 5)


def max_pool(x: jax.Array) -> jax.Array:
  """2x2 / stride-2 VALID max pooling [B, H, W, C] -> [B, H // 2, W // 2, C]."""
  return nn.max_pool(x, (2, 2), (2, 2))


class MultiScaleBlock(nn.Module):
  """Parallel k x k conv-BN-ReLU branches (k in `kernels`), concatenated on channels."""
  filters: int
  dtype: Any = jnp.float32
  kernels: tuple[int, ...] = KERNELS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    outs = []
    for k in self.kernels:
      y = Conv(self.filters, (k, k), padding=conv_padding(k), dtype=self.dtype,
               name=f"conv{k}x{k}")(x)
      outs.append(nn.relu(batch_norm(train, self.dtype, f"bn{k}x{k}")(y)))
    return jnp.concatenate(outs, axis=-1)


class MultiScale(nn.Module):
  """Stem + `stages` multi-scale blocks (widths w, 2w, 4w), max-pool between stages.

  `pool` is the 2x2 max pooling: `max_pool` here; on CPU `get_model` passes
  `sim_jax.cpu.kernels.max_pool_2x2` (same values and gradients, faster on XLA:CPU).
  `kernels` (odd sizes) and `stages` are the architecture search's knobs
  (`model.multiscale_kernels`, `model.multiscale_stages`); the defaults are the seed's.
  """
  width: int = 32
  stages: int = 3
  dtype: Any = jnp.float32
  remat: bool = False
  pool: Callable[[jax.Array], jax.Array] = max_pool
  kernels: tuple[int, ...] = KERNELS
  stem_path = ("stem_conv",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(self.width, (3, 3), padding=conv_padding(3), dtype=self.dtype, name="stem_conv")(x)
    x = nn.relu(batch_norm(train, self.dtype, "stem_bn")(x))
    block = maybe_remat(MultiScaleBlock, self.remat)
    for s in range(self.stages):
      x = block(self.width * 2**s, self.dtype, self.kernels, name=f"block{s + 1}")(x, train)
      if s < self.stages - 1 and min(x.shape[1:3]) >= 2:
        x = self.pool(x)
    return x
