"""Seed 003's training objective: a triplet loss over the foils of candidate pools.

Each row of a pools batch (`data.sampler = "pools"`) is one candidate pool
`[query, true match, foil_1 .. foil_k]`, embedded as z [B, 2 + k, D]. With a distance d, the
loss is the triplet hinge of the query against its true match and each of its own foils:

  L = 1 / (B k) * sum_b sum_j max(0, d(q_b, t_b) - d(q_b, f_bj) + margin)

  d = 1 - cos(a, b)   (distance="cosine": seed 003 sec. 3.2, the triplet loss on cosine
                       similarity, so only directions matter)
  d = ||a - b||_2     (distance="euclidean"; sqrt(|a - b|^2 + 1e-12): finite gradient at 0)

Unlike `losses.triplet` (every same-label / other-label pair of the batch, with mining), only
the pool's own foils are negatives: the batch is the seed's [query, match, 19 foils] layout.
Fixed shapes, no Python loop over the batch: jit- and grad-safe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOL_DISTANCES = ("cosine", "euclidean")


def pool_distances(z: jax.Array, distance: str = "cosine") -> jax.Array:
  """d(q_b, c_bj) of each pool's query to its 1 + k candidates: z [B, 2 + k, D] -> [B, 1 + k]."""
  if z.ndim != 3 or z.shape[1] < 3:
    raise ValueError(f"pool embeddings must be [B, 2 + num_foils, D] with num_foils >= 1, got "
                     f"shape {z.shape}")
  q, cand = z[:, :1], z[:, 1:]
  if distance == "cosine":
    qn = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    cn = cand / jnp.maximum(jnp.linalg.norm(cand, axis=-1, keepdims=True), 1e-12)
    return 1.0 - jnp.sum(qn * cn, axis=-1)
  if distance == "euclidean":
    return jnp.sqrt(jnp.sum(jnp.square(q - cand), axis=-1) + 1e-12)
  raise ValueError(f"distance must be one of {POOL_DISTANCES}, got {distance!r}")


def pool_triplet(z: jax.Array, margin=0.2, distance: str = "cosine") -> jax.Array:
  """Mean triplet hinge of each pool's query, true match (column 1) and foils (columns 2..)."""
  d = pool_distances(z, distance)
  return jnp.mean(jax.nn.relu(d[:, :1] - d[:, 1:] + margin))
