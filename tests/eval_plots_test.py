"""Plots: PNGs are written and the data behind them is checked against independent computations."""

import numpy as np
import pytest
from PIL import Image

from sim_jax.eval import plots


def test_tsne_keeps_separated_clusters_apart(tmp_path):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 20)
  x = rng.standard_normal((60, 16)) + 20 * np.eye(16)[y]
  xy = plots.tsne_plot(x, y, str(tmp_path / "tsne.png"), perplexity=10, max_iter=400)
  assert xy.shape == (60, 2)
  # 1-NN in the 2-D map recovers every label (brute force).
  d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  assert np.all(y[np.argmin(d, 1)] == y)
  assert Image.open(tmp_path / "tsne.png").size[0] > 100


def test_retrieval_grid_borders_mark_correct_and_wrong():
  q = np.zeros((2, 4, 4), np.uint8)
  g = np.full((3, 4, 4, 1), 0.5, np.float32)
  img = plots.retrieval_grid_image(q, g, np.array([[0, 1], [2, 0]]), np.array([7, 8]),
                                   np.array([7, 8, 8]), border=2, gap=4)
  tile_h, tile_w = 4 + 4 + 4, 4 + 4 + 4
  assert img.shape == (2 * tile_h, 3 * tile_w, 3)
  def corner(r, c):
    return tuple(img[r * tile_h, c * tile_w])
  assert corner(0, 0) == plots.BLUE
  assert corner(0, 1) == plots.GREEN and corner(0, 2) == plots.RED
  assert corner(1, 1) == plots.GREEN and corner(1, 2) == plots.RED
  assert tuple(img[2, tile_w + 2]) == (128, 128, 128)  # 0.5 -> 128 inside the frame
  unlabelled = plots.retrieval_grid_image(q, g, np.array([[0, 1], [2, 0]]))
  assert tuple(unlabelled[0, tile_w]) == plots.GREY


def test_save_retrieval_grid_png(tmp_path):
  q = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3)).astype(np.uint8)
  p = tmp_path / "strip.png"
  plots.save_retrieval_grid(str(p), q, q, np.array([[0]]), scores=np.array([[0.25]]))
  assert Image.open(p).size[0] >= 2 * 8 * 3


def test_training_curves_from_event_dir(tmp_path):
  from clu import metric_writers
  w = metric_writers.SummaryWriter(str(tmp_path / "ev"))
  for step in range(1, 4):
    w.write_scalars(step, {"loss": 1.0 / step, "retrieval/mrr@5": 0.1 * step})
  w.flush()
  w.close()
  series = plots.training_curves(str(tmp_path / "ev"), str(tmp_path / "curves.png"))
  assert series["loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
  assert [s for s, _ in series["retrieval/mrr@5"]] == [1, 2, 3]
  plots.training_curves({"a": [(0, 1.0), (1, 2.0)]}, str(tmp_path / "c2.png"))
  with pytest.raises(ValueError, match="not found"):
    plots.training_curves({"a": [(0, 1.0)]}, str(tmp_path / "c3.png"), tags=["b"])


def test_distance_histogram_counts(tmp_path):
  rng = np.random.default_rng(1)
  pos, neg = rng.random(100) * 0.5, 0.3 + rng.random(80)
  edges, pc, nc = plots.distance_histogram(pos, neg, str(tmp_path / "h.png"), bins=10)
  ref_edges = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()), 11)
  np.testing.assert_allclose(edges, ref_edges)
  ref_pc = [np.sum((pos >= a) & ((pos < b) | (i == 9) & (pos <= b)))
            for i, (a, b) in enumerate(zip(ref_edges[:-1], ref_edges[1:]))]
  np.testing.assert_array_equal(pc, ref_pc)
  assert pc.sum() == 100 and nc.sum() == 80
  with pytest.raises(ValueError, match="need positive and negative"):
    plots.distance_histogram([], neg, str(tmp_path / "x.png"))
