"""Evaluation plots saved as PNG (matplotlib, Agg backend: no display needed).

  tsne_plot             t-SNE (sklearn.manifold.TSNE) of embeddings coloured by class (seed 004)
  umap_plot             the same with UMAP (optional extra `umap`: `pip install sim_jax[umap]`)
  retrieval_grid_image  query (blue frame) + top-k gallery images per row; a frame marks
                        each match green (same label) or red (different), grey when unlabelled
  save_retrieval_grid   the same, written as a PNG with a legend and the class names per row
                        (also the `--mode=search` strip: one row)
  read_scalars          (step, value) series from a TensorBoard event directory (CLU writers)
  training_curves       one panel per series, from an event directory or {name: [(step, value)]}
  distance_histogram    histograms of positive vs negative pair distances
  roc_plot              verification ROC curve (log FAR axis) with its TAR@FAR table
  per_class_plot        per-class retrieval precision@1, worst classes first
  write_run_plots       the trainer's end-of-run PNGs (curves, t-SNE [+ UMAP], retrieval grid,
                        distances, ROC, per-class) and `tables.md` (TAR@FAR, per-class)

Class names: functions take `class_names` (label i -> name i, e.g. `sim_jax.data.names.
display_names(info.class_names)`); an empty tuple falls back to the integer labels.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import matplotlib

matplotlib.use("Agg")  # headless: the trainer and tests run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402  (a scikit-learn dependency)
from absl import logging  # noqa: E402
from sklearn import metrics as sk_metrics  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from sim_jax.data import names as names_lib  # noqa: E402
from sim_jax.eval import analysis, search, verification  # noqa: E402

# Optional extra (pip install 'sim_jax[umap]'): without umap-learn the UMAP plot is skipped.
umap = importlib.import_module("umap") if importlib.util.find_spec("umap") else None

GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (160, 160, 160)
BLUE = (0, 90, 200)


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def _subset(x, y, max_points: int, seed: int):
  if x.ndim != 2 or x.shape[0] < 3 or y.shape != (x.shape[0],):
    raise ValueError(f"a 2-D map needs embeddings [N >= 3, D] and labels [N]; got {x.shape} and "
                     f"{y.shape}.")
  if x.shape[0] > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
    x, y = x[keep], y[keep]
  return x, y


def _scatter(xy, y, path: str, title: str, class_names=()) -> None:
  """2-D points coloured by class; the legend (<= 20 classes) names each class."""
  fig, ax = plt.subplots(figsize=(7, 6))
  classes = np.unique(y)
  cmap = plt.get_cmap("tab20" if classes.size > 10 else "tab10")
  shown = names_lib.label_names(classes, class_names)
  for n, (c, name) in enumerate(zip(classes, shown)):
    m = y == c
    ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(n % cmap.N), label=name)
  if classes.size <= 20:
    ax.legend(markerscale=2, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              title="class")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  _save(fig, path)


def tsne_plot(embeddings, labels, path: str, *, perplexity: float = 30.0, seed: int = 0,
              max_points: int = 3000, max_iter: int = 1000,
              title: str = "t-SNE of embeddings", class_names=()) -> np.ndarray:
  """Saves a t-SNE scatter coloured by label; returns the 2-D coordinates [n, 2].

  At most `max_points` rows are used (a seeded random subset: t-SNE is O(n log n) per step and
  slow on 2 cores); `max_iter` (>= 250) is sklearn's optimisation budget. perplexity is clipped
  to (n - 1) / 3 so small sets work (sklearn requires perplexity < n).
  """
  x, y = _subset(np.asarray(embeddings, np.float32), np.asarray(labels), max_points, seed)
  perp = float(min(perplexity, max((x.shape[0] - 1) / 3.0, 1.0)))
  # One OpenMP thread: sklearn's Barnes-Hut gradient spins its threads, and on a small busy host
  # 36 points took 10 s with the default pool against 0.3 s with one thread.
  with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    xy = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca",
              max_iter=max_iter).fit_transform(x)
  _scatter(xy, y, path, title, class_names)
  return xy


def umap_plot(embeddings, labels, path: str, *, seed: int = 0, max_points: int = 3000,
              title: str = "UMAP of embeddings", class_names=()) -> np.ndarray:
  """Saves a UMAP (umap-learn, n_neighbors = min(15, n - 1)) scatter coloured by label; returns
  the 2-D coordinates. Raises ImportError naming the extra when umap-learn is not installed."""
  if umap is None:
    raise ImportError("umap_plot needs umap-learn: pip install 'sim_jax[umap]'")
  x, y = _subset(np.asarray(embeddings, np.float32), np.asarray(labels), max_points, seed)
  xy = umap.UMAP(n_components=2, n_neighbors=int(min(15, x.shape[0] - 1)),
                 random_state=seed).fit_transform(x)
  _scatter(np.asarray(xy), y, path, title, class_names)
  return np.asarray(xy)


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
                        gallery_labels=None, *, scores=None, scale: int = 3,
                        class_names=()) -> np.ndarray:
  """Writes `retrieval_grid_image(...)` (upscaled `scale`x, nearest) as a PNG; returns the image.

  Under the grid: a legend of the frame colours, then one line per row naming the query's class
  and each match's (with its score when `scores` [Q, k] is given: distances or similarities).
  """
  img = retrieval_grid_image(query_images, gallery_images, neighbors, query_labels,
                             gallery_labels)
  big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
  nb = np.asarray(neighbors)
  lines = []
  for r, row in enumerate(nb):
    head = (f"query {r}: {names_lib.label_names([query_labels[r]], class_names)[0]}"
            if query_labels is not None else f"query {r}")
    parts = []
    for c, j in enumerate(row):
      part = names_lib.label_names([gallery_labels[j]], class_names)[0] \
          if gallery_labels is not None else f"#{int(j)}"
      if scores is not None:
        part += f" ({float(np.asarray(scores)[r, c]):.3f})"
      parts.append(part)
    lines.append(f"{head} -> " + ", ".join(parts))
  # The figure is the grid at 100 dpi; legend above it and the names below it are outside the
  # axes and kept by bbox_inches="tight".
  fig = plt.figure(figsize=(big.shape[1] / 100, big.shape[0] / 100))
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(big, interpolation="nearest")
  ax.axis("off")
  frames = [("query", BLUE)] + ([("same class", GREEN), ("other class", RED)]
                                if query_labels is not None and gallery_labels is not None
                                else [("match", GREY)])
  handles = [plt.Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=np.array(c) / 255.0,
                           linewidth=2, label=n) for n, c in frames]
  fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(handles),
             fontsize=7, frameon=False, borderaxespad=0.2)
  fig.text(0.0, -0.02, "\n".join(lines), fontsize=7, va="top", family="monospace")
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
    # Scalar numbers only: text summaries (the config) are 0-d string tensors.
    if vals and all(np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)
                    for _, v in vals):
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


def roc_plot(pos_scores, neg_scores, path: str, *, fars=analysis.FARS,
             title: str = "verification ROC") -> dict[float, tuple[float, float]]:
  """ROC curve (TAR against FAR, log FAR axis) of pair similarities, with the TAR@FAR table of
  `analysis.tar_at_far` printed in the figure; returns that table."""
  pos = np.asarray(pos_scores, np.float64).ravel()
  neg = np.asarray(neg_scores, np.float64).ravel()
  table = analysis.tar_at_far(pos, neg, fars)
  fpr, tpr, _ = sk_metrics.roc_curve(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg])
  fig, ax = plt.subplots(figsize=(6, 4.5))
  floor = 1.0 / neg.size
  ax.plot(np.maximum(fpr, floor), tpr, color="tab:blue",
          label=f"AUC {sk_metrics.auc(fpr, tpr):.4f} ({pos.size} same / {neg.size} different)")
  chance = np.logspace(np.log10(floor), 0, 50)  # TAR = FAR, a curve on the log axis
  ax.plot(chance, chance, color="grey", lw=0.8, ls="--", label="chance")
  ax.set_xscale("log")
  ax.set_xlim(floor, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("false accept rate (FAR)")
  ax.set_ylabel("true accept rate (TAR)")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(loc="lower right", fontsize=8)
  if table:
    text = "TAR@FAR\n" + "\n".join(f"{far:g}: {tar:.4f}" for far, (tar, _) in table.items())
    ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=8, family="monospace",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
  _save(fig, path)
  return table


def per_class_plot(rows: list[dict], path: str, *, class_names=(), worst: int = 20,
                   title: str = "per-class retrieval") -> None:
  """Horizontal bars of precision@1 for the `worst` first rows of
  `analysis.per_class_retrieval` (worst class on top), with the mean over all classes."""
  if not rows:
    raise ValueError("per_class_plot needs at least one class row.")
  shown = rows[:worst]
  names = names_lib.label_names([r["label"] for r in shown], class_names)
  values = [r["precision@1"] for r in shown]
  fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.2))
  ax.barh(np.arange(len(shown)), values, color="tab:orange")
  ax.set_yticks(np.arange(len(shown)), [f"{n} (n={r['count']})" for n, r in zip(names, shown)],
                fontsize=7)
  ax.invert_yaxis()
  mean = float(np.mean([r["precision@1"] for r in rows]))
  ax.axvline(mean, color="black", lw=0.8, ls="--")  # the mean over all classes, in the title
  ax.set_xlim(0, 1)
  ax.set_xlabel("precision@1 (leave-one-out within the split)")
  ax.set_title(f"{title}: the {len(shown)} worst of {len(rows)} classes\n"
               f"(dashed: mean precision@1 {mean:.3f})", fontsize=10)
  _save(fig, path)


def _worth_plotting(tag: str, points) -> bool:
  # Counts (num_queries, ...), bookkeeping (uptime) and constant series only add panels.
  values = {round(v, 12) for _, v in points}
  return len(values) > 1 and "/num_" not in tag and tag not in ("uptime",)


def _grid_queries(labels, n: int) -> np.ndarray:
  """Up to n query rows, the first example of n evenly spaced classes (one class per row)."""
  classes = np.unique(labels)
  picked = classes[np.linspace(0, classes.size - 1, min(n, classes.size)).round().astype(int)]
  return np.asarray([np.flatnonzero(labels == c)[0] for c in np.unique(picked)])


def write_run_plots(workdir: str, config, eval_data: dict, embeddings: dict,
                    class_names=()) -> list[str]:
  """PNGs a person would rather look at, in `<workdir>/plots`, for the query split: training
  curves (from the run's events), t-SNE (and UMAP when installed) of the 20 largest classes, a
  retrieval grid, class-balanced pair distances, the verification ROC, per-class retrieval; and
  `tables.md` (TAR@FAR and the per-class table, worst first). Returns the file names written."""
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
  name = f"{config.data.name}/{split}"
  # The maps show the 20 most frequent classes: more colours than that are unreadable.
  classes, counts = np.unique(labels, return_counts=True)
  shown = classes[np.argsort(-counts, kind="stable")[:20]]
  keep = np.isin(labels, shown)
  tsne_plot(emb[keep], labels[keep], os.path.join(out_dir, f"tsne_{split}.png"),
            max_points=1500, title=f"t-SNE of {name} ({len(shown)} classes)",
            class_names=class_names)
  written.append(f"tsne_{split}.png")
  if umap is not None:
    umap_plot(emb[keep], labels[keep], os.path.join(out_dir, f"umap_{split}.png"),
              max_points=1500, title=f"UMAP of {name} ({len(shown)} classes)",
              class_names=class_names)
    written.append(f"umap_{split}.png")
  # search.topk ranks by cosine / dot / euclidean; the distribution distances (kl, ...) compare
  # softmax_ce's logits, drawn here by their cosine.
  metric = config.eval.metric if config.eval.metric in ("cosine", "dot", "euclidean") else "cosine"
  queries = _grid_queries(labels, 8)
  k = min(6, len(emb) - 1)
  scores, idx = search.topk(emb[queries], emb, k + 1, metric=metric)
  keep_rows = [row != q for q, row in zip(queries, idx)]  # Drop the query itself.
  idx = np.stack([row[m][:k] for row, m in zip(idx, keep_rows)])
  scores = np.stack([row[m][:k] for row, m in zip(scores, keep_rows)])
  save_retrieval_grid(os.path.join(out_dir, f"retrieval_{split}.png"), images[queries], images,
                      idx, labels[queries], labels, scores=scores, class_names=class_names)
  written.append(f"retrieval_{split}.png")
  tables = [f"# {name}: end-of-run tables\n"]
  try:
    a, b, same = analysis.class_balanced_pairs(labels, 20000, seed=0)
  except ValueError as e:  # one class, or only singletons: no pairs to compare
    logging.warning("No distance / ROC plots for %s: %s", name, e)
  else:
    d = np.linalg.norm(emb[a].astype(np.float64) - emb[b], axis=1)
    distance_histogram(d[same], d[~same], os.path.join(out_dir, "distances.png"),
                       title=f"Euclidean distances, {name} (class-balanced pairs)")
    pair_metric = "euclidean" if metric == "euclidean" else "cosine"
    sims = verification.pair_scores(emb[a], emb[b], pair_metric)
    table = roc_plot(sims[same], sims[~same], os.path.join(out_dir, "roc.png"),
                     title=f"verification ROC, {name} ({pair_metric})")
    written += ["distances.png", "roc.png"]
    tables += [f"## Verification, class-balanced pairs ({pair_metric} similarity)\n",
               analysis.markdown_table(
                   [{"FAR": f"{far:g}", "TAR": tar, "threshold": thr}
                    for far, (tar, thr) in table.items()], ["FAR", "TAR", "threshold"]), ""]
  rows = analysis.per_class_retrieval(emb, labels, metric=metric)
  if rows:
    per_class_plot(rows, os.path.join(out_dir, "per_class.png"), class_names=class_names,
                   title=f"per-class retrieval, {name}")
    written.append("per_class.png")
    named = [{"class": n, **r} for n, r in zip(
        names_lib.label_names([r["label"] for r in rows], class_names), rows)]
    tables += ["## Per-class retrieval (leave-one-out in the split), worst first\n",
               analysis.markdown_table(named, ["class"] + list(rows[0])), ""]
  with open(os.path.join(out_dir, "tables.md"), "w") as f:
    f.write("\n".join(tables) + "\n")
  written.append("tables.md")
  logging.info("Plots written to %s: %s", out_dir, ", ".join(written))
  return written
