"""Inverted-residual (MBConv) backbones of seed 004's comparison: MobileNetV3-Small and
EfficientNet-B0 (torchvision's architectures; parameter counts equal torchvision's without the
classifier). Both return the final feature map [B, h, w, C] for the `Encoder` to pool.

Strided convolutions on a 1x1 map stay 1x1, so inputs from 8 px up run; 224 px is the
published setting.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models.encoder import Conv, conv_padding, maybe_remat


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision `_make_divisible`: round to a multiple of `divisor`, never below 90% of v."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def batch_norm_act(x, act, train, dtype, name):
  """BatchNorm (eps 1e-3, as torchvision's MobileNet / EfficientNet) -> act (None: identity)."""
  x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype,
                   axis_name=None, name=f"{name}_bn")(x)
  return act(x) if act is not None else x


def conv_bn_act(x, filters, kernel, stride, act, train, dtype, name):
  """Conv (no bias, torch padding) -> BatchNorm -> act."""
  x = Conv(filters, (kernel, kernel), stride, padding=conv_padding(kernel), dtype=dtype,
           name=f"{name}_conv")(x)
  return batch_norm_act(x, act, train, dtype, name)


class SqueezeExcite(nn.Module):
  """x * gate(fc2(act(fc1(mean_hw(x))))) with 1x1 convs (bias) as torchvision's SE layers."""
  squeeze: int
  act: Any = nn.relu
  gate: Any = nn.hard_sigmoid
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.act(nn.Conv(self.squeeze, (1, 1), dtype=self.dtype, name="fc1")(s))
    s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="fc2")(s)
    return x * self.gate(s)


class InvertedResidual(nn.Module):
  """MobileNetV3 / EfficientNet MBConv: expand 1x1 -> depthwise kxk -> SE -> project 1x1."""
  expanded: int
  out: int
  kernel: int
  stride: int
  act: Any
  se_squeeze: int  # 0 = no squeeze-excite
  se_act: Any = nn.relu
  se_gate: Any = nn.hard_sigmoid
  dtype: Any = jnp.float32
  depthwise: Any = nn.Conv  # sim_jax.models.cpu_ops.ShiftedDepthwiseConv on CPU

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = x
    if self.expanded != x.shape[-1]:
      y = conv_bn_act(y, self.expanded, 1, 1, self.act, train, self.dtype, "expand")
    c = y.shape[-1]
    y = self.depthwise(c, (self.kernel, self.kernel), self.stride,
                       padding=conv_padding(self.kernel), feature_group_count=c, use_bias=False,
                       dtype=self.dtype, name="depthwise_conv")(y)
    y = batch_norm_act(y, self.act, train, self.dtype, "depthwise")
    if self.se_squeeze:
      y = SqueezeExcite(self.se_squeeze, self.se_act, self.se_gate, self.dtype, name="se")(y)
    y = conv_bn_act(y, self.out, 1, 1, None, train, self.dtype, "project")
    return x + y if self.stride == 1 and x.shape[-1] == self.out else y


# torchvision mobilenet_v3_small: (kernel, expanded, out, use_se, activation, stride)
MOBILENET_V3_SMALL = (
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
)


class MobileNetV3Small(nn.Module):
  """Howard et al. 2019; output [B, H/32, W/32, 576] (torchvision `features`)."""
  dtype: Any = jnp.float32
  remat: bool = False
  depthwise: Any = nn.Conv  # sim_jax.models.cpu_ops.ShiftedDepthwiseConv on CPU
  stem_path = ("stem_conv",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = conv_bn_act(x, 16, 3, 2, nn.hard_swish, train, self.dtype, "stem")
    block = maybe_remat(InvertedResidual, self.remat)
    for i, (k, exp, out, se, act, stride) in enumerate(MOBILENET_V3_SMALL):
      act_fn = nn.relu if act == "RE" else nn.hard_swish
      x = block(exp, out, k, stride, act_fn, make_divisible(exp // 4) if se else 0,
                dtype=self.dtype, depthwise=self.depthwise, name=f"block{i}")(x, train)
    return conv_bn_act(x, 576, 1, 1, nn.hard_swish, train, self.dtype, "last")


# torchvision efficientnet_b0: (expand_ratio, kernel, stride, in, out, layers)
EFFICIENTNET_B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                   (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                   (6, 3, 1, 192, 320, 1))


class EfficientNetB0(nn.Module):
  """Tan & Le 2019; SiLU, SE squeeze = in_channels // 4; output [B, H/32, W/32, 1280].

  (Stochastic depth of the original is not applied: the `Encoder`'s dropout regularises.)
  """
  dtype: Any = jnp.float32
  remat: bool = False
  depthwise: Any = nn.Conv  # sim_jax.models.cpu_ops.ShiftedDepthwiseConv on CPU
  stem_path = ("stem_conv",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = conv_bn_act(x, 32, 3, 2, nn.silu, train, self.dtype, "stem")
    block = maybe_remat(InvertedResidual, self.remat)
    i = 0
    for ratio, k, stride, cin, out, layers in EFFICIENTNET_B0:
      for j in range(layers):
        c = cin if j == 0 else out
        x = block(c * ratio, out, k, stride if j == 0 else 1, nn.silu, max(1, c // 4),
                  nn.silu, nn.sigmoid, self.dtype, self.depthwise, name=f"block{i}")(x, train)
        i += 1
    return conv_bn_act(x, 1280, 1, 1, nn.silu, train, self.dtype, "last")
