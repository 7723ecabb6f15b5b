"""The graphs a GNN refines icon embeddings over: freedesktop name relations and k-NN.

Node sets and edges (every edge list is an int array [E, 2] of undirected pairs i < j, sorted,
without duplicates or self-loops):

- `name_edges(names)`: a graph over CLASS NAMES. The freedesktop icon naming spec names icons
  `<object>-<qualifier>-...` (`folder-music`, `audio-volume-high`), so two relations are read off
  the names alone:
    "parent": `folder-music` -> `folder`: a name and its nearest dash-prefix that is itself a
              name of the list (`a-b-c` -> `a-b` if present, else `a`);
    "token":  names sharing their first dash token (`audio-x-generic` ~ `audio-volume-high`).
  A name that has no dash has no token neighbours except names that extend it (`folder` ~
  `folder-music`). Every parent edge is also a token edge; they are kept apart so that a caller
  can weight them differently.
- `lift_to_examples(labels, class_edges)`: the class graph on EXAMPLES: example i ~ example j
  when their classes are joined by a class edge. Two drawings of one name are never joined by it
  (that would be the label itself).
- `knn_edges(embeddings, k)`: each example joined to its k nearest other examples (cosine
  similarity, ties to the lower index), symmetrised.
- `normalized_adjacency(n, edges)`: the GCN operator  A_hat = D^-1/2 (A + I) D^-1/2  [n, n]
  (Kipf & Welling 2017), dense: the icon splits hold a few thousand nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RELATIONS = ("parent", "token")


def _as_edges(pairs) -> np.ndarray:
  """Pairs (i, j), i != j, as the canonical [E, 2] int64 array: i < j, sorted, unique."""
  pairs = np.asarray(list(pairs), np.int64).reshape(-1, 2)
  pairs = pairs[pairs[:, 0] != pairs[:, 1]]
  pairs = np.sort(pairs, axis=1)
  return np.unique(pairs, axis=0) if len(pairs) else pairs


def _check_names(names: Sequence[str]) -> list[str]:
  names = [str(n) for n in names]
  for n in names:
    if not n or n.startswith("-") or n.endswith("-") or "--" in n:
      raise ValueError(f"icon name {n!r} is not a dash-separated freedesktop name (empty token)")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"class names must be distinct; repeated: {dup[:5]}")
  return names


def parent_edges(names: Sequence[str]) -> np.ndarray:
  """(child, parent) index pairs: each name's nearest dash-prefix that is in `names`."""
  names = _check_names(names)
  index = {n: i for i, n in enumerate(names)}
  pairs = []
  for i, n in enumerate(names):
    tokens = n.split("-")
    for cut in range(len(tokens) - 1, 0, -1):  # the nearest ancestor first
      prefix = "-".join(tokens[:cut])
      if prefix in index:
        pairs.append((i, index[prefix]))
        break
  return _as_edges(pairs)


def token_edges(names: Sequence[str]) -> np.ndarray:
  """Every pair of distinct names with the same first dash token."""
  names = _check_names(names)
  groups: dict[str, list[int]] = {}
  for i, n in enumerate(names):
    groups.setdefault(n.split("-")[0], []).append(i)
  return _as_edges((a, b) for g in groups.values() for x, a in enumerate(g) for b in g[x + 1:])


def name_edges(names: Sequence[str], relations: Sequence[str] = RELATIONS) -> np.ndarray:
  """The union of the `relations` ("parent", "token") over class names [E, 2]."""
  unknown = [r for r in relations if r not in RELATIONS]
  if unknown:
    raise ValueError(f"unknown name relation(s) {unknown}; choose from {RELATIONS}")
  makers = {"parent": parent_edges, "token": token_edges}
  parts = [makers[r](names) for r in relations]
  return _as_edges(np.concatenate(parts)) if parts else _as_edges([])


def lift_to_examples(labels, class_edges) -> np.ndarray:
  """Example edges [E, 2]: i ~ j when (labels[i], labels[j]) is a class edge (either order)."""
  labels = np.asarray(labels, np.int64)
  class_edges = np.asarray(class_edges, np.int64).reshape(-1, 2)
  num_classes = int(max(labels.max(initial=-1), class_edges.max(initial=-1))) + 1
  related = np.zeros((num_classes, num_classes), bool)
  related[class_edges[:, 0], class_edges[:, 1]] = True
  related |= related.T
  i, j = np.nonzero(np.triu(related[labels][:, labels], k=1))
  return _as_edges(np.stack([i, j], axis=1))


def knn_edges(embeddings, k: int) -> np.ndarray:
  """Each row joined to its k most cosine-similar other rows, symmetrised [E, 2]."""
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2:
    raise ValueError(f"knn_edges expects embeddings [N, D]; got shape {x.shape}")
  if not 0 < k < len(x):
    raise ValueError(f"knn_edges k must be in [1, N - 1] = [1, {len(x) - 1}]; got {k}")
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)
  # A stable sort on -sim keeps the lower index first among equal similarities.
  nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
  return _as_edges(np.stack([np.repeat(np.arange(len(x)), k), nearest.ravel()], axis=1))


def normalized_adjacency(n: int, edges) -> np.ndarray:
  """D^-1/2 (A + I) D^-1/2 as float32 [n, n]; A symmetric 0/1 from `edges`."""
  edges = np.asarray(edges, np.int64).reshape(-1, 2)
  if len(edges) and (edges.min() < 0 or edges.max() >= n):
    raise ValueError(f"edge index out of range for {n} nodes: {edges.min()}..{edges.max()}")
  a = np.eye(n)
  a[edges[:, 0], edges[:, 1]] = 1.0
  a[edges[:, 1], edges[:, 0]] = 1.0
  d = 1.0 / np.sqrt(a.sum(axis=1))
  return (a * d[:, None] * d[None, :]).astype(np.float32)
