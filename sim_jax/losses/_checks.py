"""Input validation and the one reduction shared by every loss in sim_jax.losses.

Every check reads only static information (shapes, dtypes, Python values), so it runs once at
trace time and works unchanged under `jax.jit`, `jax.grad` and `jax.vmap`. Values that are traced
(e.g. a learnable temperature inside a jitted step) cannot be inspected and are not checked.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype losses accumulate in: float32 for bfloat16/float16/float32 inputs, else float64."""
  return jnp.promote_types(dtype, jnp.float32)


def check_embeddings(x, name: str = "embeddings") -> None:
  """Raises ValueError unless `x` is a floating-point array of shape [N, D]."""
  shape = np.shape(x)
  if len(shape) != 2:
    raise ValueError(f"{name} must have shape [N, D], got shape {shape}.")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}.")


def check_labels(labels, n: int, name: str = "labels") -> None:
  """Raises ValueError unless `labels` is an integer array of shape [n]."""
  shape = np.shape(labels)
  if shape != (n,):
    raise ValueError(f"{name} must have shape [{n}] (one label per embedding), got shape {shape}.")
  dtype = jnp.result_type(labels)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array, got dtype {dtype}; "
                     "cast class ids to int32.")


def check_same(same, n: int, name: str = "same") -> None:
  """Raises ValueError unless `same` is a bool or integer array of shape [n] (1 = same class)."""
  shape = np.shape(same)
  if shape != (n,):
    raise ValueError(f"{name} must have shape [{n}] (one flag per pair), got shape {shape}.")
  dtype = jnp.result_type(same)
  if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"{name} must be a bool or integer array (1 = same class), got dtype {dtype}.")


def check_weights(weights, n: int, name: str = "weights") -> None:
  """Raises ValueError unless `weights` is a real array of shape [n] (concrete ones also >= 0)."""
  shape = np.shape(weights)
  if shape != (n,):
    raise ValueError(f"{name} must have shape [{n}] (one weight per pair), got shape {shape}.")
  dtype = jnp.result_type(weights)
  if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.floating)
          or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"{name} must be a bool, integer or float array, got dtype {dtype}.")
  check_non_negative(weights, name)


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
  """Raises ValueError unless `a` and `b` have identical shapes."""
  if np.shape(a) != np.shape(b):
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and "
                     f"{np.shape(b)}.")


def _concrete_values(value):
  """`value` as a NumPy array when it is known at trace time, else None (traced)."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def check_positive(value, name: str) -> None:
  """Raises ValueError if a concrete `value` is not > 0 (traced values pass unchecked)."""
  v = _concrete_values(value)
  if v is not None and not np.all(v > 0):
    raise ValueError(f"{name} must be > 0, got {value}.")


def check_non_negative(value, name: str) -> None:
  """Raises ValueError if a concrete `value` is negative (traced values pass unchecked)."""
  v = _concrete_values(value)
  if v is not None and not np.all(v >= 0):
    raise ValueError(f"{name} must be >= 0, got {value}.")


def check_scalar(value, name: str) -> None:
  """Raises ValueError unless `value` is a scalar (Python number or 0-d array)."""
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")


def check_choice(value, name: str, choices: Sequence[str]) -> None:
  """Raises ValueError unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_block_size(block_size, name: str = "block_size") -> None:
  """Raises ValueError unless `block_size` is None (dense) or a positive Python int."""
  if block_size is None:
    return
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size <= 0:
    raise ValueError(f"{name} must be None (dense) or a positive int, got {block_size!r}.")


def reduce_per_anchor(num: jax.Array, den: jax.Array, reduction: str) -> jax.Array:
  """Applies the per-anchor reduction contract shared by the dense and streaming losses.

  Args:
    num: [N] summed loss of each anchor.
    den: [N] number of terms each anchor contributes to the mean (0 = anchor excluded).
    reduction: "mean" -> sum(num) / max(sum(den), 1) (0 when nothing is counted);
      "sum" -> sum(num); "none" -> num / max(den, 1) per anchor (0 where den == 0).
  """
  check_choice(reduction, "reduction", REDUCTIONS)
  if reduction == "mean":
    return jnp.sum(num) / jnp.maximum(jnp.sum(den), 1)
  if reduction == "sum":
    return jnp.sum(num)
  return num / jnp.maximum(den, 1)


def reduce_elements(losses: jax.Array, reduction: str) -> jax.Array:
  """mean / sum / none over a [B] array of per-example losses (all examples counted)."""
  check_choice(reduction, "reduction", REDUCTIONS)
  if reduction == "mean":
    return jnp.mean(losses)
  if reduction == "sum":
    return jnp.sum(losses)
  return losses
