"""eval.search.topk compiles without folding the gallery indices into a constant.

With a gallery that fits one block, XLA removes the one-step scan; when the index offset was the
Python constant 0, the [query_block, k + block] index matrix became a constant that XLA spent
seconds folding (slow_operation_alarm "Constant folding an instruction is taking > 1s" at
the default block sizes). The compiled program must hold no constant of that size.
"""

import inspect
import re

import jax.numpy as jnp
import numpy as np

from sim_jax.eval import config, retrieval, search


def test_single_block_search_has_no_large_folded_constant():
  qb, num_g, dim, k = 64, 300, 8, 5
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(qb, dim)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(num_g, dim)), jnp.float32)
  q_index = jnp.arange(qb, dtype=jnp.int32)
  hlo = search._topk_single.lower(q, q_index, g, np.int32(0), k=k, metric="euclidean",
                                  block_size=num_g, exclude_self=True).compile().as_text()
  shapes = re.findall(r"(\w+)\[([\d,]+)\](?:\{[^}]*\})? constant\(", hlo)
  sizes = [int(np.prod([int(d) for d in dims.split(",")])) for _, dims in shapes]
  assert max(sizes, default=0) < qb * num_g, shapes


def test_default_metric_matches_retrieval_metrics():
  # One default across the two public entry points (the config's eval.metric default too).
  default = inspect.signature(retrieval.retrieval_metrics).parameters["metric"].default
  assert inspect.signature(search.topk).parameters["metric"].default == default
  assert config.default_config().metric == default
