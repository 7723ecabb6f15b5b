r"""Learning curves, training diagnostics and final metrics of seed 001's runs
(docs/experiments/characters.md).

  python docs/experiments/characters_curves.py --out=docs/experiments/characters_hard_mining.png \
      runs/characters_hard_mining/batch_hard runs/characters_hard_mining/semi_hard ...
  python docs/experiments/characters_curves.py --metrics runs/characters_tables/*/seed_0
  python docs/experiments/characters_curves.py --metrics --headline=validation/mrr@5 \
      runs/characters_proxy/*

The second form prints each finished run's headline metrics from its final_metrics.json, each
as "value (chance; raw pixels; random init)" (the ablation.md layout), for an ablation stopped
before its last run (ablate.py writes ablation.md only at the end). A run that has evaluated
but not yet written final_metrics.json (its floors still being computed) shows the evaluation
logged in its events, marked with a *, without floors.

Reads each run directory's TensorBoard events (the trainer logs `train/loss` and the
`train/diagnostics/*` of sim_jax/losses/diagnostics.py every `train.log_every` steps), overlays
the runs in one panel per series, and prints a markdown table of each series' first and last
logged value per run (the first log averages steps 1-100).
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from sim_jax.eval.plots import read_scalars  # noqa: E402

SERIES = ("train/loss", "train/diagnostics/active_triplet_fraction",
          "train/diagnostics/embedding_std_normalized", "train/diagnostics/mean_pos_distance",
          "train/diagnostics/mean_neg_distance")


def run_series(run_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: sorted [(step, value)]} of SERIES found in `run_dir`'s events."""
  scalars = read_scalars(run_dir)
  missing = [t for t in SERIES if t not in scalars]
  if missing:
    raise ValueError(f"{run_dir}: no series {missing}; has {sorted(scalars)[:20]}...")
  return {t: sorted(scalars[t]) for t in SERIES}


HEADLINE = ("retrieval/mrr@5", "retrieval/recall@1", "validation/mrr@5", "zeroshot/mrr@5")


def label_of(run_dir: str) -> str:
  """The variant label (and seed directory) of a run directory."""
  parts = os.path.normpath(run_dir).split(os.sep)
  return "/".join(parts[-2:]) if parts[-1].startswith("seed_") else parts[-1]


def metrics_table(run_dirs, headline=HEADLINE) -> list[str]:
  """Markdown rows of `headline` per finished run: value (chance; raw pixels; random init)."""
  lines = ["| run | " + " | ".join(f"`{m}`" for m in headline) + " |",
           "|---" * (len(headline) + 1) + "|"]
  for run in run_dirs:
    path = os.path.join(run, "final_metrics.json")
    if os.path.exists(path):
      with open(path) as f:
        rep = json.load(f)
    else:  # evaluated, floors not yet: the last evaluation the run logged (marked with a *)
      scalars = read_scalars(run) if os.path.isdir(run) else {}
      last = {m: scalars[f"eval/{m}"][-1] for m in headline if f"eval/{m}" in scalars}
      if len(last) < len(headline):
        lines.append(f"| {label_of(run)} | " + " | ".join("not finished" for _ in headline)
                     + " |")
        continue
      rep = {"metrics": {m: v for m, (_, v) in last.items()}}
      lines.append(f"| {label_of(run)} (step {max(s for s, _ in last.values())})* | " + " | ".join(
          f"{rep['metrics'][m]:.4f} (-)" for m in headline) + " |")
      continue
    floors = rep.get("floors") or {}
    cells = []
    for m in headline:
      ref = [rep.get("chance", {}).get(m), floors.get("raw_pixels", {}).get(m),
             floors.get("random_init", {}).get(m)]
      cells.append(f"{rep['metrics'][m]:.4f} (" + "; ".join(
          "-" if v is None else f"{v:.4f}" for v in ref) + ")")
    lines.append(f"| {label_of(run)} | " + " | ".join(cells) + " |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="run directories (their basename is the label)")
  parser.add_argument("--out", help="PNG path of the curves")
  parser.add_argument("--metrics", action="store_true", help="print the final metrics instead")
  parser.add_argument("--headline", default=",".join(HEADLINE),
                      help="comma-separated metrics of --metrics' columns (the hard-mining "
                           "proxy runs evaluate validation/mrr@5 only)")
  args = parser.parse_args()
  if args.metrics:
    print("\n".join(metrics_table(args.runs, tuple(args.headline.split(",")))))
    return
  if not args.out:
    parser.error("--out is required for the curves")
  data = {label_of(r): run_series(r) for r in args.runs}
  fig, axes = plt.subplots(1, len(SERIES), figsize=(4.2 * len(SERIES), 3.4))
  for ax, tag in zip(axes, SERIES):
    for label, series in data.items():
      ax.plot([s for s, _ in series[tag]], [v for _, v in series[tag]], label=label)
    ax.set_title(tag.replace("train/diagnostics/", ""), fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].set_yscale("log")
  axes[-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print("| run | " + " | ".join(f"{t.split('/')[-1]} first -> last" for t in SERIES) + " |")
  print("|---" * (len(SERIES) + 1) + "|")
  for label, series in data.items():
    cells = [f"{series[t][0][1]:.3g} -> {series[t][-1][1]:.3g}" for t in SERIES]
    print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
