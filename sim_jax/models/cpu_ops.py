"""The XLA:CPU forms of the models' layers, and where `get_model` selects them.

`get_model(model_config, platform=None)` builds for `platform` (default
`jax.default_backend()`, where the model will be compiled). GPU and TPU get the plain Flax
modules. On "cpu" (`use_cpu_kernels`) it passes these forms to the backbones instead:
  LeNet-5      `LeNet5(stage=FusedConvReluPool)` for `lenet.ConvReluPool`
  multi-scale  `MultiScale(pool=kernels.max_pool_2x2)` for `multiscale.max_pool`
  ViT          `VisionTransformer(block=FusedBlock)` for `vit.Block`
  ResNet       `ResNet(materialize=True)` when config.model.materialize is "auto" (or "on")
  MobileNetV3, EfficientNet  `...(depthwise=ShiftedDepthwiseConv)` for the depthwise `nn.Conv`
Each form has the plain layer's parameters (names, shapes, initial values), so checkpoints move
between platforms, and computes the same function (tests/models_cpu_ops_test.py: outputs and
gradients against the plain modules). The kernels themselves are `sim_jax.cpu.kernels`; why
each is faster on XLA:CPU, with measurements, is in docs/performance.md.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sim_jax.cpu import kernels
from sim_jax.models.vit import LN_EPS, gelu, residual_branch

MATERIALIZE = ("auto", "on", "off")


def use_cpu_kernels(platform: str | None = None) -> bool:
  """Whether `get_model` builds the XLA:CPU forms: `platform` (default `jax.default_backend()`)
  is "cpu"."""
  return (platform or jax.default_backend()) == "cpu"


def resolve_materialize(mode: str, platform: str | None = None) -> bool:
  """`config.model.materialize`: "on" / "off", or "auto" = on when the platform is the CPU.

  `platform` defaults to `jax.default_backend()`, where the model will be compiled.
  """
  if mode not in MATERIALIZE:
    raise ValueError(f"model config materialize must be one of {MATERIALIZE}; got {mode!r}")
  if mode == "auto":
    return use_cpu_kernels(platform)
  return mode == "on"


class FusedConvReluPool(nn.Conv):
  """`lenet.ConvReluPool` (nn.Conv -> ReLU -> 2x2 max pool, the pool skipped on maps under 2
  pixels) run as `kernels.conv_relu_max_pool`: one custom VJP; a C_in = 1 convolution as fused
  shifted multiply-adds. Same parameters (nn.Conv's `kernel`, `bias`), values and gradients.

  Only what LeNet-5 uses: stride 1, no dilation or groups, a bias, string padding.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    plain = (self.strides in (1, (1, 1), None) and self.input_dilation in (1, (1, 1), None)
             and self.kernel_dilation in (1, (1, 1), None) and self.feature_group_count == 1
             and self.use_bias and isinstance(self.padding, str))
    if not plain:
      raise ValueError(f"FusedConvReluPool supports stride 1, no dilation or groups, a bias and "
                       f"'SAME' / 'VALID' padding; got {self}")
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = tuple((int(lo), int(hi)) for lo, hi in
                 lax.padtype_to_pads(x.shape[1:3], (kh, kw), (1, 1), self.padding))
    out_hw = [x.shape[1 + a] + sum(pads[a]) - (kh, kw)[a] + 1 for a in range(2)]
    if min(out_hw) >= 2:
      return kernels.conv_relu_max_pool(x, kernel, bias, pads)
    return nn.relu(kernels.conv_nhwc(x, kernel, pads) + bias)


def dense_tokens(features: int, x: jax.Array, name: str, dtype: Any) -> jax.Array:
  """`nn.Dense(features, name=name)` over the last axis of `x` [..., D] -> [..., features].

  The leading (batch, token) axes are flattened first so that every dot of the forward and the
  backward pass is a plain 2-D [B*N, D] matmul: with a 3-D input XLA:CPU lowers the weight
  gradient (contracting over both batch and token axes) with a transposed copy of the
  [B*N, features] output gradient before the dot. Same parameters, same math.
  """
  lead = x.shape[:-1]
  y = nn.Dense(features, dtype=dtype, name=name)(x.reshape(-1, x.shape[-1]))
  return y.reshape(lead + (features,))


class LayerNormParams(nn.Module):
  """`nn.LayerNorm`'s parameters (scale = 1, bias = 0 at init) for `kernels.layer_norm_dense`."""

  @nn.compact
  def __call__(self, features: int) -> tuple[jax.Array, jax.Array]:
    return (self.param("scale", nn.initializers.ones, (features,)),
            self.param("bias", nn.initializers.zeros, (features,)))


class DenseParams(nn.Module):
  """`nn.Dense`'s parameters (LeCun-normal kernel [D, F], zero bias [F])."""
  features: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    return (self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features)),
            self.param("bias", nn.initializers.zeros, (self.features,)))


