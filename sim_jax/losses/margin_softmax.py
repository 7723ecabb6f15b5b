"""Classification-margin losses: softmax cross-entropy over cosines to learnt class weights.

Each loss scores an embedding x_i [D] against one weight row w_c [D] per class (or K sub-centres
w_ck, [C, K, D]) through the cosine c_ic = <x_i / |x_i|, w_c / |w_c|>, changes the logit of the
true class y_i, and takes the cross-entropy

    l_i = logsumexp_c(f_ic) - f_{i,y_i}.

    loss                  f_ic (c != y_i)   f_{i,y_i}                      reference
    arcface               s c_ic            s cos(theta + m)               Deng et al. 2019
    subcenter_arcface     as arcface with c_ic = max_k c_ick                Deng et al. 2020
    cosface               s c_ic            s (c_iy - m)                   Wang et al. 2018
    large_margin_softmax  s|x||w_c| c_ic    s|x||w_y| psi(theta)           Liu et al. 2016
    sphereface            s|x| c_ic         s|x| psi(theta)                Liu et al. 2017
    normalized_softmax    c_ic / t          c_iy / t                       Zhai & Wu 2019

with theta = arccos(c_iy) and psi(theta) = (-1)^k cos(m theta) - 2k for theta in
[k pi/m, (k+1) pi/m] (m a positive integer). ArcFace keeps its logit decreasing in theta past
theta = pi - m with cos(theta) - m sin(m) (InsightFace; pytorch-metric-learning `ArcFaceLoss`).
The weights live in the trainer's `params["loss"]["proxies"]` ([C, D], or [C, K, D] for
sub-centres). Definitions pinned against pytorch-metric-learning: docs/losses.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks
from sim_jax.numerics import l2_normalize


def check_class_inputs(embeddings, labels, weights, *, weights_ndim: int,
                       name: str = "weights") -> None:
  """ValueError unless embeddings [N, D], labels [N] int in [0, C) and `name` [C, D]
  (weights_ndim=2) or [C, K, D] (weights_ndim=3). The label range is checked only when the
  labels are concrete; inside `jit` an out-of-range label matches no class."""
  _checks.check_embeddings(embeddings)
  n, d = np.shape(embeddings)
  _checks.check_labels(labels, n)
  shape = np.shape(weights)
  want = "[C, D]" if weights_ndim == 2 else "[C, K, D]"
  if len(shape) != weights_ndim or shape[-1] != d:
    raise ValueError(f"{name} must have shape {want} with D={d} (the embedding size), got "
                     f"shape {shape}.")
  if not jnp.issubdtype(jnp.result_type(weights), jnp.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype "
                     f"{jnp.result_type(weights)}.")
  if not isinstance(labels, jax.core.Tracer) and n:
    concrete = np.asarray(labels)  # a jax.Array closed over by a jitted function stays concrete
    lo, hi = int(np.min(concrete)), int(np.max(concrete))
    if lo < 0 or hi >= shape[0]:
      raise ValueError(f"labels must be class ids in [0, {shape[0]}) for {shape[0]} classes of "
                       f"{name}; got values in [{lo}, {hi}]. Set config.loss.num_classes to the "
                       f"number of classes.")


def compute_dtype(embeddings, weights) -> jnp.dtype:
  return _checks.compute_dtype(jnp.promote_types(jnp.result_type(embeddings),
                                                 jnp.result_type(weights)))


def class_cosines(embeddings: jax.Array, weights: jax.Array) -> jax.Array:
  """Cosines [N, C] (weights [C, D]) or [N, C, K] (weights [C, K, D]), norms clamped at 1e-12."""
  dtype = compute_dtype(embeddings, weights)
  x = l2_normalize(jnp.asarray(embeddings, dtype))
  w = l2_normalize(jnp.asarray(weights, dtype))
  return jnp.einsum("nd,c...d->nc...", x, w)


def cross_entropy(logits: jax.Array, labels: jax.Array, reduction: str) -> jax.Array:
  """logsumexp_c(f_ic) - f_{i,y_i}, reduced over i (mean / sum / none)."""
  picked = jnp.take_along_axis(logits, jnp.asarray(labels)[:, None], axis=1)[:, 0]
  return _checks.reduce_elements(jax.nn.logsumexp(logits, axis=1) - picked, reduction)


def _with_target(cos: jax.Array, labels: jax.Array, target: jax.Array) -> jax.Array:
  """`cos` [N, C] with column y_i of row i replaced by target[i]."""
  onehot = jnp.arange(cos.shape[1])[None, :] == jnp.asarray(labels)[:, None]
  return jnp.where(onehot, target[:, None], cos)


def _target(cos: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.take_along_axis(cos, jnp.asarray(labels)[:, None], axis=1)[:, 0]


def _safe_sin(c: jax.Array) -> jax.Array:
  """sin(arccos c) = sqrt(1 - c^2) for c in [-1, 1], with gradient 0 (not inf) at |c| = 1."""
  s2 = 1.0 - jnp.square(c)
  pos = s2 > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, s2, 1.0)), 0.0)


def _check_scalars(**values) -> None:
  for name, v in values.items():
    _checks.check_scalar(v, name)


def arcface_target(cos_target: jax.Array, margin) -> jax.Array:
  """cos(theta + m) for theta = arccos(c) <= pi - m, else c - m sin(m) (monotone past pi - m).

  cos(theta + m) = c cos m - sin(theta) sin m: no arccos, so the gradient stays finite
  (cos m + c sin m / sin theta) wherever |c| < 1.
  """
  c = jnp.clip(cos_target, -1.0, 1.0)
  cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
  return jnp.where(c >= -cos_m, c * cos_m - _safe_sin(c) * sin_m, c - margin * sin_m)


def _check_margin_inputs(embeddings, labels, weights, margin, scale, reduction, *,
                         weights_ndim: int) -> None:
  """The checks of the additive-margin losses: reduction, shapes, margin >= 0, scale > 0."""
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  check_class_inputs(embeddings, labels, weights, weights_ndim=weights_ndim)
  _check_scalars(margin=margin, scale=scale)
  _checks.check_non_negative(margin, "margin")
  _checks.check_positive(scale, "scale")


def arcface(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, margin=0.5,
            scale=64.0, reduction: str = "mean") -> jax.Array:
  """ArcFace (additive angular margin; Deng et al., CVPR 2019):

    l_i = -log( e^{s cos(theta_iy + m)} / (e^{s cos(theta_iy + m)} + sum_{c != y} e^{s c_ic}) )

  Args:
    embeddings: [N, D]; labels: [N] class ids in [0, C); weights: [C, D] class centres.
    margin: m in radians (paper 0.5; pytorch-metric-learning takes degrees, 28.6).
    scale: s > 0 (paper and pml 64).
    reduction: "mean" (over N), "sum" or "none" ([N]).
  """
  _check_margin_inputs(embeddings, labels, weights, margin, scale, reduction, weights_ndim=2)
  cos = class_cosines(embeddings, weights)
  return _arcface_from_cosines(cos, labels, margin, scale, reduction)


def _arcface_from_cosines(cos, labels, margin, scale, reduction):
  target = arcface_target(_target(cos, labels), margin)
  return cross_entropy(scale * _with_target(cos, labels, target), labels, reduction)


def subcenter_arcface(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, margin=0.5,
                      scale=64.0, reduction: str = "mean") -> jax.Array:
  """Sub-center ArcFace (Deng et al., ECCV 2020): ArcFace on c_ic = max_k c_ick, the cosine to
  the closest of a class's K sub-centres.

  Args:
    weights: [C, K, D] sub-centres (pml's W [D, C*K], column c*K + k, transposed and reshaped).
    Others as `arcface`.
  """
  _check_margin_inputs(embeddings, labels, weights, margin, scale, reduction, weights_ndim=3)
  cos = jnp.max(class_cosines(embeddings, weights), axis=2)
  return _arcface_from_cosines(cos, labels, margin, scale, reduction)


def cosface(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, margin=0.35,
            scale=64.0, reduction: str = "mean") -> jax.Array:
  """CosFace / large-margin cosine loss (Wang et al., CVPR 2018):

    l_i = -log( e^{s (c_iy - m)} / (e^{s (c_iy - m)} + sum_{c != y} e^{s c_ic}) )

  Args as `arcface`; margin m >= 0 (paper and pml 0.35), scale s > 0 (pml 64).
  """
  _check_margin_inputs(embeddings, labels, weights, margin, scale, reduction, weights_ndim=2)
  cos = class_cosines(embeddings, weights)
  target = _target(cos, labels) - margin
  return cross_entropy(scale * _with_target(cos, labels, target), labels, reduction)


def chebyshev(c: jax.Array, m: int) -> jax.Array:
  """cos(m theta) as the Chebyshev polynomial T_m(cos theta): T_0 = 1, T_1 = c,
  T_{j+1} = 2c T_j - T_{j-1} (exact for every c, with a polynomial's finite gradient)."""
  prev, cur = jnp.ones_like(c), c
  if m == 0:
    return prev
  for _ in range(m - 1):
    prev, cur = cur, 2 * c * cur - prev
  return cur


def psi(cos_target: jax.Array, m: int) -> jax.Array:
  """L-Softmax's psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(theta m / pi) (Liu et al.
  2016, eq. 6): monotone decreasing on [0, pi]; k is piecewise constant, so no gradient."""
  c = jnp.clip(cos_target, -1.0, 1.0)
  k = jax.lax.stop_gradient(jnp.floor(jnp.arccos(c) * m / np.pi))
  sign = 1.0 - 2.0 * jnp.mod(k, 2.0)
  return sign * chebyshev(cos_target, m) - 2.0 * k


def _check_multiplier(margin) -> None:
  if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 1:
    raise ValueError(f"margin must be a positive int (the angle multiplier m), got {margin!r}.")


def large_margin_softmax(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, margin=4,
                         scale=1.0, normalize_weights: bool = False,
                         reduction: str = "mean") -> jax.Array:
  """Large-margin softmax, L-Softmax (Liu et al., ICML 2016, eq. 5):

    f_ic = s |x_i| |w_c| c_ic (c != y_i),   f_iy = s |x_i| |w_y| psi(theta_iy)

  (no bias; no lambda annealing, as pytorch-metric-learning `LargeMarginSoftmaxLoss`).
  `normalize_weights=True` is A-Softmax (`sphereface`). margin=1 is the plain softmax of x W^T.

  Args:
    weights: [C, D]; margin: the integer angle multiplier m >= 1 (paper and pml 4);
    scale: s > 0 (pml 1). Others as `arcface`.
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  check_class_inputs(embeddings, labels, weights, weights_ndim=2)
  _check_multiplier(margin)
  _check_scalars(scale=scale)
  _checks.check_positive(scale, "scale")
  cos = class_cosines(embeddings, weights)
  dtype = cos.dtype
  x_norm = jnp.linalg.norm(jnp.asarray(embeddings, dtype), axis=1)
  mag = scale * x_norm[:, None]
  if not normalize_weights:
    mag = mag * jnp.linalg.norm(jnp.asarray(weights, dtype), axis=1)[None, :]
  target = psi(_target(cos, labels), int(margin))
  return cross_entropy(mag * _with_target(cos, labels, target), labels, reduction)


def sphereface(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, margin=4,
               scale=1.0, reduction: str = "mean") -> jax.Array:
  """SphereFace / A-Softmax (Liu et al., CVPR 2017): `large_margin_softmax` with unit class
  weights, f_ic = s |x_i| c_ic, f_iy = s |x_i| psi(theta_iy) (pml `SphereFaceLoss`)."""
  return large_margin_softmax(embeddings, labels, weights, margin=margin, scale=scale,
                              normalize_weights=True, reduction=reduction)


def normalized_softmax(embeddings: jax.Array, labels: jax.Array, weights: jax.Array,
                       temperature=0.05, reduction: str = "mean") -> jax.Array:
  """Normalized softmax (Zhai & Wu, BMVC 2019; Wang et al. 2017 NormFace): f_ic = c_ic / t.

  Args:
    weights: [C, D]; temperature: t > 0 (paper and pml 0.05). Others as `arcface`.
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  check_class_inputs(embeddings, labels, weights, weights_ndim=2)
  _check_scalars(temperature=temperature)
  _checks.check_positive(temperature, "temperature")
  return cross_entropy(class_cosines(embeddings, weights) / temperature, labels, reduction)
