"""Exact blockwise search vs a full stable sort in NumPy (float64), single and sharded."""

import numpy as np
import pytest

from sim_jax.eval import search
from tests.helpers import run_python


def full_sort(q, g, k, metric, exclude_self=False):
  """Reference: score every pair in float64, stable sort by (score desc, index asc)."""
  q = q.astype(np.float64)
  g = g.astype(np.float64)
  if metric == "euclidean":
    score = -np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
  elif metric == "cosine":
    score = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        g / np.linalg.norm(g, axis=1, keepdims=True)).T
  else:
    score = q @ g.T
  if exclude_self:
    np.fill_diagonal(score, -np.inf)
  idx = np.argsort(-score, axis=1, kind="stable")[:, :k]
  vals = np.take_along_axis(score, idx, 1)
  return (-vals if metric == "euclidean" else vals), idx


def int_data(rng, n, d=3, lo=-2, hi=3):
  """Small-integer embeddings: float32 dot products are exact, so ties are real ties."""
  return rng.integers(lo, hi, size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("num_g,block", [(64, 16), (70, 16), (5, 16), (33, 1)])
@pytest.mark.parametrize("metric", ["dot", "euclidean"])
def test_blockwise_equals_full_sort_with_ties(num_g, block, metric):
  rng = np.random.default_rng(num_g + block)
  q, g = int_data(rng, 13), int_data(rng, num_g)
  k = min(7, num_g)
  s, i = search.topk(q, g, k, metric, block_size=block, query_block_size=5)
  ref_s, ref_i = full_sort(q, g, k, metric)
  np.testing.assert_array_equal(i, ref_i)  # exact indices, ties to the lower index
  np.testing.assert_allclose(s, ref_s, rtol=1e-6, atol=1e-5)


def test_all_equal_scores_return_lowest_indices():
  g = np.ones((50, 4), np.float32)
  _, i = search.topk(np.ones((3, 4), np.float32), g, 10, "dot", block_size=7)
  np.testing.assert_array_equal(i, np.tile(np.arange(10), (3, 1)))


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
def test_random_continuous_and_exclude_self(metric):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((90, 8)).astype(np.float32)
  s, i = search.topk(x, x, 6, metric, block_size=32, query_block_size=40, exclude_self=True)
  ref_s, ref_i = full_sort(x, x, 6, metric, exclude_self=True)
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_allclose(s, ref_s, rtol=1e-4, atol=1e-4)
  assert not np.any(i == np.arange(90)[:, None])


def test_exclude_self_with_duplicates_keeps_the_twin():
  x = np.zeros((4, 2), np.float32)  # all identical: every other row ties
  _, i = search.topk(x, x, 3, "euclidean", block_size=2, exclude_self=True)
  np.testing.assert_array_equal(i, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k=0"),
    (dict(k=11), "k=11"),
    (dict(metric="l1"), "metric"),
    (dict(block_size=0), "block_size"),
])
def test_bad_arguments(kwargs, match):
  q = np.zeros((2, 3), np.float32)
  g = np.zeros((10, 3), np.float32)
  args = dict(k=2, metric="dot") | kwargs
  with pytest.raises(ValueError, match=match):
    search.topk(q, g, **args)


def test_bad_inputs():
  g = np.zeros((10, 3), np.float32)
  with pytest.raises(ValueError, match="queries is empty"):
    search.topk(np.zeros((0, 3)), g, 1)
  with pytest.raises(ValueError, match="dimension"):
    search.topk(np.zeros((2, 4)), g, 1)
  with pytest.raises(ValueError, match="non-finite"):
    search.topk(np.full((2, 3), np.nan), g, 1)
  with pytest.raises(ValueError, match="exclude_self"):
    search.topk(np.zeros((2, 3)), g, 1, exclude_self=True)
  with pytest.raises(ValueError, match=r"k=10 must be an integer in \[1, 9\]"):
    search.topk(g, g, 10, exclude_self=True)


def test_sharded_search_on_four_devices_equals_single_device():
  code = """
  import numpy as np, jax
  from sim_jax.eval import search
  assert jax.device_count() == 4
  rng = np.random.default_rng(0)
  for num_g, metric in [(103, "dot"), (64, "euclidean"), (6, "dot")]:
    g = rng.integers(-2, 3, size=(num_g, 3)).astype(np.float32)
    q = rng.integers(-2, 3, size=(9, 3)).astype(np.float32)
    k = min(5, num_g)
    s4, i4 = search.topk(q, g, k, metric, block_size=8)  # default mesh: all 4 devices
    s1, i1 = search.topk(q, g, k, metric, block_size=8,
                         mesh=jax.make_mesh((1,), ("g",), devices=jax.devices()[:1]))
    np.testing.assert_array_equal(i4, i1)
    np.testing.assert_allclose(s4, s1, rtol=1e-6)
    sq = ((q[:, None] - g[None]) ** 2).sum(-1)
    full = (q @ g.T).astype(np.float64) if metric == "dot" else -sq
    ref = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(i4, ref)
  x = rng.standard_normal((30, 4)).astype(np.float32)
  _, i4 = search.topk(x, x, 3, "cosine", block_size=4, exclude_self=True)
  _, i1 = search.topk(x, x, 3, "cosine", block_size=4, exclude_self=True,
                      mesh=jax.make_mesh((1,), ("g",), devices=jax.devices()[:1]))
  np.testing.assert_array_equal(i4, i1)
  print("OK")
  """
  proc = run_python(code, num_devices=4, timeout=240)
  assert "OK" in proc.stdout


def test_device_array_gallery_is_used_in_place_and_checked():
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(9)
  q, g = int_data(rng, 5), int_data(rng, 40)
  _, i = search.topk(q, jax.device_put(g), 4, "dot", block_size=16)
  np.testing.assert_array_equal(i, full_sort(q, g, 4, "dot")[1])
  with pytest.raises(ValueError, match="non-finite value in row 3"):
    search.topk(q, jnp.asarray(g).at[3, 1].set(jnp.inf), 4)
