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
import numpy as np
from jax import lax

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
MATERIALIZE = ("auto", "on", "off")


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


def resolve_materialize(mode: str, platform: str | None = None) -> bool:
  """`config.model.materialize`: "on" / "off", or "auto" = on when the platform is the CPU.

  `platform` defaults to `jax.default_backend()`, where the model will be compiled.
  """
  if mode not in MATERIALIZE:
    raise ValueError(f"model config materialize must be one of {MATERIALIZE}; got {mode!r}")
  if mode == "auto":
    return (platform or jax.default_backend()) == "cpu"
  return mode == "on"


@jax.custom_jvp
def materialize(x: jax.Array) -> jax.Array:
  """Identity that XLA cannot fuse through: `x` is computed once, into a buffer of its own.

  Why: XLA:CPU fuses cheap element-wise producers (batch norm's scale and shift, ReLU, a residual
  add) into *every* consumer of their result. In ResNet's backward pass one such consumer is the
  layout copy that moves N innermost for each weight-gradient convolution; fused there, the
  producers run in that copy's transposed order, and each of their operands is read with one
  float used per cache line. Along the residual stream a copy re-computed up to three blocks'
  chains that way (0.2-0.95 s per copy in a profile of the ResNet-18 step, bench/README.md).

  `lax.optimization_barrier` would state this, but XLA:CPU expands it away; it also removes an
  identity `cond`, `max(x, x)` and loop-invariant `while` state. A one-trip `while` whose state
  becomes `x * (i + 1)` at i = 0, with the trip count read from the data, is opaque to it: the
  loop's operand is written once (its producers fused in x's own order) and every consumer reads
  that buffer. Multiplying by exactly 1 keeps the values bit-identical (NaN, -0.0 and infinities
  included; denormals flush to zero as in any XLA:CPU arithmetic, ReLU's too), and the custom
  JVP passes tangents straight through, so gradients are those of the identity.
  """
  if x.size == 0:
    return x
  first = x.reshape(-1)[0]
  trips = (first == first).astype(jnp.int32) | 1  # always 1; XLA cannot fold it (NaN-aware)
  _, out = lax.while_loop(lambda c: c[0] < trips,
                          lambda c: (c[0] + 1, c[1] * (c[0] + 1).astype(c[1].dtype)),
                          (jnp.int32(0), x))
  return out


@materialize.defjvp
def _materialize_jvp(primals, tangents):
  return materialize(primals[0]), tangents[0]


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


def _pool_corners(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The four members of every 2x2 window in row-major window order: x[2i+a, 2j+b], (a, b) in
  (0,0), (0,1), (1,0), (1,1); a trailing odd row / column is dropped (VALID pooling)."""
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  return x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2], x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 / stride 2 VALID max pooling of [B, H, W, C] -> [B, H // 2, W // 2, C].

  Same values and gradient as `nn.max_pool(x, (2, 2), (2, 2))` (torch.nn.MaxPool2d(2)): the
  whole output gradient of a window goes to its *first* maximum in row-major order, ties
  included; a dropped odd row / column gets zero. Written as strided slices and elementwise
  selects because XLA:CPU lowers reduce-window's gradient (select-and-scatter) to a scatter with
  materialised iota indices, which took ~60% of a LeNet-5 step (bench/README.md).
  """
  a, b, c, d = _pool_corners(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_2x2_fwd(x):
  return max_pool_2x2(x), x


def _first_max_code(corners) -> tuple[jax.Array, jax.Array]:
  """Max of the four pool corners and the int32 index (0..3, row-major) of the first maximum."""
  a, b, c, d = corners
  y = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
  return y, jnp.where(a == y, 0, jnp.where(b == y, 1, jnp.where(c == y, 2, 3)))


def _route_to_corners(g: jax.Array, code: jax.Array) -> tuple[jax.Array, ...]:
  """The window gradient g sent to its first-maximum corner: four [B, h2, w2, C] maps."""
  zero = jnp.zeros_like(g)
  return tuple(jnp.where(code == k, g, zero) for k in range(4))


def _interleave_corners(corner_grads, h: int, w: int) -> jax.Array:
  """Four per-corner maps [B, h2, w2, C] back into place as [B, h, w, C] (zero-padded rows /
  columns beyond 2 h2, 2 w2: the odd row / column VALID pooling dropped)."""
  ga, gb, gc, gd = corner_grads
  n, h2, w2, ch = ga.shape
  # [B, h2, 2, w2, 2, C] -> [B, 2 h2, 2 w2, C].
  top, bottom = jnp.stack([ga, gb], axis=3), jnp.stack([gc, gd], axis=3)
  dx = jnp.stack([top, bottom], axis=2).reshape(n, 2 * h2, 2 * w2, ch)
  return jnp.pad(dx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0)))


