"""VGG-16 feature layers (Simonyan & Zisserman 2015, configuration D), torchvision layout.

Seed 003 keeps VGG-16's convolutional `features` and replaces its classifier with an attention
layer, max pooling and a fully connected embedding layer; here that head is the shared `Encoder`
with the family defaults attention="before", pooling="max" (global max over the map).
Conv layers are named `features_{i}` with i the index in torchvision's `vgg16().features`
(0, 2, 5, ..., 28) so state dicts convert one to one. Each conv is 3x3, padding 1, with bias,
followed by ReLU; "M" is a 2x2/2 max-pool, skipped once the map is 1x1 so that inputs below
32 px still run. Output [B, H/32, W/32, 8 * width] (512 channels at width 64).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models.encoder import conv_padding

# torchvision cfgs["D"]; channel counts are multiplied by width / 64.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


def conv_indices(cfg=VGG16_CFG) -> list[int]:
  """Indices of the conv layers inside torchvision's `features` Sequential (conv, ReLU, pool)."""
  out, i = [], 0
  for v in cfg:
    if v == "M":
      i += 1
    else:
      out.append(i)
      i += 2
  return out


class VGG(nn.Module):
  """The VGG `features` stack; `width` scales every layer (64 = the published network)."""
  width: int = 64
  cfg: tuple = VGG16_CFG
  dtype: Any = jnp.float32
  remat: bool = False
  stem_path = ("features_0",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no batch norm or dropout in the feature layers
    i = 0
    for v in self.cfg:
      if v == "M":
        if x.shape[1] >= 2 and x.shape[2] >= 2:
          x = nn.max_pool(x, (2, 2), (2, 2))
        i += 1
      else:
        x = nn.Conv(v * self.width // 64, (3, 3), padding=conv_padding(3), dtype=self.dtype,
                    name=f"features_{i}")(x)
        x = nn.relu(x)
        i += 2
    return x
