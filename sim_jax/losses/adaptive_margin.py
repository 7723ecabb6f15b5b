"""The contrastive loss with per-class adaptive margins that cannot collapse to 0.

Seed 000 ("dynamic margins", section 3.4.4 and its references [7], [8]) learns one global
margin. A plain learnt margin has nothing holding it up: d/dm of 0.5 * max(0, m - d)^2 is
max(0, m - d) >= 0, so gradient descent only ever lowers it, towards 0. Here every class c owns
a margin, kept above a floor and rewarded for being large (the margin reward of AdaptiveFace,
Liu et al., CVPR 2019, "Adaptive Margin Loss", whose loss subtracts lambda * mean_c m_c):

  m_c  = m_min + softplus(r_c)                     r [C]: raw parameters, m_c > m_min > 0
  m_i  = (m_{a_i} + m_{b_i}) / 2                   the margin of pair i, classes a_i and b_i
  squared (Hadsell):  l_i = s_i * 0.5 d_i^2 + (1 - s_i) * (0.5 max(0, m_i - d_i)^2 - lambda m_i)
  hinge:              l_i = s_i * d_i       + (1 - s_i) * (max(0, m_i - d_i)       - lambda m_i)

with d_i the pair's distance (euclidean or cosine, as `contrastive`) and s_i = 1 for a positive
pair (whose margin is unused). The reward acts only through the margins: the encoder sees the
contrastive loss with the margins m_i. The margins' own gradient on a negative pair is
(max(0, m_i - d_i) - lambda) / 2 per class (hinge form: (1[d_i < m_i] - lambda) / 2), so each
class's margin settles where the mean violation of its negatives by the margin equals lambda
(hinge form: where a fraction lambda of its negatives lies inside it). Classes whose negatives
lie far apart get a larger margin, confusable classes a smaller one; none goes below m_min, and
with lambda > 0 none is pushed towards it once its negatives clear the margin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks
from sim_jax.losses.pairwise import pair_distances


def class_margins(margin_raw: jax.Array, min_margin) -> jax.Array:
  """[C] margins m_c = min_margin + softplus(margin_raw_c), each > min_margin."""
  return min_margin + jax.nn.softplus(margin_raw)


def raw_from_class_margin(margin: float, min_margin: float, num_classes: int) -> jax.Array:
  """[num_classes] raw parameters whose margins all equal `margin` (> min_margin > 0)."""
  if not min_margin > 0:
    raise ValueError(f"min_margin must be > 0, got {min_margin}.")
  if not margin > min_margin:
    raise ValueError(f"margin={margin} must be larger than min_margin={min_margin}: the margins "
                     "start at margin and never go below min_margin.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  excess = float(margin - min_margin)
  raw = excess + np.log(-np.expm1(-excess))  # softplus^-1, without overflow for large excess
  return jnp.full((num_classes,), raw, jnp.float32)


def _check_class_labels(labels, n: int, num_classes: int, name: str) -> None:
  _checks.check_labels(labels, n, name)
  v = _checks._concrete_values(labels)
  if v is not None and v.size and (v.min() < 0 or v.max() >= num_classes):
    raise ValueError(f"{name} must be class ids in [0, {num_classes}) (margin_raw has "
                     f"{num_classes} classes), got values in [{v.min()}, {v.max()}].")


def adaptive_margin_contrastive(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array,
                                labels_a: jax.Array, labels_b: jax.Array,
                                margin_raw: jax.Array, min_margin=0.1, reward=0.1,
                                squared: bool = True, distance: str = "euclidean",
                                reduction: str = "mean", weights=None) -> jax.Array:
  """Contrastive loss with the per-class adaptive margins of the module docstring.

  Args:
    emb_a, emb_b: [B, D] embeddings of the two sides of each pair (computed in float32 or wider).
    same: [B] bool/int, 1 where the pair shares a class.
    labels_a, labels_b: [B] integer class ids of the two sides, in [0, C) (checked when
      concrete; under jit an out-of-range id would be clamped by the gather).
    margin_raw: [C] raw margin parameters r (`raw_from_class_margin` starts them at a margin).
    min_margin: m_min > 0, the floor of every margin.
    reward: lambda >= 0, the margin reward per negative pair (0: the margins only shrink,
      towards m_min).
    squared / distance: as `contrastive` (Hadsell squared or hinge form; euclidean or cosine).
    reduction: "mean" (over B), "sum", or "none" ([B]).
    weights: None or [B] non-negative pair weights (a miner's); "mean" is then
      sum_i w_i l_i / sum_i w_i (0 when every weight is 0), as in `contrastive`.

  Returns:
    A scalar (mean / sum) or [B] losses, float32 (float64 for float64 inputs). The loss can be
    negative (the reward term).
  """
  _checks.check_embeddings(emb_a, "emb_a")
  _checks.check_embeddings(emb_b, "emb_b")
  _checks.check_same_shape(emb_a, emb_b, "emb_a", "emb_b")
  b = emb_a.shape[0]
  _checks.check_same(same, b)
  if np.ndim(margin_raw) != 1 or not jnp.issubdtype(jnp.result_type(margin_raw), jnp.floating):
    raise ValueError(f"margin_raw must be a 1-D float array [C] (one raw margin per class), got "
                     f"shape {np.shape(margin_raw)} and dtype {jnp.result_type(margin_raw)}.")
  num_classes = np.shape(margin_raw)[0]
  _check_class_labels(labels_a, b, num_classes, "labels_a")
  _check_class_labels(labels_b, b, num_classes, "labels_b")
  _checks.check_scalar(min_margin, "min_margin")
  _checks.check_positive(min_margin, "min_margin")
  _checks.check_scalar(reward, "reward")
  _checks.check_non_negative(reward, "reward")
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  d = pair_distances(emb_a, emb_b, distance)
  margins = class_margins(jnp.asarray(margin_raw).astype(d.dtype), jnp.asarray(min_margin, d.dtype))
  m = 0.5 * (margins[jnp.asarray(labels_a)] + margins[jnp.asarray(labels_b)])
  hinge = jax.nn.relu(m - d)
  neg = 0.5 * jnp.square(hinge) if squared else hinge
  pos = 0.5 * jnp.square(d) if squared else d
  y = jnp.asarray(same).astype(bool)
  losses = jnp.where(y, pos, neg - jnp.asarray(reward, d.dtype) * m)
  if weights is None:
    return _checks.reduce_elements(losses, reduction)
  _checks.check_weights(weights, b)
  w = jnp.asarray(weights).astype(losses.dtype)
  if reduction == "mean":
    total = jnp.sum(w)
    return jnp.where(total > 0, jnp.sum(w * losses) / jnp.where(total > 0, total, 1.0), 0.0)
  return _checks.reduce_elements(w * losses, reduction)


def margin_stats(margin_raw: jax.Array, min_margin) -> dict[str, jax.Array]:
  """{"margin": mean, "margin_min": min, "margin_max": max} of the [C] class margins (logged)."""
  m = class_margins(margin_raw, min_margin)
  return {"margin": jnp.mean(m), "margin_min": jnp.min(m), "margin_max": jnp.max(m)}
