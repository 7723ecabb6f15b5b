r"""Tables and the trials plot of docs/experiments/icons_nas.md, from the search and the ablation.

  python docs/experiments/icons_nas_report.py trials docs/experiments/icons_search.json \
      docs/experiments/icons_nas_trials.png
  python docs/experiments/icons_nas_report.py compare docs/experiments/icons_nas_ablation.json
  python docs/experiments/icons_nas_report.py cost runs/icons_nas

trials plots the search's objective against the trial number (dots: complete trials, crosses
at the bottom: failed ones; the line: the best value so far) from the search.json that
`python -m sim_jax.experiments.search` writes. compare prints, per variant of the ablation JSON
that `ablate.py` writes, mean [min-max] over its runs (seeds) of the validation and heldout
metrics, next to chance and the two floors where the metric has them. cost prints, per variant
of an ablation workdir, the encoder's parameter count and the median train step time, both read
from the runs' log.txt (the trainer logs "Model multiscale: N parameters" and CLU's
`steps_per_sec` every 25 steps; the first report is dropped, it includes compilation), and the
wall time per run (ablation.json's seconds, summed over seeds, divided by the number of seeds).
"""

import glob
import json
import os
import re
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Metric -> the split it is measured on (validation: names disjoint from train, used to choose;
# heldout: names never trained on or chosen on, reported only).
COMPARE = (
    ("verification/head_roc_auc_validation", "validation"),
    ("verification/fixed_accuracy_validation", "validation"),
    ("verification/head_roc_auc_heldout", "heldout"),
    ("verification/fixed_accuracy_heldout", "heldout"),
    ("verification/roc_auc", "heldout"),
    ("verification/accuracy", "heldout"),
)
PARAMS = re.compile(r"Model \w+: ([\d,]+) parameters")
STEPS_PER_SEC = re.compile(r"\[(\d+)\] steps_per_sec=([\d.]+)")


def plot_trials(search_json: str, out_png: str) -> None:
  """Objective vs trial number, with the running best (maximisation or minimisation)."""
  with open(search_json) as f:
    data = json.load(f)
  rows = data["trials"]
  done = [r for r in rows if r["value"] is not None]
  xs = np.array([r["number"] for r in done])
  ys = np.array([r["value"] for r in done])
  better = np.maximum if data["direction"] == "MAXIMIZE" else np.minimum
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(xs, ys, "o", label="trial")
  ax.step(xs, better.accumulate(ys), where="post", label="best so far")
  failed = [r["number"] for r in rows if r["value"] is None]
  if failed:
    ax.plot(failed, [ys.min()] * len(failed), "x", color="red", label="failed")
  ax.set_xlabel("trial")
  ax.set_ylabel(data["objective"])
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  print(f"wrote {out_png}")


def _cell(stats) -> str:
  """'mean [min-max]' of an ablation.json summary entry, or n/a."""
  if not stats:
    return "n/a"
  if "mean" not in stats:
    return f"{stats['value']:.4f}" if "value" in stats else "n/a"
  return f"{stats['mean']:.4f} [{stats['min']:.4f}-{stats['max']:.4f}]"


def compare(ablation_json: str) -> None:
  """Markdown: metric x variant, mean [min-max] over seeds; chance, raw pixels, and each
  variant's random-init floor (an untrained encoder of that variant's architecture)."""
  with open(ablation_json) as f:
    data = json.load(f)
  variants = data["variants"]
  labels = [v["label"] for v in variants]
  print("| metric | split | " + " | ".join(labels) + " | chance | raw pixels | "
        + " | ".join(f"random init ({label})" for label in labels) + " |")
  print("|---|---|" + "---|" * (2 * len(variants) + 2))
  for metric, split in COMPARE:
    values = [run_stats(v, metric) for v in variants]
    if not any(values):
      continue
    # Chance and floors: only the headline metrics with a floor have them (ablation.json).
    summaries = [v["summary"].get(metric, {}) for v in variants]
    shared = [_floor(summaries[0].get(k)) for k in ("chance", "raw_pixels")]
    random_init = [_floor(s.get("random_init")) for s in summaries]
    print(f"| `{metric}` | {split} | " + " | ".join(_cell(s) for s in values)
          + " | " + " | ".join(shared + random_init) + " |")


def run_stats(variant: dict, metric: str) -> dict | None:
  """mean / min / max of `metric` over the variant's finished runs (every final metric, not only
  the headline ones the summary keeps), or None."""
  values = [r["metrics"][metric] for r in variant.get("runs", [])
            if r.get("status") == "ok" and metric in r.get("metrics", {})]
  if not values:
    return None
  return {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}


def _floor(stats) -> str:
  """A chance / floor entry: a number, or mean [min-max] where it varies over seeds."""
  if stats is None:
    return "n/a"
  if isinstance(stats, (int, float)):
    return f"{stats:.4f}"
  if stats.get("min") == stats.get("max"):
    return f"{stats['mean']:.4f}"
  return _cell(stats)


def log_cost(log_path: str) -> tuple[int | None, float | None]:
  """(parameters, median seconds per step) of a run's log.txt (its last launch only)."""
  with open(log_path, errors="replace") as f:
    text = f.read().split("\n=== ablate.py ")[-1]
  params = PARAMS.findall(text)
  rates = [float(r) for step, r in STEPS_PER_SEC.findall(text) if int(step) > 25]
  return (int(params[-1].replace(",", "")) if params else None,
          1.0 / float(np.median(rates)) if rates else None)


def cost(workdir: str) -> None:
  """Markdown: variant, parameters, median step time over its seeds' runs, wall time per run."""
  with open(os.path.join(workdir, "ablation.json")) as f:
    data = json.load(f)
  print("| variant | parameters | step time (ms, median of runs [min-max]) | wall per run |")
  print("|---|---|---|---|")
  for v in data["variants"]:
    logs = sorted(glob.glob(os.path.join(workdir, v["label"], "seed_*", "log.txt")))
    costs = [log_cost(p) for p in logs]
    params = sorted({c[0] for c in costs if c[0] is not None})
    steps = [1000 * c[1] for c in costs if c[1] is not None]
    per_run = v["seconds"] / max(len(v["seeds"]), 1) if v.get("seconds") else None
    step = (f"{np.median(steps):.0f} [{min(steps):.0f}-{max(steps):.0f}]" if steps else "n/a")
    wall = f"{per_run:.0f} s" if per_run else "n/a"
    print(f"| {v['label']} | {', '.join(f'{p:,}' for p in params) or 'n/a'} | {step} | "
          f"{wall} |")


def main(argv):
  if len(argv) >= 4 and argv[1] == "trials":
    plot_trials(argv[2], argv[3])
  elif len(argv) >= 3 and argv[1] == "compare":
    compare(argv[2])
  elif len(argv) >= 3 and argv[1] == "cost":
    cost(argv[2])
  else:
    print(__doc__, file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
