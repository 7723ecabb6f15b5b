"""Fast random variables for tests: `jax.eval_shape(model.init)` filled from NumPy.

Why: compiling `model.init` on CPU with the default threefry PRNG takes tens of seconds for even
a tiny ResNet (every initializer's random bits are unrolled into the XLA program), while the
forward pass compiles in under a second. Tests that only need *some* variables use these.
"""

from __future__ import annotations

import math
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def random_variables(model: nn.Module, *inputs: jax.Array, seed: int = 0, **init_kwargs) -> dict:
  """Variables with the shapes `model.init(key, *inputs)` would give, drawn with NumPy.

  kernels ~ N(0, 1 / fan_in) (fan_in = product of all but the last dim); biases ~ N(0, 0.1^2);
  norm scales ~ 1 + N(0, 0.1^2); running means ~ N(0, 0.1^2), running variances ~ U(0.5, 1.5);
  any other leaf (class token, position embedding, PairHead scale) ~ N(0, 0.02^2) around its role.
  Non-zero biases and statistics make tests sensitive to every leaf. Each leaf is drawn from a
  generator seeded by (seed, its path), so two models sharing a leaf name and shape get the same
  values (e.g. the same backbone with and without an attention head).
  """
  shapes = jax.eval_shape(lambda *xs: model.init(jax.random.key(0), *xs, **init_kwargs), *inputs)
  out = {}
  for col, tree in shapes.items():
    flat = traverse_util.flatten_dict(dict(tree))
    new = {}
    for path, s in flat.items():
      leaf, shape = path[-1], s.shape
      rng = np.random.default_rng([seed, zlib.crc32("/".join((col,) + path).encode())])
      if leaf == "kernel":
        v = rng.normal(size=shape) / math.sqrt(max(math.prod(shape[:-1]), 1))
      elif leaf in ("bias", "mean"):
        v = 0.1 * rng.normal(size=shape)
      elif leaf == "scale":
        v = 1.0 + 0.1 * rng.normal(size=shape)
      elif leaf == "var":
        v = rng.uniform(0.5, 1.5, size=shape)
      else:
        v = 0.02 * rng.normal(size=shape)
      new[path] = jnp.asarray(v, s.dtype)
    out[col] = traverse_util.unflatten_dict(new)
  return out
