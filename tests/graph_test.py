"""sim_jax.graph: relation graphs against hand-written edges, the GCN against dense NumPy
message passing, and the evaluation protocol on a toy problem."""

import numpy as np
import pytest

from sim_jax.eval.evaluators import RetrievalEvaluator
from sim_jax.graph import config as graph_config
from sim_jax.graph import evaluate as graph_eval
from sim_jax.graph import gnn, relations

NAMES = ["folder", "folder-music", "folder-music-open", "audio-x-generic", "audio-volume-high",
         "edit-copy", "audio", "go-next"]


def _pairs(edges):
  return {tuple(int(v) for v in e) for e in edges}


def test_parent_edges_are_the_hand_written_ones():
  # folder-music -> folder; folder-music-open -> folder-music (nearest, not folder);
  # audio-x-generic -> audio; audio-volume-high -> audio (via "audio", "audio-volume" absent).
  assert _pairs(relations.parent_edges(NAMES)) == {(0, 1), (1, 2), (3, 6), (4, 6)}


def test_token_edges_are_the_hand_written_ones():
  folder = {(0, 1), (0, 2), (1, 2)}
  audio = {(3, 4), (3, 6), (4, 6)}
  assert _pairs(relations.token_edges(NAMES)) == folder | audio
  assert _pairs(relations.name_edges(NAMES)) == folder | audio  # parent edges are token edges


def test_bad_names_and_relations_are_named():
  with pytest.raises(ValueError, match="folder--x"):
    relations.name_edges(["folder--x"])
  with pytest.raises(ValueError, match="repeated"):
    relations.name_edges(["a", "a"])
  with pytest.raises(ValueError, match="cousin"):
    relations.name_edges(NAMES, ("cousin",))
  with pytest.raises(ValueError, match="eval.graph.relations"):
    graph_eval.parse_relations("knn,cousin")


def test_lift_to_examples_joins_related_classes_only():
  labels = [0, 1, 1, 2, 0]
  # Class edge 0-1: examples {0, 4} x {1, 2}; never two drawings of one class (0-4, 1-2).
  assert _pairs(relations.lift_to_examples(labels, [[0, 1]])) == {(0, 1), (0, 2), (1, 4), (2, 4)}


def test_knn_edges_match_a_loop():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(9, 4))
  k = 2
  want = set()
  for i in range(len(x)):
    sims = [(-np.dot(x[i], x[j]) / np.linalg.norm(x[i]) / np.linalg.norm(x[j]), j)
            for j in range(len(x)) if j != i]
    for _, j in sorted(sims)[:k]:
      want.add((min(i, j), max(i, j)))
  assert _pairs(relations.knn_edges(x, k)) == want
  with pytest.raises(ValueError, match="k must be"):
    relations.knn_edges(x, 9)


def test_normalized_adjacency_matches_the_formula():
  adj = relations.normalized_adjacency(4, [[0, 1], [1, 2]])
  a = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], float)
  deg = a.sum(1)
  np.testing.assert_allclose(adj, a / np.sqrt(np.outer(deg, deg)), rtol=1e-6)


def _numpy_refiner(params, adj, x):
  """Dense message passing written out per node: m_i = sum_j A_hat[i, j] h_j."""
  def layer(p, h):
    n = len(h)
    agg = np.stack([sum(adj[i, j] * h[j] for j in range(n)) for i in range(n)])
    return agg @ np.asarray(p["dense"]["kernel"]) + np.asarray(p["dense"]["bias"])
  h = np.maximum(layer(params["gcn1"], x), 0.0)
  z = x + layer(params["gcn2"], h)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_gcn_refiner_equals_dense_numpy_message_passing():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  adj = relations.normalized_adjacency(6, [[0, 1], [1, 2], [3, 4], [0, 5]])
  labels = np.array([0, 0, 1, 1, 2, 2])
  params, losses = gnn.fit_refiner(adj, x, labels, hidden=7, steps=3, learning_rate=0.05)
  assert np.abs(np.asarray(params["gcn2"]["dense"]["kernel"])).max() > 0  # trained past init
  np.testing.assert_allclose(gnn.refine(params, adj, x, hidden=7),
                             _numpy_refiner(params, adj, x), rtol=1e-4, atol=1e-5)
  assert losses.shape == (3,) and losses[-1] < losses[0]


def test_untrained_refiner_returns_the_normalised_input():
  x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
  adj = relations.normalized_adjacency(4, [[0, 1]])
  params, _ = gnn.fit_refiner(adj, x, np.arange(4), hidden=4, steps=0)
  np.testing.assert_allclose(gnn.refine(params, adj, x, hidden=4),
                             x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)


def test_graph_refined_protocol_improves_noisy_clusters():
  # Classes are tight clusters blurred by noise; neighbours average the noise away, so
  # retrieval on held-out classes must not get worse, and the names must never be read there.
  rng = np.random.default_rng(3)
  def split(num_classes, per_class, offset):
    centers = rng.normal(size=(num_classes, 8))
    y = np.repeat(np.arange(num_classes), per_class)
    return (centers[y] + 0.9 * rng.normal(size=(len(y), 8))).astype(np.float32), y + offset
  xt, yt = split(6, 8, 0)
  xh, yh = split(4, 8, 6)
  names = ["a", "a-b", "c", "c-d", "e", "f", "g", "h", "i", "j"]
  inner = (RetrievalEvaluator("heldout", "", (1,), "euclidean", 4096, 4096),)
  ev = graph_eval.GraphRefined(inner, ("knn", "parent"), tuple(names), k=4, hidden=16,
                               steps=40, learning_rate=0.02)
  emb, lab = {"train": xt, "heldout": xh}, {"train": yt, "heldout": yh}
  plain = inner[0](emb, lab)["retrieval/map@r"]
  out = ev(emb, lab)
  assert out["retrieval/map@r"] >= plain
  assert out["graph/fit_loss_last"] < out["graph/fit_loss_first"]
  assert ev.splits == ("train", "heldout")


def test_fit_edges_are_the_union_of_knn_and_lifted_names():
  x = np.array([[1, 0], [0, 1], [-1, 0], [1, 0.1]])
  # 1-NN by cosine: 0 -> 3, 1 -> 3, 2 -> 1, 3 -> 0; names: class 1 ("a-b") -> class 0 ("a").
  got = graph_eval.fit_edges(x, [0, 1, 2, 0], ["a", "a-b", "c"], ("knn", "parent"), k=1)
  assert _pairs(got) == {(0, 3), (1, 3), (1, 2)} | {(0, 1), (1, 3)}
  assert _pairs(graph_eval.apply_edges(x, ("parent",), k=1)) == set()  # names never at apply


def test_maybe_refine_wraps_only_when_relations_are_set():
  inner = [RetrievalEvaluator("test", "", (1,), "euclidean", 4096, 4096)]
  c = graph_config.default_config()
  assert graph_eval.maybe_refine(inner, c, ["a"]) is inner
  c.relations = "knn,token"
  (wrapped,) = graph_eval.maybe_refine(inner, c, ["a"])
  assert wrapped.relations == ("knn", "token") and wrapped.splits == ("train", "test")
