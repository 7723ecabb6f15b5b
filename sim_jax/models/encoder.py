"""The `Encoder` every `get_model` name returns: input checks -> backbone -> pool -> heads.

`Encoder.apply(variables, images [B, H, W, C] float32 in [0, 1], train=bool)` returns
`(embeddings [B, E] float32, aux)`, aux = {"features": pooled backbone features [B, F] float32,
"projection": [B, P] (only when projection_depth > 0)}.

Batch norm everywhere uses `axis_name=None`: the trainer jits over a *global* batch sharded on the
mesh's data axis, so XLA already reduces the batch statistics over every device; a pmap-style
`axis_name` would be wrong (and unbound) there.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models import heads

# torchvision's ImageNet statistics; grayscale uses their channel means so that a network
# converted from RGB weights sees inputs on the same scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)

POOLINGS = ("avg", "max", "cls", "mean")
ATTENTIONS = ("none", "before", "after")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def parse_dtype(name: str) -> Any:
  """'float32' | 'bfloat16' -> the jnp dtype; anything else raises a ValueError naming it."""
  if name not in DTYPES:
    raise ValueError(f"model dtype must be one of {sorted(DTYPES)}; got {name!r}")
  return DTYPES[name]


def batch_norm(train: bool, dtype: Any, name: str, **kw) -> nn.BatchNorm:
  """BatchNorm as torch.nn.BatchNorm2d (momentum 0.1 there = 0.9 here, eps 1e-5), axis_name=None.

  One difference: the running variance is updated with the biased batch variance (flax), torch
  uses the unbiased one; evaluation with given statistics is identical.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      axis_name=None, name=name, **kw)


def maybe_remat(cls: type[nn.Module], remat: bool) -> type[nn.Module]:
  """`nn.remat(cls)` with the `train` flag (positional arg 2 counting self) static, or `cls`."""
  return nn.remat(cls, static_argnums=(2,)) if remat else cls


def check_images(images: jax.Array, in_channels: int | None) -> None:
  """Raises a ValueError naming the expected and actual shape for a non-[B, H, W, C] input."""
  if images.ndim != 4:
    raise ValueError(f"images must have shape [B, H, W, C] (rank 4); got shape {images.shape} "
                     f"(rank {images.ndim})")
  if in_channels is not None and images.shape[-1] != in_channels:
    raise ValueError(f"images must have {in_channels} channels, expected shape "
                     f"[B, H, W, {in_channels}]; got shape {images.shape}")


def normalize_input(images: jax.Array, mode: str) -> jax.Array:
  """mode='imagenet': (x - mean) / std per channel (C = 3 or 1); mode='none': x unchanged."""
  if mode == "none":
    return images
  if mode != "imagenet":
    raise ValueError(f"input_norm must be 'imagenet' or 'none'; got {mode!r}")
  c = images.shape[-1]
  if c not in (1, 3):
    raise ValueError(f"input_norm='imagenet' needs 1 or 3 channels; got shape {images.shape} "
                     "(use input_norm='none')")
  mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else (GRAY_MEAN, GRAY_STD)
  return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)


def pool(features: jax.Array, mode: str) -> jax.Array:
  """Global pooling of a [B, h, w, C] map to [B, C]: 'avg' = mean, 'max' = max over (h, w)."""
  if mode == "avg":
    return jnp.mean(features, axis=(1, 2))
  if mode == "max":
    return jnp.max(features, axis=(1, 2))
  raise ValueError(f"pooling for a convolutional backbone must be 'avg' or 'max'; got {mode!r}")


class Encoder(nn.Module):
  """Backbone + global pooling + optional attention + embedding Dense + projection + L2 norm.

  embeddings = normalize(attn_after(Dense_E(dropout(pool(attn_before(backbone(x)))))))
  where attn_before is `heads.ChannelSpatialAttention` (attention="before"), attn_after is
  `heads.EmbeddingSelfAttention` (attention="after"), Dense_E is skipped when embedding_dim = 0,
  normalize is `heads.l2_normalize` when `normalize`. aux["projection"] = ProjectionHead(e) on the
  un-normalised embedding e, so every encoder parameter is trained during SimCLR pretraining.
  Backbones return either a feature map [B, h, w, C] (pooled here) or pooled features [B, F]
  (LeNet, ViT: they pool themselves; attention="before" then raises).
  """
  backbone: nn.Module
  embedding_dim: int = 128
  normalize: bool = True
  input_norm: str = "imagenet"
  in_channels: int | None = None
  pooling: str = "avg"
  attention: str = "none"
  attention_tokens: int = 8
  attention_heads: int = 4
  attention_reduction: int = 8
  dropout_rate: float = 0.0
  projection_depth: int = 0
  projection_hidden_dim: int = 512
  projection_dim: int = 128
  dtype: Any = jnp.float32

  def _expected_channels(self) -> int | None:
    """Channels the stem was initialised with (read from the bound params), if known."""
    if self.in_channels is not None:
      return self.in_channels
    if self.is_initializing() or "params" not in self.variables:
      return None
    node = self.variables["params"].get("backbone")
    for key in getattr(type(self.backbone), "stem_path", ()):
      if node is None or key not in node:
        return None
      node = node[key]
    return None if node is None else int(node["kernel"].shape[-2])

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict]:
    check_images(images, self._expected_channels())
    x = normalize_input(images.astype(jnp.float32), self.input_norm).astype(self.dtype)
    features = self.backbone(x, train)
    if features.ndim == 4:
      if self.attention == "before":
        features = heads.ChannelSpatialAttention(self.attention_reduction, self.dtype,
                                                 name="attention")(features)
      features = pool(features, self.pooling)
    elif self.attention == "before":
      raise ValueError(f"attention='before' needs a convolutional feature map; backbone "
                       f"{type(self.backbone).__name__} returns pooled features "
                       f"{features.shape}")
    aux = {"features": features.astype(jnp.float32)}
    e = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    if self.embedding_dim:
      e = nn.Dense(self.embedding_dim, dtype=self.dtype, name="embed")(e)
    if self.attention == "after":
      e = heads.EmbeddingSelfAttention(self.attention_tokens, self.attention_heads, self.dtype,
                                       name="attention")(e)
    if self.projection_depth:
      aux["projection"] = heads.ProjectionHead(
          self.projection_depth, self.projection_hidden_dim, self.projection_dim, self.dtype,
          name="projection")(e).astype(jnp.float32)
    e = heads.l2_normalize(e) if self.normalize else e.astype(jnp.float32)
    return e, aux


def conv_padding(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric PyTorch-style padding k // 2 (flax 'SAME' pads asymmetrically when strided)."""
  p = kernel // 2
  return ((p, p), (p, p))


Conv = functools.partial(nn.Conv, use_bias=False)
