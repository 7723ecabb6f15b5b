"""Evaluation plots saved as PNG (matplotlib, Agg backend: no display needed).

  tsne_plot             t-SNE (sklearn.manifold.TSNE) of embeddings coloured by class (seed 004)
  retrieval_grid_image  query (blue frame) + top-k gallery images per row; a frame marks
                        each match green (same label) or red (different), grey when unlabelled
  save_retrieval_grid   the same, written as a PNG (also the `--mode=search` strip: one row)
  read_scalars          (step, value) series from a TensorBoard event directory (CLU writers)
  training_curves       one panel per series, from an event directory or {name: [(step, value)]}
  distance_histogram    histograms of positive vs negative pair distances
  write_run_plots       the trainer's end-of-run PNGs: curves, t-SNE, retrieval grid, distances
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: the trainer and tests run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from sim_jax.eval import search  # noqa: E402

GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (160, 160, 160)
BLUE = (0, 90, 200)


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def tsne_plot(embeddings, labels, path: str, *, perplexity: float = 30.0, seed: int = 0,
              max_points: int = 3000, max_iter: int = 1000,
              title: str = "t-SNE of embeddings") -> np.ndarray:
  """Saves a t-SNE scatter coloured by label; returns the 2-D coordinates [n, 2].

  At most `max_points` rows are used (a seeded random subset: t-SNE is O(n log n) per step and
  slow on 2 cores); `max_iter` (>= 250) is sklearn's optimisation budget. perplexity is clipped
  to (n - 1) / 3 so small sets work (sklearn requires perplexity < n).
  """
  x = np.asarray(embeddings, np.float32)
  y = np.asarray(labels)
  if x.ndim != 2 or x.shape[0] < 3 or y.shape != (x.shape[0],):
    raise ValueError(f"tsne_plot needs embeddings [N >= 3, D] and labels [N]; got {x.shape} and "
                     f"{y.shape}.")
  if x.shape[0] > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
    x, y = x[keep], y[keep]
  perp = float(min(perplexity, max((x.shape[0] - 1) / 3.0, 1.0)))
  xy = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca",
            max_iter=max_iter).fit_transform(x)
  fig, ax = plt.subplots(figsize=(7, 6))
  classes = np.unique(y)
  cmap = plt.get_cmap("tab20" if classes.size > 10 else "tab10")
  for n, c in enumerate(classes):
    m = y == c
    ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(n % cmap.N), label=str(c))
  if classes.size <= 20:
    ax.legend(markerscale=2, fontsize=7, loc="best", title="class")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  _save(fig, path)
  return xy


def _to_uint8_rgb(images) -> np.ndarray:
  """[N, H, W] or [N, H, W, 1|3] uint8 or float in [0, 1] -> uint8 [N, H, W, 3]."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W], [N, H, W, 1] or [N, H, W, 3], got {x.shape}.")
  if x.dtype != np.uint8:
    x = np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x


def retrieval_grid_image(query_images, gallery_images, neighbors, query_labels=None,
                         gallery_labels=None, *, border: int = 2, gap: int = 4) -> np.ndarray:
  """uint8 [Q*(h + gap), (k + 1)*(w + gap), 3]: row q = query q, then its k neighbours.

  Each tile is the image inside a `border`-pixel frame: the query's is blue, a neighbour's green
  if its label equals the query's, red if not, grey if labels are not given. Tiles are separated by
  `gap` white pixels (right and bottom).
  """
  qi = _to_uint8_rgb(query_images)
  gi = _to_uint8_rgb(gallery_images)
  nb = np.asarray(neighbors)
  if nb.ndim != 2 or nb.shape[0] != qi.shape[0]:
    raise ValueError(f"neighbors must be [Q={qi.shape[0]}, k], got {nb.shape}.")
  if nb.size and (nb.min() < 0 or nb.max() >= gi.shape[0]):
    raise ValueError(f"neighbors index outside the gallery of {gi.shape[0]} images: "
                     f"[{nb.min()}, {nb.max()}].")
  if qi.shape[1:] != gi.shape[1:]:
    raise ValueError(f"query images {qi.shape[1:]} and gallery images {gi.shape[1:]} differ.")
  labelled = query_labels is not None and gallery_labels is not None
  h, w = qi.shape[1] + 2 * border, qi.shape[2] + 2 * border
  th, tw = h + gap, w + gap
  out = np.full((nb.shape[0] * th, (nb.shape[1] + 1) * tw, 3), 255, np.uint8)
  for r in range(nb.shape[0]):
    tiles = [(qi[r], BLUE)]
    for j in nb[r]:
      colour = GREY
      if labelled:
        colour = GREEN if gallery_labels[j] == query_labels[r] else RED
      tiles.append((gi[j], colour))
    for c, (img, colour) in enumerate(tiles):
      y0, x0 = r * th, c * tw
      out[y0:y0 + h, x0:x0 + w] = colour
      out[y0 + border:y0 + h - border, x0 + border:x0 + w - border] = img
  return out


def save_retrieval_grid(path: str, query_images, gallery_images, neighbors, query_labels=None,
                        gallery_labels=None, *, scores=None, scale: int = 3) -> np.ndarray:
  """Writes `retrieval_grid_image(...)` (upscaled `scale`x, nearest) as a PNG; returns the image.

  `scores` [Q, k] (distances or similarities), if given, are printed under the grid row by row.
  """
  img = retrieval_grid_image(query_images, gallery_images, neighbors, query_labels,
                             gallery_labels)
  big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
  fig = plt.figure(figsize=(big.shape[1] / 100, big.shape[0] / 100 + (0.25 if scores is not None
                                                                      else 0)))
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(big, interpolation="nearest")
  ax.axis("off")
  if scores is not None:
    text = "\n".join(f"query {r}: " + "  ".join(f"{v:.3f}" for v in row)
                     for r, row in enumerate(np.asarray(scores)))
    fig.text(0.0, -0.02, text, fontsize=7, va="top", family="monospace")
  _save(fig, path)
  return img


