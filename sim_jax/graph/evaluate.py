"""The GNN refinement on the evaluation protocol: `--mode=evaluate` with `eval.graph.relations`.

Protocol (inductive, no name of an evaluated icon is ever read):
1. Fit: the GCN (`gnn.GraphRefiner`) is trained on `eval.graph.fit_split` (the train split: its
   class names are training labels) over the union of the configured relations: the k-NN graph
   of its embeddings ("knn") and the freedesktop name relations ("parent", "token") of its
   classes lifted to examples (`relations.lift_to_examples`), with SupCon on its labels.
2. Apply: every split the protocols read (the fit split included, so a verification threshold
   fit on train pairs sees refined vectors too) is refined over ITS OWN k-NN graph only. Names
   are the labels of the evaluated icons, so a name graph there would leak the answer; the k-NN
   graph is built from the embeddings alone, as a deployed model could.
3. The configured protocols (retrieval, verification, ...) score the refined embeddings under
   their usual names, so a GNN row and a plain row of an ablation table compare directly; chance
   and the floors stay those of the plain protocol. Three diagnostics are added:
   `graph/fit_loss_first`, `graph/fit_loss_last` (SupCon before / after the fit) and
   `graph/fit_degree` (mean neighbours per fit node).
With "knn" absent, the fit graph holds name edges only and evaluated splits have no edges
(A_hat = I): the GCN then acts as a per-node map trained through name neighbourhoods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sim_jax.eval.evaluators import run_evaluators
from sim_jax.graph import gnn, relations

GRAPH_RELATIONS = ("knn", *relations.RELATIONS)


def parse_relations(text: str) -> tuple[str, ...]:
  """"knn,parent" -> ("knn", "parent"); "none" or "" -> () (no GNN)."""
  names = tuple(t.strip() for t in str(text).split(",") if t.strip())
  if names in ((), ("none",)):
    return ()
  bad = [n for n in names if n not in GRAPH_RELATIONS]
  if bad or len(set(names)) != len(names):
    raise ValueError(f"eval.graph.relations={text!r}: expected 'none' or distinct names from "
                     f"{GRAPH_RELATIONS}, comma-separated")
  return names


def fit_edges(x, labels, class_names: Sequence[str], rels: Sequence[str], k: int) -> np.ndarray:
  """The fit graph's example edges [E, 2]: k-NN and / or lifted name relations."""
  parts = [np.zeros((0, 2), np.int64)]
  if "knn" in rels:
    parts.append(relations.knn_edges(x, min(k, len(x) - 1)))
  name_rels = [r for r in rels if r in relations.RELATIONS]
  if name_rels:
    labels = np.asarray(labels)
    if len(class_names) <= labels.max():
      raise ValueError(f"eval.graph.relations={','.join(rels)!r} reads class names, but the "
                       f"dataset names {len(class_names)} classes and the labels reach "
                       f"{labels.max()}")
    class_edges = relations.name_edges(class_names, name_rels)
    parts.append(relations.lift_to_examples(labels, class_edges))
  return np.unique(np.concatenate(parts), axis=0)


def apply_edges(x, rels: Sequence[str], k: int) -> np.ndarray:
  """An evaluated split's edges: its k-NN graph when "knn" is configured, else none."""
  if "knn" not in rels or len(x) < 2:
    return np.zeros((0, 2), np.int64)
  return relations.knn_edges(x, min(k, len(x) - 1))


@dataclasses.dataclass(frozen=True)
class GraphRefined:
  """Runs `inner` evaluators on GNN-refined embeddings (see the module docstring)."""
  inner: tuple
  relations: tuple[str, ...]
  class_names: tuple[str, ...]
  fit_split: str = "train"
  k: int = 10
  hidden: int = 128
  steps: int = 200
  learning_rate: float = 1e-2
  temperature: float = 0.1
  seed: int = 0
  name: str = "graph"

  @property
  def splits(self):
    return tuple(dict.fromkeys([self.fit_split, *(s for ev in self.inner for s in ev.splits)]))

  def _adjacency(self, n: int, edges) -> np.ndarray:
    return relations.normalized_adjacency(n, edges)

  def __call__(self, embeddings, labels) -> dict[str, float]:
    if self.fit_split not in embeddings:
      raise ValueError(f"eval.graph.fit_split={self.fit_split!r} is not an evaluated split; "
                       f"available: {sorted(embeddings)} (add it to data.eval_splits)")
    x, y = np.asarray(embeddings[self.fit_split]), np.asarray(labels[self.fit_split])
    edges = fit_edges(x, y, self.class_names, self.relations, self.k)
    params, losses = gnn.fit_refiner(
        self._adjacency(len(x), edges), x, y, hidden=self.hidden, steps=self.steps,
        learning_rate=self.learning_rate, temperature=self.temperature, seed=self.seed)
    refined = {}
    for split, e in embeddings.items():
      e = np.asarray(e)
      adj = self._adjacency(len(e), apply_edges(e, self.relations, self.k))
      refined[split] = gnn.refine(params, adj, e, self.hidden)
    out = run_evaluators(self.inner, refined, labels)
    out.update({"graph/fit_loss_first": float(losses[0]) if len(losses) else float("nan"),
                "graph/fit_loss_last": float(losses[-1]) if len(losses) else float("nan"),
                "graph/fit_degree": 2.0 * len(edges) / len(x)})
    return out


def maybe_refine(evaluators: list, graph_config, class_names: Sequence[str]) -> list:
  """`evaluators` unchanged when `graph_config.relations` is "none", else one `GraphRefined`."""
  rels = parse_relations(graph_config.relations)
  if not rels:
    return evaluators
  c = graph_config
  return [GraphRefined(tuple(evaluators), rels, tuple(str(n) for n in class_names),
                       str(c.fit_split), int(c.k), int(c.hidden), int(c.steps),
                       float(c.learning_rate), float(c.temperature), int(c.seed))]
