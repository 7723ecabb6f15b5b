"""Every public loss with a Python option (a string such as mining= / distance= / reduction=, a
flag, block_size) works under jax.jit without static_argnames, by the one idiom docs/losses.md
documents: bind the options before jitting,

    jax.jit(functools.partial(losses.triplet, mining="semi_hard"))(embeddings, labels)

(a string cannot be a traced argument: `jax.jit(loss)(x, y, mining="semi_hard")` is refused by
JAX itself). The options are found from each function's signature, so a loss added later is
covered too; its arrays are built from its parameter names (INPUTS for the ambiguous ones).
Each option is checked at a non-default value against the eager call, and a wrong string must
raise, under jit, a ValueError naming the option and the value.
"""

import ast
import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax import losses

M, D, C = 8, 4, 3


def _arrays():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(M, D)).astype(np.float32)
  half = rng.normal(size=(M // 2, D)).astype(np.float32)
  return {
      "embeddings": emb, "labels": np.array([0, 0, 1, 1, 2, 2, 0, 1], np.int32),
      "emb_a": half, "emb_b": half[::-1].copy(), "z1": half, "z2": half[::-1].copy(),
      "img_emb": half, "txt_emb": half[::-1].copy(), "same": np.array([1, 0, 1, 0], bool),
      "x": emb, "weights": rng.normal(size=(C, D)).astype(np.float32),
      "proxies": rng.normal(size=(C, D)).astype(np.float32),
      "centers": rng.normal(size=(C, 2, D)).astype(np.float32),
      "margin": np.float32(0.5), "temperature": np.float32(0.1),
      "log_temperature": np.float32(2.3), "bias": np.float32(-10.0),
  }


# Losses whose required arrays a parameter name does not determine.
INPUTS = {
    "softmax_ce": lambda a: (a["embeddings"][:, :C], a["labels"]),
    "pair_bce": lambda a: (a["same"].astype(np.float32) - 0.5, a["same"]),
    "sigmoid_contrastive": lambda a: (a["same"].astype(np.float32) - 0.5, a["same"]),
    "subcenter_arcface": lambda a: (a["embeddings"], a["labels"], a["centers"]),
    # The pairs' two classes and one raw margin per class.
    "adaptive_margin_contrastive": lambda a: (
        a["emb_a"], a["emb_b"], a["same"], a["labels"][:M // 2], a["labels"][M // 2:],
        np.zeros(C, np.float32)),
    "pool_triplet": lambda a: (a["embeddings"].reshape(2, M // 2, D),),  # 2 pools of 4 rows
}
# Public functions that are not losses of a batch (helpers, configs).
NOT_LOSSES = {"default_config", "l2_normalize", "linear_logits", "margin_from_raw",
              "raw_from_margin", "cosine_similarity_matrix", "snr_distance_matrix"}
OPTION_TYPES = (str, bool)


def _options(fn) -> dict:
  """The parameters of `fn` whose default is a string or a flag, plus block_size."""
  out = {}
  for name, p in inspect.signature(fn).parameters.items():
    if isinstance(p.default, OPTION_TYPES) or name == "block_size":
      out[name] = p.default
  return out


def _required_arrays(name, fn, arrays):
  if name in INPUTS:
    return INPUTS[name](arrays)
  required = [n for n, p in inspect.signature(fn).parameters.items()
              if p.default is inspect.Parameter.empty]
  missing = [n for n in required if n not in arrays]
  if missing:
    pytest.fail(f"losses.{name}: add its arrays to INPUTS (no rule for {missing})")
  return tuple(arrays[n] for n in required)


def _cases():
  for name in losses.__all__:
    fn = getattr(losses, name)
    if name in NOT_LOSSES or not callable(fn):
      continue
    if _options(fn):
      yield name


def _choices(fn, args, option) -> tuple:
  """The values `option` accepts, read from the ValueError a wrong one raises."""
  with pytest.raises(ValueError, match=rf"{option}.*'no-such-{option}'") as err:
    jax.jit(functools.partial(fn, **{option: f"no-such-{option}"}))(*args)
  found = re.search(r"one of (\(.*?\))", str(err.value))
  return ast.literal_eval(found.group(1)) if found else ()


def _variant(fn, args, option, default):
  """A non-default value of `option` (None when it has none to try)."""
  if option == "block_size":
    return 2
  if isinstance(default, bool):
    return not default
  others = [c for c in _choices(fn, args, option) if c != default]
  return others[-1] if others else None


@pytest.mark.parametrize("name", list(_cases()))
def test_options_bound_with_partial_work_under_jit(name):
  fn = getattr(losses, name)
  args = tuple(jnp.asarray(a) for a in _required_arrays(name, fn, _arrays()))
  for option, default in _options(fn).items():
    value = _variant(fn, args, option, default)
    if value is None:
      continue
    try:
      want = fn(*args, **{option: value})
    except ValueError:
      continue  # the value needs another option too (e.g. a mesh); jit adds nothing to check
    got = jax.jit(functools.partial(fn, **{option: value}))(*args)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)


def test_the_idiom_is_needed_for_strings():
  """What the idiom avoids: JAX refuses a string as a traced argument, before any loss code."""
  a = _arrays()
  with pytest.raises(TypeError, match="str"):
    jax.jit(losses.triplet)(a["embeddings"], a["labels"], mining="semi_hard")
