"""Ensembles of trained encoders (seed 000 abstract: "ensemble methods").

`ensemble_embed_fn(members, mode)` returns images -> embeddings, and `combine(embeddings, mode)`
combines embeddings already computed (`--mode=evaluate --ensemble=runs/a,runs/b`, see
`sim_jax.inference`), from every member's L2-normalised embedding e_m:
  mode="mean":   e = normalize(mean_m normalize(e_m))   [B, E] (members must share E)
  mode="concat": e = concat_m normalize(e_m) / sqrt(M)  [B, sum_m E_m]
Both results have unit norm, and for "concat" the cosine similarity of two ensemble embeddings is
the mean of the members' cosine similarities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sim_jax.models.heads import l2_normalize

MODES = ("mean", "concat")


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"ensemble mode must be one of {MODES}; got {mode!r}")


def combine(embeddings: Sequence[jax.Array], mode: str = "mean") -> jax.Array:
  """The members' embeddings [B, E_m] of one batch -> the ensemble's (the module docstring's
  rule); NumPy or JAX arrays, float32 out."""
  check_mode(mode)
  if not embeddings:
    raise ValueError("ensemble needs at least one member's embeddings; got none")
  embs = [l2_normalize(jnp.asarray(e)) for e in embeddings]
  if mode == "concat":
    return jnp.concatenate(embs, axis=-1) / jnp.sqrt(float(len(embs)))
  dims = {e.shape[-1] for e in embs}
  if len(dims) != 1:
    raise ValueError(f"ensemble mode='mean' needs equal embedding sizes; got {sorted(dims)} "
                     "(use mode='concat')")
  return l2_normalize(jnp.mean(jnp.stack(embs), axis=0))


def ensemble_embed_fn(members: Sequence[tuple[nn.Module, Any]], mode: str = "mean"
                      ) -> Callable[[jax.Array], jax.Array]:
  """members: (module, variables) pairs, e.g. one per checkpoint; returns a jitted function."""
  check_mode(mode)
  if not members:
    raise ValueError("ensemble needs at least one (module, variables) member; got none")
  modules = [m for m, _ in members]
  variables = [v for _, v in members]

  @jax.jit
  def embed(variables, images):
    return combine([m.apply(v, images, train=False)[0] for m, v in zip(modules, variables)], mode)

  return lambda images: embed(variables, images)
