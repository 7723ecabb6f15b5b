"""The ablation's PNG: the first headline metric per variant (mean and range over seeds, with its
chance level and floors as ticks), and over training steps where the runs logged it."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the runner and tests run without a display

import matplotlib.pyplot as plt  # noqa: E402

from sim_jax.eval import plots as eval_plots  # noqa: E402
from sim_jax.experiments.tables import FLOORS, Row  # noqa: E402

# Tick colour and style per reference level.
REFERENCES = {"chance": ("black", "-"), "raw_pixels": ("tab:red", "--"),
              "random_init": ("tab:gray", ":")}


def eval_curve(run_dir: str, metric: str) -> list[tuple[int, float]]:
  """`metric` over training steps: from eval_step<N>.json files, else the TensorBoard events."""
  points = []
  for path in glob.glob(os.path.join(run_dir, "eval_step*.json")):
    with open(path) as f:
      data = json.load(f)
    if metric in data.get("metrics", {}):
      points.append((int(data["step"]), float(data["metrics"][metric])))
  if points or not glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
    return sorted(points)
  logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader logs every file
  return sorted(eval_plots.read_scalars(run_dir).get(f"eval/{metric}", []))


def _reference(row: Row, kind: str, metric: str):
  return row.chance(metric) if kind == "chance" else row.floor(kind, metric)


def write_plot(path: str, table_rows: Sequence[Row], metric: str,
               curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]]) -> None:
  """Bars of `metric` per variant (mean, min–max as an error bar) with chance and floor ticks;
  beside them, the curves over steps (`curves`: label -> one curve per seed), if any."""
  curves = {k: [c for c in v if c] for k, v in curves.items()}
  curves = {k: v for k, v in curves.items() if v}
  fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 6.5, 4.2),
                           squeeze=False)
  ax = axes[0, 0]
  summaries = [row.metric(metric) for row in table_rows]
  values = [0.0 if s is None else s.mean for s in summaries]
  errors = [[0.0 if s is None else s.mean - s.low for s in summaries],
            [0.0 if s is None else s.high - s.mean for s in summaries]]
  # Light bars: the reference ticks drawn across them stay visible.
  bars = ax.bar(range(len(table_rows)), values, color="tab:blue", alpha=0.45, yerr=errors,
                capsize=3)
  labelled = set()
  for i, (row, s) in enumerate(zip(table_rows, summaries)):
    for kind, (color, style) in REFERENCES.items():
      ref = _reference(row, kind, metric)
      if ref is not None:
        name = "chance" if kind == "chance" else FLOORS[kind]
        ax.plot([i - 0.4, i + 0.4], [ref.mean] * 2, color=color, ls=style, lw=1.5,
                label=None if name in labelled else name)
        labelled.add(name)
    text = f"{s.mean:.3f}" if s is not None else row.status.split(":")[0]
    top = bars[i].get_height() if s is None else s.high  # above the error bar
    ax.annotate(text, (bars[i].get_x() + bars[i].get_width() / 2, top), xytext=(0, 2),
                textcoords="offset points", ha="center", va="bottom", fontsize=8)
  ax.set_xticks(range(len(table_rows)), [row.variant.label for row in table_rows], rotation=20,
                ha="right")
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} per variant")
  if labelled:
    ax.legend(loc="lower right", fontsize=8)
  if curves:
    ax2 = axes[0, 1]
    for i, (label, runs) in enumerate(curves.items()):
      for j, points in enumerate(runs):
        steps, vals = zip(*points)
        ax2.plot(steps, vals, marker="o", ms=3, color=f"C{i}", label=label if j == 0 else None)
    ax2.set_xlabel("step")
    ax2.set_ylabel(metric)
    ax2.set_title(f"{metric} during training")
    ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