class FusedAttention(nn.Module):
  """`vit.Attention` applied to LN(x), for the block's un-normalised x [B, N, D] and the
  LayerNorm's `norm` = (gamma, beta): the LayerNorm and q's D_h^-1/2 are folded into the qkv
  projection (`kernels.layer_norm_dense`). Same parameters (`qkv`, `proj`) as `vit.Attention`.
  """
  heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               norm: tuple[jax.Array, jax.Array]) -> jax.Array:
    b, n, d = x.shape
    h, hd = self.heads, d // self.heads
    # q is pre-scaled as timm does (q * D_h^-1/2); the scale is folded into q's weight columns.
    q_scale = jnp.concatenate([jnp.full((d,), hd ** -0.5, jnp.float32), jnp.ones((2 * d,))])
    kernel, bias = DenseParams(3 * d, name="qkv")(d)
    qkv = kernels.layer_norm_dense(x.reshape(b * n, d), norm, kernel, bias, LN_EPS, self.dtype,
                                   q_scale)
    # timm: reshape(B, N, 3, heads, D/heads) then permute: q, k, v are contiguous blocks of D.
    # One transpose to [3, B*heads, N, D/heads] makes both attention products plain batched
    # matmuls with a single leading batch axis: fewer and cheaper XLA:CPU layout copies than
    # einsums over (b, h) batch axes taken from the token-major layout.
    q, k, v = jnp.transpose(qkv.reshape(b, n, 3, h, hd), (2, 0, 3, 1, 4)).reshape(3, b * h, n, hd)
    scores = jax.lax.dot_general(q, k, (((2,), (2,)), ((0,), (0,))))  # [B*h, N, N]
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jax.lax.dot_general(weights, v, (((2,), (1,)), ((0,), (0,))))  # [B*h, N, hd]
    out = jnp.transpose(out.reshape(b, h, n, hd), (0, 2, 1, 3)).reshape(b, n, d)
    out = dense_tokens(d, out, "proj", self.dtype)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(out)


class FusedMlp(nn.Module):
  """`vit.Mlp` applied to LN(x), with the LayerNorm `norm` = (gamma, beta) folded into fc1
  (`kernels.layer_norm_dense`) and every Dense on 2-D [B*N, D] inputs (`dense_tokens`)."""
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               norm: tuple[jax.Array, jax.Array]) -> jax.Array:
    d = x.shape[-1]
    kernel, bias = DenseParams(self.hidden, name="fc1")(d)
    x = kernels.layer_norm_dense(x.reshape(-1, d), norm, kernel, bias, LN_EPS, self.dtype)
    x = gelu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense_tokens(d, x, "fc2", self.dtype)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class FusedBlock(nn.Module):
  """`vit.Block` with each LayerNorm folded into the projection that follows it: same parameters
  (`norm1`, `attn`, `norm2`, `mlp`), dropout and drop-path rngs, and math.

  Why (ViT-Ti on XLA:CPU): the LayerNorm outputs are never written and their backward is one
  pass instead of autodiff's half-dozen; the 2-D Dense layers avoid transposed gradient copies;
  the attention takes one layout transpose. Measured in docs/performance.md.
  """
  heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def residual(y):
      return residual_branch(self, y, self.drop_path_rate, train)
    d = x.shape[-1]
    norm1 = LayerNormParams(name="norm1")(d)
    x = x + residual(FusedAttention(self.heads, self.dropout_rate, self.dtype, name="attn")(
        x, train, norm1))
    norm2 = LayerNormParams(name="norm2")(d)
    y = FusedMlp(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(x, train, norm2)
    return x + residual(y.reshape(x.shape))


class ShiftedDepthwiseConv(nn.Conv):
  """MBConv's depthwise `nn.Conv` (feature_group_count = features = channels, no bias, explicit
  padding) run as `kernels.depthwise_conv`: k*k shifted multiply-adds. Same parameter
  (nn.Conv's `kernel` [k, k, 1, C]), values and gradients.

  Only what MBConv uses: equal strides, no dilation, no bias, explicit (lo, hi) padding.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    plain = (self.feature_group_count == self.features == channels and not self.use_bias
             and strides[0] == strides[1] and not isinstance(self.padding, str)
             and self.input_dilation in (1, (1, 1), None)
             and self.kernel_dilation in (1, (1, 1), None))
    if not plain:
      raise ValueError(f"ShiftedDepthwiseConv supports a depthwise convolution (groups = features "
                       f"= input channels {channels}), equal strides, no dilation or bias and "
                       f"explicit padding; got {self}")
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, channels), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    pads = tuple((int(lo), int(hi)) for lo, hi in self.padding)
    return kernels.depthwise_conv(x, kernel, strides[0], pads)
