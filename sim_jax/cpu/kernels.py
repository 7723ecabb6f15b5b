"""XLA:CPU kernels: pure JAX functions, most with hand-written derivatives, faster on XLA:CPU.

Each computes the same function (values and gradients) as a plain composition of `jax.numpy` /
Flax ops, and each is pinned to that composition by a test. `sim_jax.models` selects them only
when the model is compiled for the CPU (`sim_jax.models.cpu_ops`, `get_model(platform=...)`);
GPU and TPU run the plain Flax modules. This module imports no other sim_jax module.

- `materialize(x)`: an identity XLA cannot fuse through (ResNet's ReLU outputs,
  config.model.materialize).
- `max_pool_2x2(x)`: 2x2 / stride-2 max pooling (= `nn.max_pool(x, (2, 2), (2, 2))`), strided
  slices and a first-maximum VJP instead of select-and-scatter (multi-scale encoder).
- `conv_relu_max_pool(x, kernel, bias, pads)`: conv -> ReLU -> `max_pool_2x2` as one custom
  VJP (LeNet-5's two stages).
- `layer_norm_dense(x, norm, kernel, bias)`: Dense(LayerNorm(x)) with the LayerNorm's affine
  folded into the Dense weights and a hand-written VJP (the ViT's pre-norm projections).
- `depthwise_conv(x, kernel, stride, pads)`: a depthwise (one filter per channel) convolution as
  k*k shifted multiply-adds (MobileNetV3's and EfficientNet's MBConv blocks).
Measurements: docs/performance.md.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ---- materialize (ResNet) ----


@jax.custom_jvp
def materialize(x: jax.Array) -> jax.Array:
  """Identity that XLA cannot fuse through: `x` is computed once, into a buffer of its own.

  Why: XLA:CPU fuses cheap element-wise producers (batch norm's scale and shift, ReLU, a residual
  add) into *every* consumer of their result. In ResNet's backward pass one such consumer is the
  layout copy that moves N innermost for each weight-gradient convolution; fused there, the
  producers run in that copy's transposed order, and each of their operands is read with one
  float used per cache line. Along the residual stream a copy re-computed up to three blocks'
  chains that way (0.2-0.95 s per copy in a profile of the ResNet-18 step, docs/performance.md).

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


# ---- 2x2 max pooling and the fused conv -> ReLU -> pool stage (multi-scale, LeNet-5) ----


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
  materialised iota indices, which took ~60% of a LeNet-5 step (docs/performance.md).
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


# ---- LayerNorm folded into the next Dense (ViT) ----


def _normalize(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """(x - mean) / sqrt(var + eps) over the last axis in float32, and 1 / sqrt(var + eps)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)  # two-pass: no cancellation
  rstd = jax.lax.rsqrt(var + eps)
  return (x - mean) * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
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
                     bias: jax.Array, eps: float, dtype: Any = jnp.float32,
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


# ---- depthwise convolution (MBConv) ----


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, pads) -> jax.Array:
  """= `lax.conv_general_dilated(x, kernel, (stride, stride), pads, feature_group_count=C)` for
  x [B, H, W, C] and kernel [k, k, 1, C] (HWIO, one filter per channel), no dilation.

  out[b, i, j, c] = sum_{u, v} xp[b, stride*i + u, stride*j + v, c] * kernel[u, v, 0, c], with
  xp = x zero-padded by `pads`: k*k strided slices of xp, each scaled by one [C] row of the
  kernel, summed. XLA fuses the sum into one elementwise loop, and autodiff's derivative is as
  plain: each slice transposes to a pad (input gradient) and each tap to one reduction over
  b, i, j (kernel gradient). XLA:CPU lowers the grouped convolution, and above all its two
  gradients, to a generic loop several times slower (measured in docs/performance.md).
  """
  kh, kw = kernel.shape[:2]
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  out_h = (xp.shape[1] - kh) // stride + 1
  out_w = (xp.shape[2] - kw) // stride + 1
  out = None
  for u in range(kh):
    for v in range(kw):
      tap = lax.slice(xp, (0, u, v, 0),
                      (xp.shape[0], u + (out_h - 1) * stride + 1, v + (out_w - 1) * stride + 1,
                       xp.shape[3]), (1, stride, stride, 1)) * kernel[u, v, 0]
      out = tap if out is None else out + tap
  return out
