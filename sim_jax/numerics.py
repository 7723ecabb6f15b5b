"""Numerics shared by the models, the losses and evaluation: the one L2 normalisation.

A leaf module (it imports only JAX), so `sim_jax.models` and `sim_jax.losses` both use it without
depending on each other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Norms below this are clamped, so a zero vector normalises to a finite (zero) vector.
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(||x||_2, 1e-12) along `axis`, in x's dtype, with a finite gradient at x = 0.

  Computed as x / sqrt(max(sum x^2, 1e-24)): the max comes before the sqrt because sqrt's
  derivative is infinite at 0 and finite at 1e-24, so a zero row gets the gradient g / 1e-12
  instead of NaN. Callers that need float32 from low-precision inputs cast first.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, NORM_EPS * NORM_EPS))