def _max_pool_2x2_bwd(x, g):
  _, code = _first_max_code(_pool_corners(x))
  return (_interleave_corners(_route_to_corners(g, code), x.shape[1], x.shape[2]),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def conv_nhwc(x: jax.Array, kernel: jax.Array, pads) -> jax.Array:
  """Stride-1 NHWC x HWIO -> NHWC `lax.conv_general_dilated` with explicit `pads`."""
  return lax.conv_general_dilated(x, kernel, (1, 1), pads,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _parity_planes(x, pads):
  """x [B, H, W, 1] zero-padded by `pads` (and to even size) -> [B, H' / 2, 2, W' / 2, 2]:
  element [b, u, p, v, q] is xp[b, 2u + p, 2v + q]."""
  xp = jnp.pad(x[..., 0], ((0, 0), tuple(pads[0]), tuple(pads[1])))
  xp = jnp.pad(xp, ((0, 0), (0, xp.shape[1] % 2), (0, xp.shape[2] % 2)))
  return xp.reshape(xp.shape[0], xp.shape[1] // 2, 2, xp.shape[2] // 2, 2)


def _relu_corners_polyphase(x, kernel, bias, pads):
  """relu(conv + bias) at the four 2x2-pool corners, for C_in = 1, from the input's parity planes.

  Corner (a, c) of window (u, v) is z[2u + a, 2v + c] = sum_{i, j} xp[2u + a + i, 2v + c + j]
  * kernel[i, j, 0]; with plane[p][q] = xp[p::2, q::2] that is plane[(a + i) % 2][(c + j) % 2]
  at (u + (a + i) // 2, v + (c + j) // 2): unit-stride slices, which XLA:CPU vectorises (the
  same sums read at stride 2 ran ~10x slower).
  """
  kh, kw, _, _ = kernel.shape
  h2 = (x.shape[1] + pads[0][0] + pads[0][1] - kh + 1) // 2
  w2 = (x.shape[2] + pads[1][0] + pads[1][1] - kw + 1) // 2
  q = _parity_planes(x, pads)
  corners = []
  for a in range(2):
    for c in range(2):
      z = None
      for i in range(kh):
        for j in range(kw):
          u, v = (a + i) // 2, (c + j) // 2
          t = q[:, u:u + h2, (a + i) % 2, v:v + w2, (c + j) % 2, None] * kernel[i, j, 0]
          z = t if z is None else z + t
      corners.append(jax.nn.relu(z + bias))
  return tuple(corners)


def _relu_corners(x, kernel, bias, pads):
  if kernel.shape[2] == 1:
    return _relu_corners_polyphase(x, kernel, bias, pads)
  return _pool_corners(jax.nn.relu(conv_nhwc(x, kernel, pads) + bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_relu_max_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, pads) -> jax.Array:
  """max_pool_2x2(relu(conv_nhwc(x, kernel, pads) + bias)) with a hand-written VJP.

  Same values as the composition and the same gradients: the output gradient g of each 2x2
  window goes to its first maximum in row-major order (torch / `nn.max_pool`), times
  relu'(z) = [z > 0], which at the window's maximum is [y > 0] with y the pooled output.
  Why it is faster on XLA:CPU (LeNet-5 train step 1.8x with the two helpers below):
  - C_in = 1 (LeNet's conv1): the convolution is never materialised; each pool corner is summed
    from the input's parity planes (`_relu_corners_polyphase`) in one vectorised loop fusion
    (~2 ms at batch 512 vs ~30 ms for XLA's Eigen convolution + pooling, which handle C_in = 1
    and stride-2 reads badly). XLA re-runs these cheap sums inside the backward fusions that
    need the winning corner instead of storing them; forcing them into memory through a
    variadic reduce was slower (the reduce did not vectorise: 48 vs ~3 ms), through an opaque
    integer division no faster.
  - The backward never differentiates through the pooling's strided slices: it sends
    g * [y > 0] to the winning corner of each window and computes the gradients from those
    per-corner maps: the C_in = 1 weight gradient from the parity planes
    (`_weight_grad_polyphase`), the input gradient for C_in > 1 as a space-to-depth
    convolution (`_input_grad_s2d`), the rest as the VJP of `lax.conv_general_dilated` on the
    interleaved map dz.
  pads: ((top, bottom), (left, right)) as ints.
  """
  return _first_max_code(_relu_corners(x, kernel, bias, pads))[0]


def _conv_relu_max_pool_fwd(x, kernel, bias, pads):
  y, code = _first_max_code(_relu_corners(x, kernel, bias, pads))
  return y, (x, kernel, y, code)


def _input_grad_s2d(dz, kernel, pads, x_shape):
  """d x of `conv_nhwc(x, kernel, pads)` as a space-to-depth convolution.

  dx = VALID conv of dzp (dz zero-padded by kh - 1 - pad) with the flipped, transposed kernel
  V[i, j, o, c] = kernel[kh-1-i, kw-1-j, c, o]. Writing output rows y = 2Y + a and input rows
  y + i = 2(Y + s) + p (same for columns), dx in 2x2 blocks is a 3x3 (for kh = 5) VALID conv
  of D = space_to_depth(dzp) [B, H/2 + 2, W/2 + 2, 4 O] with
  K[s, t, (p, r, o), (a, c, ch)] = V[2s + p - a, 2t + r - c, o, ch] (0 outside the kernel),
  then depth_to_space. Why: XLA's Eigen convolution for the plain form (C_out = 6 for LeNet's
  conv2, 4 pad rows and columns of zeros) ran at ~17 GFLOP/s; the blocked form (64 -> 24
  channels) is ~3x faster at batch 512 although it multiplies 1.4x more zeros.
  """
  kh, kw, cin, cout = kernel.shape
  n, h_in, w_in = x_shape[0], x_shape[1], x_shape[2]
  (pt, _), (pl, _) = pads
  ns, nt = kh // 2 + 1, kw // 2 + 1
  hh, wh = -(-h_in // 2), -(-w_in // 2)  # output size in 2x2 blocks, rounded up
  top, left = kh - 1 - pt, kw - 1 - pl
  rows, cols = 2 * (hh + ns - 1), 2 * (wh + nt - 1)
  dzp = jnp.pad(dz, ((0, 0), (top, rows - top - dz.shape[1]), (left, cols - left - dz.shape[2]),
                     (0, 0)))
  d = dzp.reshape(n, hh + ns - 1, 2, wh + nt - 1, 2, cout).transpose(0, 1, 3, 2, 4, 5)
  d = d.reshape(n, hh + ns - 1, wh + nt - 1, 4 * cout)
  s, t, p, r, a, c = np.meshgrid(*(np.arange(m) for m in (ns, nt, 2, 2, 2, 2)), indexing="ij")
  i, j = kh - 1 - (2 * s + p - a), kw - 1 - (2 * t + r - c)
  valid = (i >= 0) & (i < kh) & (j >= 0) & (j < kw)
  k2 = kernel[np.clip(i, 0, kh - 1), np.clip(j, 0, kw - 1)]  # [ns, nt, 2, 2, 2, 2, C, O]
  k2 = jnp.where(valid[..., None, None], k2, jnp.zeros((), kernel.dtype))
  k2 = k2.transpose(0, 1, 2, 3, 7, 4, 5, 6).reshape(ns, nt, 4 * cout, 4 * cin)
  out = lax.conv_general_dilated(d, k2, (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = out.reshape(n, hh, wh, 2, 2, cin).transpose(0, 1, 3, 2, 4, 5)
  return out.reshape(n, 2 * hh, 2 * wh, cin)[:, :h_in, :w_in]


def _weight_grad_polyphase(x, kernel, pads, corner_grads):
  """d kernel of the C_in = 1 stage from the corner gradients corner_grads[2a + c] [B, h2, w2, O].

  dkernel[i, j, 0, o] = sum_{a, c} G[(a+i)//2, (c+j)//2, (a+i)%2, (c+j)%2, a, c, o], where
  G[s, t, (p, q), (a, c, o)] = sum_{b, u, v} plane_pq[b, u + s, v + t] dz_ac[b, u, v, o] is the
  weight gradient of a VALID (kh//2 + 1)^2 convolution from the 4 parity planes to the 4 x O
  corner gradients. Why: XLA's plain weight-gradient convolution needed dz interleaved back to
  [B, H, W, O] and contracted 1 x 6 channels over the full map (~17 GFLOP/s).
  """
  kh, kw, _, cout = kernel.shape
  h2, w2 = corner_grads[0].shape[1:3]
  ns, nt = kh // 2 + 1, kw // 2 + 1
  q = _parity_planes(x, pads).transpose(0, 1, 3, 2, 4)
  q = q.reshape(q.shape[0], q.shape[1], q.shape[2], 4)[:, :h2 + ns - 1, :w2 + nt - 1]
  d = jnp.concatenate(corner_grads, axis=-1)
  conv = functools.partial(conv_nhwc, q, pads=((0, 0), (0, 0)))
  g = jax.vjp(conv, jnp.zeros((ns, nt, 4, 4 * cout), d.dtype))[1](d)[0]
  g = g.reshape(ns, nt, 2, 2, 2, 2, cout)
  i, j, a, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(2), np.arange(2),
                           indexing="ij")
  picked = g[(a + i) // 2, (c + j) // 2, (a + i) % 2, (c + j) % 2, a, c]  # [kh, kw, 2, 2, O]
  return jnp.sum(picked, axis=(2, 3))[:, :, None, :].astype(kernel.dtype)


def _conv_relu_max_pool_bwd(pads, res, g):
  x, kernel, y, code = res
  corner_grads = _route_to_corners(jnp.where(y > 0, g, jnp.zeros_like(g)), code)
  kh, kw = kernel.shape[:2]
  h = x.shape[1] + pads[0][0] + pads[0][1] - kh + 1
  w = x.shape[2] + pads[1][0] + pads[1][1] - kw + 1
  dz = _interleave_corners(corner_grads, h, w)
  dx, dk = jax.vjp(functools.partial(conv_nhwc, pads=pads), x, kernel)[1](dz)
  if kernel.shape[2] == 1:
    # dx (of the image, for LeNet) stays the plain VJP's; XLA drops it and dz when unused.
    dk = _weight_grad_polyphase(x, kernel, pads, corner_grads)
    db = jnp.sum(sum(corner_grads), axis=(0, 1, 2))
  else:
    dx = _input_grad_s2d(dz, kernel, pads, x.shape)
    db = jnp.sum(dz, axis=(0, 1, 2))
  return dx, dk, db.astype(kernel.dtype)


conv_relu_max_pool.defvjp(_conv_relu_max_pool_fwd, _conv_relu_max_pool_bwd)
