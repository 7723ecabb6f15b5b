"""Swin Transformer (Liu et al. 2021), torchvision's `swin_t` layout (seed 004's best backbone).

Patch embedding (4x4 conv + LayerNorm), four stages of Swin blocks with depths (2, 2, 6, 2) and
heads (3, 6, 12, 24) at widths 96 * (1, 2, 4, 8), patch merging between stages, final LayerNorm.
Block: x = x + dp(W-MSA(LN1(x))); x = x + dp(MLP(LN2(x))), where W-MSA attends within w x w
windows (w = 7), every second block on windows shifted by w // 2 (with the standard mask so
tokens only attend to tokens of the same region), with a learned relative position bias table
[(2w - 1)^2, heads]. As torchvision: maps are zero-padded to a multiple of w, and a window as
large as the padded map is not shifted. Output [B, H/32, W/32, 768]. Parameter count equals
torchvision's swin_t without the head (27,519,354). The numerics have no PyTorch reference test
here (neither torchvision nor timm is installed): the shapes, counts and gradients are tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.models.encoder import maybe_remat
from sim_jax.models.vit import gelu, residual_branch


def relative_position_index(w: int) -> np.ndarray:
  """[w*w, w*w] index into the bias table: (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def shift_mask(hp: int, wp: int, w: int, sh: int, sw: int) -> np.ndarray:
  """[num_windows, w*w, w*w] additive mask: -100 between tokens of different shifted regions."""
  region = np.zeros((hp, wp))
  hs = ((0, hp - w), (hp - w, hp - sh), (hp - sh, hp)) if sh else ((0, hp),)
  ws = ((0, wp - w), (wp - w, wp - sw), (wp - sw, wp)) if sw else ((0, wp),)
  for i, (h0, h1) in enumerate(hs):
    for j, (w0, w1) in enumerate(ws):
      region[h0:h1, w0:w1] = i * 3 + j
  win = region.reshape(hp // w, w, wp // w, w).transpose(0, 2, 1, 3).reshape(-1, w * w)
  return np.where(win[:, :, None] != win[:, None, :], -100.0, 0.0).astype(np.float32)


class ShiftedWindowAttention(nn.Module):
  """(S)W-MSA on a normalised map [B, H, W, C] -> [B, H, W, C]."""
  heads: int
  window: int = 7
  shift: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, wd, c = x.shape
    w = self.window
    hp, wp = -(-h // w) * w, -(-wd // w) * w
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - wd), (0, 0)))
    sh = 0 if w >= hp else self.shift
    sw = 0 if w >= wp else self.shift
    if sh or sw:
      x = jnp.roll(x, (-sh, -sw), axis=(1, 2))
    nwin, n, dh = (hp // w) * (wp // w), w * w, c // self.heads
    win = x.reshape(b, hp // w, w, wp // w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
    qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(win).reshape(-1, n, 3, self.heads, dh)
    q, k, v = jnp.moveaxis(qkv, 2, 0)
    attn = jnp.einsum("bqhd,bkhd->bhqk", q * dh ** -0.5, k).astype(jnp.float32)
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * w - 1) ** 2, self.heads))
    bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, self.heads)
    attn = attn + bias.transpose(2, 0, 1)[None]
    if sh or sw:
      mask = jnp.asarray(shift_mask(hp, wp, w, sh, sw))
      attn = attn.reshape(b, nwin, self.heads, n, n) + mask[None, :, None]
      attn = attn.reshape(-1, self.heads, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(-1, n, c)
    out = nn.Dense(c, dtype=self.dtype, name="proj")(out)
    out = out.reshape(b, hp // w, wp // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, hp, wp, c)
    if sh or sw:
      out = jnp.roll(out, (sh, sw), axis=(1, 2))
    return out[:, :h, :wd]


class SwinBlock(nn.Module):
  heads: int
  window: int = 7
  shift: int = 0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def residual(y):
      return residual_branch(self, y, self.drop_path_rate, train)
    c = x.shape[-1]
    y = nn.LayerNorm(1e-5, dtype=self.dtype, name="norm1")(x)
    x = x + residual(ShiftedWindowAttention(self.heads, self.window, self.shift, self.dtype,
                                            name="attn")(y))
    y = nn.LayerNorm(1e-5, dtype=self.dtype, name="norm2")(x)
    y = gelu(nn.Dense(4 * c, dtype=self.dtype, name="mlp_fc1")(y))
    return x + residual(nn.Dense(c, dtype=self.dtype, name="mlp_fc2")(y))


class PatchMerging(nn.Module):
  """2x2 neighbourhood concat (torchvision order x00, x10, x01, x11) -> LN -> Linear 4C -> 2C."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h, w, c = x.shape[1:]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        -1)
    x = nn.LayerNorm(1e-5, dtype=self.dtype, name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinTransformer(nn.Module):
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  patch_size: int = 4
  stochastic_depth: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  stem_path = ("patch_embed",)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed")(x)
    x = nn.LayerNorm(1e-5, dtype=self.dtype, name="patch_norm")(x)
    block = maybe_remat(SwinBlock, self.remat)
    total, k = sum(self.depths), 0
    for s, (depth, heads) in enumerate(zip(self.depths, self.heads)):
      if s > 0:
        x = PatchMerging(self.dtype, name=f"merge{s}")(x)
      for i in range(depth):
        rate = self.stochastic_depth * k / max(total - 1, 1)
        x = block(heads, self.window, 0 if i % 2 == 0 else self.window // 2, rate, self.dtype,
                  name=f"stage{s + 1}_block{i}")(x, train)
        k += 1
    return nn.LayerNorm(1e-5, dtype=self.dtype, name="norm")(x)
