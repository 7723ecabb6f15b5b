"""bench/full_row_triplets.py: its two semi-hard / batch-all streaming forms against the dense
core (an independent formulation: the [N, N, N] triplet tensor), and its command line."""

from __future__ import annotations

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import full_row_triplets, previous_forms

triplet = importlib.import_module("sim_jax.losses.triplet")
triplet_streaming = importlib.import_module("sim_jax.losses.triplet_streaming")


@pytest.mark.parametrize("mining", ["semi_hard", "batch_all"])
@pytest.mark.parametrize("soft", [False, True])
def test_both_forms_match_the_dense_core(mining, soft):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(37, 6)).astype(np.float32)
  # Uneven classes: 0-9 positives per anchor, and singletons (anchors with no positive).
  labels = np.concatenate([np.zeros(10), np.ones(6), np.full(4, 2), np.arange(3, 20)])
  labels = jnp.asarray(rng.permutation(labels).astype(np.int32))
  x = jnp.asarray(x)

  def mean(stats, **kw):
    return lambda x: (lambda nd: jnp.sum(nd[0]) / jnp.maximum(jnp.sum(nd[1]), 1.0))(
        stats(x, labels, margin=0.2, mining=mining, distance="euclidean", soft=soft, **kw))

  want_v, want_g = jax.value_and_grad(mean(triplet.triplet_stats_dense))(x)
  for stats in (triplet_streaming.triplet_stats_streaming, previous_forms.triplet_stats_full_row):
    v, g = jax.jit(jax.value_and_grad(mean(stats, block_size=8)))(x)
    np.testing.assert_allclose(float(v), float(want_v), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want_g), rtol=1e-4, atol=1e-6)


def test_cli_writes_both_forms_times(tmp_path):
  out = str(tmp_path / "frt")
  report = full_row_triplets.main(["--n=32,64", "--rounds=1", "--block_size=16",
                                   f"--out={out}"])
  with open(out + ".json") as f:
    assert json.load(f)["points"] == report["points"]
  assert [(p["n"], p["mining"]) for p in report["points"]] == [
      (32, "semi_hard"), (32, "batch_all"), (64, "semi_hard"), (64, "batch_all")]
  assert all(p["seconds"]["by_column"] > 0 and p["seconds"]["per_positive"] > 0
             for p in report["points"])
  assert "| 64 | batch_all |" in open(out + ".md").read()


def test_cli_refuses_a_batch_that_is_not_a_multiple_of_k(tmp_path):
  with pytest.raises(SystemExit, match="multiples of --k=4"):
    full_row_triplets.main(["--n=30", f"--out={tmp_path / 'x'}"])
