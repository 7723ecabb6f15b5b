"""ResNet-18/34/50 backbones (He et al. 2016; torchvision's v1.5: stride in the 3x3 conv).

Module names follow torchvision (`conv1`, `bn1`, `layer{i}_{j}` with `conv1..3`, `bn1..3`,
`downsample_conv`, `downsample_bn`) so `sim_jax.models.convert` maps state dicts one to one.
Stems: "imagenet" = 7x7/2 conv + 3x3/2 max-pool (224 px inputs); "small" = 3x3/1 conv and no
max-pool (CIFAR-style, 32 px and below: the 7x7 stem would leave a 1x1 map before the last
stage); "auto" picks "small" when H < 128. Output: the last stage's map [B, H/s, W/s, C]
(s = 32 for "imagenet", 8 for "small"), C = 8 * width for basic blocks and 32 * width for
bottlenecks (512 / 2048 at width 64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.cpu.kernels import materialize
from sim_jax.models.encoder import Conv, batch_norm, conv_padding, maybe_remat

STEMS = ("auto", "small", "imagenet")


def _relu(x: jax.Array, keep: bool) -> jax.Array:
  """ReLU; with `keep` its result is materialised (`sim_jax.cpu.kernels.materialize`, an
  identity XLA:CPU cannot fuse through; config.model.materialize)."""
  y = nn.relu(x)
  return materialize(y) if keep else y


def resolve_stem(stem: str, height: int) -> str:
  """'auto' -> 'small' for H < 128 else 'imagenet'; other values checked and returned."""
  if stem not in STEMS:
    raise ValueError(f"stem must be one of {STEMS}; got {stem!r}")
  if stem == "auto":
    return "small" if height < 128 else "imagenet"
  return stem


class BasicBlock(nn.Module):
  """Two 3x3 convs; y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32
  materialize: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Conv(self.filters, (3, 3), self.strides, padding=conv_padding(3), dtype=self.dtype,
             name="conv1")(x)
    y = _relu(batch_norm(train, self.dtype, "bn1")(y), self.materialize)
    y = Conv(self.filters, (3, 3), padding=conv_padding(3), dtype=self.dtype, name="conv2")(y)
    y = batch_norm(train, self.dtype, "bn2")(y)
    return _relu(y + _shortcut(x, y.shape[-1], self.strides, train, self.dtype),
                 self.materialize)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand (x4); residual add then ReLU."""
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32
  materialize: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Conv(self.filters, (1, 1), dtype=self.dtype, name="conv1")(x)
    y = _relu(batch_norm(train, self.dtype, "bn1")(y), self.materialize)
    y = Conv(self.filters, (3, 3), self.strides, padding=conv_padding(3), dtype=self.dtype,
             name="conv2")(y)
    y = _relu(batch_norm(train, self.dtype, "bn2")(y), self.materialize)
    y = Conv(self.filters * 4, (1, 1), dtype=self.dtype, name="conv3")(y)
    y = batch_norm(train, self.dtype, "bn3")(y)
    return _relu(y + _shortcut(x, y.shape[-1], self.strides, train, self.dtype),
                 self.materialize)


def _shortcut(x, channels, strides, train, dtype):
  """Identity, or a strided 1x1 conv + BN when the shape changes (torchvision `downsample`).

  Called inside the block's compact scope, so the submodules are named within the block.
  """
  if x.shape[-1] == channels and strides == 1:
    return x
  x = Conv(channels, (1, 1), strides, dtype=dtype, name="downsample_conv")(x)
  return batch_norm(train, dtype, "downsample_bn")(x)


class ResNet(nn.Module):
  """Stem + 4 stages of `stage_sizes` blocks; widths width * (1, 2, 4, 8), stride 2 from stage 2.

  Input [B, H, W, C] (already normalised), output the final feature map (see module docstring).
  """
  stage_sizes: Sequence[int]
  block: type[nn.Module]
  width: int = 64
  stem: str = "auto"
  dtype: Any = jnp.float32
  remat: bool = False
  # Each ReLU's output written to its own buffer (`sim_jax.cpu.kernels.materialize`, an XLA:CPU
  # tuning that computes the identity); get_model sets it from config.model.materialize ("auto":
  # on CPU only).
  materialize: bool = False
  stem_path = ("conv1",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if resolve_stem(self.stem, x.shape[1]) == "imagenet":
      x = Conv(self.width, (7, 7), 2, padding=conv_padding(7), dtype=self.dtype, name="conv1")(x)
      x = _relu(batch_norm(train, self.dtype, "bn1")(x), self.materialize)
      x = nn.max_pool(x, (3, 3), (2, 2), padding=conv_padding(3))
    else:
      x = Conv(self.width, (3, 3), padding=conv_padding(3), dtype=self.dtype, name="conv1")(x)
      x = _relu(batch_norm(train, self.dtype, "bn1")(x), self.materialize)
    block = maybe_remat(self.block, self.remat)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(self.width * 2**i, strides, self.dtype, self.materialize,
                  name=f"layer{i + 1}_{j}")(x, train)
    return x


STAGES = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    # Test-sized variants: one block per stage (width from the config, default 8).
    "resnet_tiny": ((1, 1, 1, 1), BasicBlock),
    "resnet_tiny_bottleneck": ((1, 1, 1, 1), Bottleneck),
}
