"""Heads shared by every backbone: projection MLP, attention blocks, L2 normalisation, PairHead.

Shapes: B = batch, E = embedding size, [B, h, w, C] feature maps.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax import numerics

PAIR_HEAD_MODES = ("abs_diff", "euclidean")


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """`sim_jax.numerics.l2_normalize` in float32: x / max(||x||_2, 1e-12) along `axis`.

  A zero vector stays zero (with a finite gradient); the norm is computed in float32 even for
  bfloat16 inputs so that the result has unit norm to float32 precision.
  """
  return numerics.l2_normalize(x.astype(jnp.float32), axis)


class ProjectionHead(nn.Module):
  """SimCLR projection g(.) (Chen et al. 2020): `depth` Dense layers, ReLU between them.

  depth=1: z = W1 e + b1; depth=2 (SimCLR v1): z = W2 relu(W1 e + b1) + b2; hidden layers have
  `hidden_dim` units, the last `out_dim`. [B, E] -> [B, out_dim]. Dropped after pretraining:
  `sim_jax.models.transfer.merge_pretrained` reports it as skipped when the target has none.
  """
  depth: int
  hidden_dim: int
  out_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth - 1):
      x = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"dense_{i}")(x))
    return nn.Dense(self.out_dim, dtype=self.dtype, name=f"dense_{self.depth - 1}")(x)


class ChannelSpatialAttention(nn.Module):
  """Attention over a feature map *before* the embedding is formed (seed 000 "before", seed 003).

  CBAM (Woo et al. 2018): channel gate a_c = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) [B,1,1,C],
  x' = a_c * x; spatial gate a_s = sigmoid(conv7x7([mean_c(x'), max_c(x')])) [B,h,w,1], out =
  a_s * x'. The MLP is C -> max(C // reduction, 1) -> C with ReLU. Shape preserved.
  """
  reduction: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    hidden = nn.Dense(max(c // self.reduction, 1), dtype=self.dtype, name="channel_fc1")
    out = nn.Dense(c, dtype=self.dtype, name="channel_fc2")
    mlp = lambda v: out(nn.relu(hidden(v)))
    gate_c = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2))))
    x = x * gate_c[:, None, None, :]
    pooled = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], -1)
    gate_s = nn.sigmoid(nn.Conv(1, (7, 7), padding="SAME", dtype=self.dtype,
                                name="spatial_conv")(pooled))
    return x * gate_s


class EmbeddingSelfAttention(nn.Module):
  """Self-attention applied to the embedding *after* it is formed (seed 000, "after").

  The embedding e [B, E] is split into T = `tokens` tokens of size E / T ([B, T, E/T]); multi-head
  self-attention runs over those tokens with a residual connection and LayerNorm:
  out = reshape(LN(t + MHSA(t)), [B, E]). Cheap (T x T scores per example) but, as the seed
  notes, it sees no spatial context. E must be divisible by T and E / T by `heads`.
  """
  tokens: int = 8
  heads: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, e: jax.Array) -> jax.Array:
    b, dim = e.shape
    if dim % self.tokens or (dim // self.tokens) % self.heads:
      raise ValueError(f"attention='after' needs embedding_dim divisible by attention_tokens and "
                       f"embedding_dim / attention_tokens by attention_heads; got "
                       f"embedding_dim={dim}, attention_tokens={self.tokens}, "
                       f"attention_heads={self.heads}")
    t = e.reshape(b, self.tokens, dim // self.tokens)
    t = t + nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                            name="mhsa")(t, t)
    return nn.LayerNorm(dtype=self.dtype, name="norm")(t).reshape(b, dim)


class PairHead(nn.Module):
  """Siamese verification head (e1, e2) -> logit [B] for `sim_jax.losses.pair_bce` (seeds 000/002).

  mode="abs_diff": logit = w . |e1 - e2| + b (Koch et al. 2015), w [E], b scalar.
  mode="euclidean": logit = b - s * ||e1 - e2||_2 (seed 002: Euclidean distance then a sigmoid
  similarity), s initialised to 1 and b to 1 (so d = 1, the contrastive margin, maps to p = 0.5).
  `sigmoid(logit)` is the similarity in (0, 1). Inputs [B, E] each, same shape.
  """
  mode: str = "abs_diff"

  @nn.compact
  def __call__(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
    if e1.shape != e2.shape or e1.ndim != 2:
      raise ValueError(f"PairHead expects two [B, E] arrays of equal shape; got e1 {e1.shape}, "
                       f"e2 {e2.shape}")
    e1, e2 = e1.astype(jnp.float32), e2.astype(jnp.float32)
    if self.mode == "abs_diff":
      return nn.Dense(1, name="dense")(jnp.abs(e1 - e2))[:, 0]
    if self.mode == "euclidean":
      scale = self.param("scale", nn.initializers.ones, ())
      bias = self.param("bias", nn.initializers.ones, ())
      # Gradient of sqrt at 0 is infinite: a tiny floor keeps identical pairs finite.
      d = jnp.sqrt(jnp.maximum(jnp.sum((e1 - e2) ** 2, axis=-1), 1e-12))
      return bias - scale * d
    raise ValueError(f"PairHead mode must be one of {PAIR_HEAD_MODES}; got {self.mode!r}")

  def similarity(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
    """sigmoid(logit) in (0, 1): 1 = same class."""
    return nn.sigmoid(self(e1, e2))
