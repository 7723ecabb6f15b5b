"""Vision Transformer backbones ViT-Ti/S/B (Dosovitskiy et al. 2021), timm's layout.

Names follow timm's `vit_*_patch16_224` (`patch_embed`, `cls_token`, `pos_embed`,
`blocks_{i}` with `norm1`, `attn` {`qkv`, `proj`}, `norm2`, `mlp` {`fc1`, `fc2`}, `norm`) so
`sim_jax.models.convert` maps timm state dicts one to one. Pre-norm blocks:
  x = x + drop_path(proj(attn(LN1(x))));  x = x + drop_path(fc2(gelu(fc1(LN2(x)))))
with LayerNorm eps 1e-6, exact (erf) GELU, fused qkv projection, learned position embeddings for
(H/p)(W/p) + 1 tokens (so the image size fixes the params' shape; H and W must be multiples of
the patch size p). Output: pooling="cls" -> LN(x)[:, 0]; pooling="mean" -> mean of the patch
tokens of LN(x). Shape [B, hidden]. Drop-path rate grows linearly from 0 to `stochastic_depth`
over the blocks (DeiT); it and dropout are active only with train=True and need a "dropout" rng.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models.encoder import maybe_remat

LN_EPS = 1e-6


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth: zero a whole sample's residual branch with prob `rate`, scale by 1/keep."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def residual_branch(module: nn.Module, y: jax.Array, rate: float, train: bool) -> jax.Array:
  """`y` through stochastic depth when training with `rate > 0` (ViT and Swin blocks)."""
  if train and rate > 0:
    return drop_path(y, rate, module.make_rng("dropout"))
  return y


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))) (timm's / torch's formula).

  `jax.nn.gelu(approximate=False)` writes it with erfc, which XLA:CPU expands into exp and
  branch selects on both sides of the step; erf is one clamped rational polynomial (and the
  formula PyTorch uses). Same function; the two differ by float32 rounding only.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


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


def _normalize(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """(x - mean) / sqrt(var + eps) over the last axis in float32, and 1 / sqrt(var + eps)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)  # two-pass: no cancellation
  rstd = jax.lax.rsqrt(var + eps)
  return (x - mean) * rstd, rstd


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalized_dense(x: jax.Array, w: jax.Array, b: jax.Array, eps: float) -> jax.Array:
  """xhat(x) @ w + b with xhat = (x - mean) / sqrt(var + eps); x and w share one dtype."""
  xhat, _ = _normalize(x, eps)
  return xhat.astype(w.dtype) @ w + b


def _normalized_dense_fwd(x, w, b, eps):
  xhat, rstd = _normalize(x, eps)
  xhat = xhat.astype(w.dtype)
  return xhat @ w + b, (xhat, rstd, w)


def _normalized_dense_bwd(eps, res, g):
  del eps
  xhat, rstd, w = res
  g = g.astype(w.dtype)
  dxhat = (g @ w.T).astype(jnp.float32)
  xhat32 = xhat.astype(jnp.float32)
  # d/dx of (x - mean) * rstd: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
  dx = rstd * (dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
               - xhat32 * jnp.mean(dxhat * xhat32, axis=-1, keepdims=True))
  return dx.astype(w.dtype), xhat.T @ g, jnp.sum(g, axis=0)


_normalized_dense.defvjp(_normalized_dense_fwd, _normalized_dense_bwd)


def layer_norm_dense(x: jax.Array, norm: tuple[jax.Array, jax.Array], kernel: jax.Array,
                     bias: jax.Array, eps: float = LN_EPS, dtype: Any = jnp.float32,
                     column_scale: jax.Array | None = None) -> jax.Array:
  """Dense(LayerNorm(x)) for 2-D x [M, D]: LN's affine folded into the Dense weights.

    LN(x) = xhat * gamma + beta,  xhat = (x - mean) / sqrt(var + eps)  (per row of x)
    LN(x) @ W + b = xhat @ (gamma[:, None] * W) + (beta @ W + b)

  With `column_scale` s [F] the output columns are scaled too: xhat @ (gamma W s) + (beta W + b) s
  (the attention's q * D_h^-1/2 of timm, taken into the weights). Same function as
  `nn.Dense(nn.LayerNorm(x))`, up to float32 rounding. Why: the LN output is never written, and
  the hand-written backward (one matmul, two row means, one element-wise pass; gamma and beta
  get their gradients through the [D, F] weight fold) replaces the half-dozen [M, D] passes and
  materialised broadcasts of gamma that autodiff of the two layers makes XLA:CPU emit. `norm` is
  the LayerNorm's (scale, bias) = (gamma, beta); statistics are float32, the matmul runs in
  `dtype`.
  """
  scale, shift = norm
  w = scale[:, None] * kernel
  b = shift @ kernel + bias
  if column_scale is not None:
    w, b = w * column_scale, b * column_scale
  return _normalized_dense(x.astype(dtype), w.astype(dtype), b.astype(dtype), eps)


