"""bench/loss_scaling.py: its loss table feeds sim_jax and pml the same loss (values agree), and
the CLI writes each point's JSON line and a summary that covers every point, even after a kill."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import loss_scaling as ls
from sim_jax import losses
from sim_jax.losses import objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_table_covers_the_all_pairs_losses_of_the_trainer():
  # Every trainer loss is either benchmarked or left out for a reason the docstring names.
  left_out = set(objective.PROXY_LOSSES) | {
    "contrastive", "learnable_margin_contrastive", "adaptive_margin_contrastive", "pair_bce",
    "sigmoid_contrastive", "recall_at_k_surrogate", "softmax_ce", "vicreg", "barlow_twins",
    "pool_triplet", "nt_xent", "supcon", "triplet"}
  assert set(objective.NAMES) - left_out == set(ls.PAIR_TABLE)
  assert {"nt_xent", "supcon"} < set(ls.LOSSES)


@pytest.mark.parametrize("name", sorted(k for k, v in ls.PAIR_TABLE.items() if v.build_pml))
def test_jax_and_pml_builders_compute_the_same_loss(name):
  """The bench's two sides take the same inputs and hyper-parameters: equal values (float32,
  tolerance for float32 sums; pml is the independent implementation)."""
  torch = pytest.importorskip("torch")
  entry = ls.PAIR_TABLE[name]
  x, y = ls._data(24, 8, seed=3, unit=entry.unit)
  ours = entry.build_jax(losses, None)(jnp.asarray(x), jnp.asarray(y))
  theirs = entry.build_pml(ls._pml_namespace())(torch.from_numpy(x),
                                                torch.from_numpy(y.astype(np.int64)))
  np.testing.assert_allclose(float(ours), theirs.item(), rtol=2e-4, atol=1e-6)
  if entry.streaming:
    streamed = jax.jit(entry.build_jax(losses, 8))(x, y)
    np.testing.assert_allclose(float(streamed), float(ours), rtol=1e-5)


def test_next_n_resumes_a_series_and_stops_after_a_failed_point():
  points = [{"loss": "a", "impl": "dense", "n": 256, "block_size": 1024, "status": "ok"},
            {"loss": "a", "impl": "dense", "n": 512, "block_size": 1024, "status": "ok"},
            {"loss": "a", "impl": "pml", "n": 256, "block_size": 1024, "status": "over RSS cap"}]
  assert ls.next_n(points, "a", "dense", 1024, 256) == 1024
  assert ls.next_n(points, "a", "pml", 1024, 256) is None
  assert ls.next_n(points, "a", "streaming", 1024, 256) == 256
  assert ls.series_start("pnp", 1024) == 256 and ls.series_start("circle", 1024) == 1024


def test_read_jsonl_skips_a_line_cut_by_a_kill(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text('{"n": 1}\n{"n": 2}\n{"n": ')
  assert ls.read_jsonl(str(path)) == [{"n": 1}, {"n": 2}]


def test_quick_cli_writes_every_point_and_its_summary(tmp_path):
  """The CLI's quick mode on one new loss (N = 256): each point's JSON line, then a summary
  whose rows are those lines; a second run with --resume adds nothing already measured."""
  out = str(tmp_path / "run") + "/"
  cmd = [sys.executable, os.path.join(REPO, "bench", "loss_scaling.py"), "--quick",
         "--losses", "intra_pair_variance", "--impls", "dense,pml", "--n_max", "256",
         "--max_seconds", "600", "--out", out]  # a generous limit: CI machines are shared
  env = dict(os.environ, PYTHONPATH=REPO)
  subprocess.run(cmd, check=True, env=env, capture_output=True,
                 timeout=900)
  points = [json.loads(line) for line in open(out + "points.jsonl")]
  assert [(p["impl"], p["n"], p["status"]) for p in points] == [("dense", 256, "ok"),
                                                               ("pml", 256, "ok")]
  summary = json.load(open(out + "summary.json"))
  assert summary["points"] == points
  md = open(out + "summary.md").read()
  for p in points:
    assert f"| intra_pair_variance | {p['impl']} | 256 | {p['seconds']:.3f} |" in md
  ratio = points[1]["seconds"] / points[0]["seconds"]
  assert f"| intra_pair_variance | 256 | {points[0]['seconds']:.3f} | - | " \
         f"{points[1]['seconds']:.3f} | {ratio:.1f}x |" in md
  subprocess.run(cmd + ["--resume"], check=True, env=env,
                 capture_output=True, timeout=900)
  assert ls.read_jsonl(out + "points.jsonl") == points


def test_docs_table_rows():
  points = [{"loss": "nca", "impl": "dense", "n": 4096, "status": "ok", "seconds": 0.5},
            {"loss": "nca", "impl": "streaming", "n": 4096, "status": "ok", "seconds": 0.25},
            {"loss": "nca", "impl": "pml", "n": 4096, "status": "ok", "seconds": 2.0},
            {"loss": "pnp", "impl": "dense", "n": 2048, "status": "over RSS cap"}]
  largest = [{"loss": "nca", "impl": "dense", "largest_n": 42752, "budget_gib": 24.0},
             {"loss": "pnp", "impl": "dense", "largest_n": 1024, "budget_gib": 24.0}]
  table = ls.docs_table(points, largest, 4096).splitlines()
  assert table[2] == ("| `nca` | 42,752 / not run | 0.500 | 0.250 | 2.000 | 8.0x | "
                      "4096 / 4096 / 4096 |")
  assert table[3] == ("| `pnp` | 1,024 / - | stopped at N = 2048: over RSS cap | - | not reached "
                      "| - | none / - / none |")


def test_output_paths_prefix_and_folder(tmp_path):
  prefix = ls.output_paths(str(tmp_path / "x"))
  assert (prefix["points"], prefix["md"]) == (str(tmp_path / "x.jsonl"), str(tmp_path / "x.md"))
  folder = ls.output_paths(str(tmp_path / "d") + "/")
  assert folder["points"] == str(tmp_path / "d" / "points.jsonl") and (tmp_path / "d").is_dir()


def test_embedding_size_reaches_the_compiled_shapes():
  """--d sets the embedding size of a point: the input and its gradient, [N, d] float32 each,
  grow XLA's argument + output bytes by 2 * N * 4 per extra column (a closed form)."""
  n = 256
  small, large = (ls.run_point("nt_xent", "streaming", n, 128, 1, 2**30, compile_only=True, d=d)
                  for d in (32, 64))
  assert (small["d"], large["d"]) == (32, 64)
  assert large["xla_total_bytes"] - small["xla_total_bytes"] >= 2 * n * (64 - 32) * 4
