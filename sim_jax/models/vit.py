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

from collections.abc import Callable
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


class Attention(nn.Module):
  """Multi-head self-attention with timm's fused qkv projection: [B, N, D] -> [B, N, D].

    q, k, v = split(x W_qkv + b_qkv) into `heads` heads of D_h = D / heads,
    out = proj(concat_heads(softmax(q k^T / sqrt(D_h)) v))
  The softmax runs in float32. Dropout (train only) on the output, as timm's `proj_drop`.
  """
  heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, n, d = x.shape
    h, hd = self.heads, d // self.heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
    # timm's layout: [B, N, 3, heads, D_h], so q, k and v are contiguous blocks of D features.
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, h, hd), 2, 0)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(hd ** -0.5, q.dtype), k)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
    out = nn.Dense(d, dtype=self.dtype, name="proj")(out)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(out)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> dropout -> fc2 -> dropout: [..., D] -> [..., D]."""
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d = x.shape[-1]
    x = gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(d, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class Block(nn.Module):
  """Pre-norm transformer block with stochastic depth:
  x = x + drop_path(attn(norm1(x)));  x = x + drop_path(mlp(norm2(x)))."""
  heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def residual(y):
      return residual_branch(self, y, self.drop_path_rate, train)
    y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + residual(Attention(self.heads, self.dropout_rate, self.dtype, name="attn")(y, train))
    y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + residual(Mlp(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(y, train))


class VisionTransformer(nn.Module):
  """Patch embedding + class token + position embedding + `depth` blocks + final LayerNorm.

  `block` builds each transformer block: `Block` here; on CPU `get_model` passes
  `sim_jax.models.cpu_ops.FusedBlock` (same parameters and function, LayerNorms folded into the
  projections). It is called as block(heads, mlp_dim, dropout_rate, drop_path_rate, dtype).
  """
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
  block: Callable[..., nn.Module] = Block
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
    block = maybe_remat(self.block, self.remat)
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