def read_scalars(event_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from TensorBoard event files (scalars and scalar tensors)."""
  if not os.path.isdir(event_dir):
    raise ValueError(f"event_dir={event_dir!r} is not a directory.")
  acc = event_accumulator.EventAccumulator(event_dir, size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  out: dict[str, list[tuple[int, float]]] = {}
  for tag in acc.Tags().get("scalars", []):
    out[tag] = [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
  for tag in acc.Tags().get("tensors", []):  # TF2 / CLU writers store scalars as tensors
    vals = [(int(e.step), tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    if vals and all(np.ndim(v) == 0 for _, v in vals):
      out[tag] = [(s, float(v)) for s, v in vals]
  return out


def training_curves(source, path: str, *, tags=None) -> dict[str, list[tuple[int, float]]]:
  """Plots one panel per series; `source` is an event dir or {name: [(step, value), ...]}.

  `tags` (optional) selects and orders the series. Returns the plotted series.
  """
  series = read_scalars(source) if isinstance(source, (str, os.PathLike)) else dict(source)
  if tags is not None:
    missing = [t for t in tags if t not in series]
    if missing:
      raise ValueError(f"tags {missing} not found; available: {sorted(series)}.")
    series = {t: series[t] for t in tags}
  if not series:
    raise ValueError(f"no scalar series to plot in {source!r}.")
  n = len(series)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  for ax, (name, pts) in zip(axes.flat, series.items()):
    pts = sorted(pts)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.tight_layout()
  _save(fig, path)
  return series


def distance_histogram(pos_distances, neg_distances, path: str, *, bins: int = 50,
                       title: str = "pair distances") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Overlaid histograms of positive- and negative-pair distances on shared bins.

  Returns (edges [bins + 1], pos_counts [bins], neg_counts [bins]) as np.histogram computes them
  over the common range [min, max] of both sets.
  """
  pos = np.asarray(pos_distances, np.float64).ravel()
  neg = np.asarray(neg_distances, np.float64).ravel()
  if pos.size == 0 or neg.size == 0:
    raise ValueError(f"need positive and negative distances, got {pos.size} and {neg.size}.")
  lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
  edges = np.histogram_bin_edges(np.r_[lo, hi], bins=bins)
  pc, _ = np.histogram(pos, edges)
  nc, _ = np.histogram(neg, edges)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.hist(pos, edges, alpha=0.6, color="tab:green", label=f"positive ({pos.size})")
  ax.hist(neg, edges, alpha=0.6, color="tab:red", label=f"negative ({neg.size})")
  ax.set_xlabel("distance")
  ax.set_ylabel("pairs")
  ax.set_title(title)
  ax.legend()
  _save(fig, path)
  return edges, pc, nc


def _worth_plotting(tag: str, points) -> bool:
  # Counts (num_queries, ...), bookkeeping (uptime) and constant series only add panels.
  values = {round(v, 12) for _, v in points}
  return len(values) > 1 and "/num_" not in tag and tag not in ("uptime",)


def write_run_plots(workdir: str, config, eval_data: dict, embeddings: dict) -> list[str]:
  """PNGs a person would rather look at, in `<workdir>/plots`: training curves (from the run's
  events), t-SNE of the 20 largest classes, a retrieval grid and pair distances of the query
  split. Returns the file names written."""
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  series = {k: v for k, v in read_scalars(workdir).items() if _worth_plotting(k, v)}
  if series:
    training_curves(series, os.path.join(out_dir, "training_curves.png"))
    written.append("training_curves.png")
  split = config.eval.query_split if config.eval.query_split in embeddings else \
      next(iter(embeddings))
  emb, labels, images = embeddings[split], eval_data[split]["label"], eval_data[split]["image"]
  # t-SNE of the 20 most frequent classes: more colours than that are unreadable.
  classes, counts = np.unique(labels, return_counts=True)
  shown = classes[np.argsort(-counts, kind="stable")[:20]]
  keep = np.isin(labels, shown)
  tsne_plot(emb[keep], labels[keep], os.path.join(out_dir, f"tsne_{split}.png"),
            max_points=1500,
            title=f"t-SNE of {config.data.name}/{split} ({len(shown)} classes)")
  written.append(f"tsne_{split}.png")
  nq = min(8, len(emb) - 1)
  k = min(6, len(emb) - 1)
  _, idx = search.topk(emb[:nq], emb, k + 1, metric=config.eval.metric)
  idx = np.stack([row[row != i][:k] for i, row in enumerate(idx)])  # Drop the query itself.
  save_retrieval_grid(os.path.join(out_dir, f"retrieval_{split}.png"), images[:nq], images,
                      idx, labels[:nq], labels)
  written.append(f"retrieval_{split}.png")
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, len(emb), (2, 20000))
  same, distinct = labels[a] == labels[b], a != b
  d = np.linalg.norm(emb[a] - emb[b], axis=1)
  distance_histogram(d[same & distinct], d[~same], os.path.join(out_dir, "distances.png"),
                     title=f"Euclidean distances, {config.data.name}/{split}")
  written.append("distances.png")
  logging.info("Plots written to %s: %s", out_dir, ", ".join(written))
  return written