class LayerNormParams(nn.Module):
  """`nn.LayerNorm`'s parameters (scale = 1, bias = 0 at init) for `layer_norm_dense`."""

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


class Attention(nn.Module):
  """Multi-head self-attention with timm's fused qkv: [B, N, D] -> [B, N, D].

  With `norm` = (gamma, beta) of the block's pre-norm LayerNorm, the input is the block's
  un-normalised x and the LayerNorm is folded into the qkv projection (`layer_norm_dense`);
  without it the input is used as is.
  """
  heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               norm: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    b, n, d = x.shape
    h, hd = self.heads, d // self.heads
    # q is pre-scaled as timm does (q * D_h^-1/2); the scale is folded into q's weight columns.
    q_scale = jnp.concatenate([jnp.full((d,), hd ** -0.5, jnp.float32), jnp.ones((2 * d,))])
    kernel, bias = DenseParams(3 * d, name="qkv")(d)
    if norm is None:
      qkv = (x.reshape(b * n, d).astype(self.dtype) @ (kernel * q_scale).astype(self.dtype)
             + (bias * q_scale).astype(self.dtype))
    else:
      qkv = layer_norm_dense(x.reshape(b * n, d), norm, kernel, bias, LN_EPS, self.dtype, q_scale)
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


class Mlp(nn.Module):
  """fc1 -> GELU -> fc2; with `norm` the block's pre-norm LayerNorm is folded into fc1."""
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               norm: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    d = x.shape[-1]
    if norm is None:
      x = dense_tokens(self.hidden, x, "fc1", self.dtype)
    else:
      kernel, bias = DenseParams(self.hidden, name="fc1")(d)
      x = layer_norm_dense(x.reshape(-1, d), norm, kernel, bias, LN_EPS, self.dtype)
    x = gelu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense_tokens(d, x, "fc2", self.dtype)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class Block(nn.Module):
  """Pre-norm transformer block with stochastic depth; each LayerNorm is folded into the
  projection that follows it (`layer_norm_dense`): same parameters (`norm1`, `norm2`) and math."""
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
    x = x + residual(Attention(self.heads, self.dropout_rate, self.dtype, name="attn")(
        x, train, norm1))
    norm2 = LayerNormParams(name="norm2")(d)
    y = Mlp(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(x, train, norm2)
    return x + residual(y.reshape(x.shape))


class VisionTransformer(nn.Module):
  """Patch embedding + class token + position embedding + `depth` blocks + final LayerNorm."""
  patch_size: int = 16
  hidden: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: int = 4
  pooling: str = "cls"
  dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  stem_path = ("patch_embed",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"ViT image size must be a multiple of patch_size={p}; got images of "
                       f"shape {x.shape}")
    if self.pooling not in ("cls", "mean"):
      raise ValueError(f"ViT pooling must be 'cls' or 'mean'; got {self.pooling!r}")
    x = nn.Conv(self.hidden, (p, p), (p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed")(x)
    x = x.reshape(b, -1, self.hidden)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.hidden))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.hidden)).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.hidden))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos.astype(x.dtype))
    block = maybe_remat(Block, self.remat)
    for i in range(self.depth):
      rate = self.stochastic_depth * i / max(self.depth - 1, 1)
      x = block(self.heads, self.hidden * self.mlp_ratio, self.dropout_rate, rate, self.dtype,
                name=f"blocks_{i}")(x, train)
    if self.pooling == "cls":  # LayerNorm is per token: normalise the class token alone
      return nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x[:, 0])
    return jnp.mean(nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)[:, 1:], axis=1)


# name -> (hidden, depth, heads); the test-sized variant keeps the layout at toy width.
SIZES = {
    "vit_ti": (192, 12, 3),
    "vit_s": (384, 12, 6),
    "vit_b": (768, 12, 12),
    "vit_tiny": (32, 2, 2),
}
