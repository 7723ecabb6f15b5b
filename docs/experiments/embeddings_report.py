"""The figures and learning-curve tables of docs/experiments/embeddings.md, from the ablation runs.

  python docs/experiments/embeddings_report.py [--runs=runs] [--out=docs/experiments]

For every table `runs/embeddings_<table>` that has run: `embeddings_tsne_<table>.png`, the t-SNE of
600 test embeddings of each variant (seed 0's final checkpoint; held-out classes too where the
variant has them), and
`embeddings_curves_<table>.md`, 5-NN macro F1 over training steps per variant (step 0 is the
random-init floor the run recorded; the rest its evaluations), mean over the seeds that reached
the step, to show whether the rows compared have converged; and `embeddings_table_<table>.md`,
the seed's F1 beside ours with both floors. Rows come from the finished runs' final_metrics.json
(a table stopped part-way shows its finished rows and "not run").
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from configs import embeddings  # noqa: E402
from sim_jax import data, inference, train  # noqa: E402
from sim_jax.experiments.plots import eval_curve  # noqa: E402
from sim_jax.experiments.tables import Summary, summarize  # noqa: E402
from sim_jax.experiments.variants import apply_overrides, as_ablation  # noqa: E402

TABLES = ("backbones", "backbones_pretrained", "losses", "losses_pretrained", "embedding_sizes",
          "samples_per_class", "augmentation_factor", "augmentation", "zeroshot", "combined")
# A pretraining table -> the from-scratch table it is the SimCLR column of.
PRETRAINED = {"backbones_pretrained": "backbones", "losses_pretrained": "losses"}
MODELS_MD = os.path.join(os.path.dirname(__file__), "embeddings_models.md")
METRIC = "knn/f1_macro"
ZEROSHOT = "zeroshot/knn_f1_macro"
# The seed's F1-scores (its tables 4.1-4.8), by our variant label.
SEED = {
    "backbones": {"resnet18": 0.664, "efficientnet_b0": 0.540, "mobilenet_v3_small": 0.367,
                  "densenet121": 0.612, "vit_tiny": 0.893, "swin_tiny": 0.934},
    "losses": {"contrastive": 0.650, "triplet": 0.660, "supcon": 0.709, "snr": 0.685,
               "nt_xent": 0.618},
    "embedding_sizes": {"dim_64": 0.654, "dim_128": 0.683, "dim_256": 0.712, "dim_512": 0.719,
                        "dim_1024": 0.724, "dim_2048": 0.731},
    "samples_per_class": {"n_10": 0.223, "n_20": 0.280, "n_30": 0.369, "n_50": 0.443,
                          "n_80": 0.507, "n_100": 0.520, "n_200": 0.632, "n_400": 0.703},
    "augmentation_factor": {"x1": 0.306, "x2": 0.352, "x4": 0.437, "x8": 0.518, "x16": 0.569},
    "augmentation": {"none": 0.289, "autoaugment": 0.392, "randaugment": 0.436,
                     "trivialaugment": 0.441},
    "zeroshot": {"cross_icon_themes": 0.865},
    "combined": {"combined": "0.995 trained / 0.975 zero-shot"},
}
TSNE_POINTS = 600  # test images per t-SNE panel


def variant_dirs(table: str, table_dir: str) -> list[tuple[str, list[str]]]:
  """[(label, [finished run dirs: seed_* or the variant dir])] in the config's order (read from
  the run directories, so that a table stopped part-way still shows its finished rows)."""
  out = []
  for v in as_ablation(embeddings.get_ablations()[table]).variants:
    runs = sorted(glob.glob(os.path.join(table_dir, v.label, "seed_*"))) or \
        [os.path.join(table_dir, v.label)]
    done = [r for r in runs if os.path.exists(os.path.join(r, "final_metrics.json"))]
    out.append((v.label, done))
  return out


def summary(runs, metric: str, kind: str) -> Summary | None:
  """Mean and range of `metric` over the runs ("metrics", "chance" or a floor's name)."""
  values = []
  for run in runs:
    with open(os.path.join(run, "final_metrics.json")) as f:
      final = json.load(f)
    if kind in ("metrics", "chance"):
      block = final.get(kind, {})
    else:
      block = final.get("floors", {}).get(kind, {})
    if metric in block:
      values.append(float(block[metric]))
  return summarize(values)


def variant_config(table: str, label: str, seed: int, run_dir: str = ""):
  """The run's config, rebuilt as ablate.py built it (its overrides on get_config())."""
  variant = next(v for v in as_ablation(embeddings.get_ablations()[table]).variants
                 if v.label == label)
  config = apply_overrides(embeddings.get_config(), {**variant.overrides, "seed": seed})
  if run_dir and config.model.init_from:
    # "{run:simclr}" as the runner resolved it: the checkpoint records the path it started from.
    with open(os.path.join(run_dir, "config.json")) as f:
      config.model.init_from = json.load(f)["model"]["init_from"]
  return config


def tsne_panels(table: str, variants, path: str) -> bool:
  """One t-SNE panel per variant (seed 0's final checkpoint; TSNE_POINTS test images, the same
  seeded subset for every variant), plus its held-out classes where the run has them."""
  panels = []
  for label, runs in variants:
    if not runs:
      continue
    config = variant_config(table, label, 0, runs[0])
    setup = train.make_setup(config)
    _, state = inference.restore_for_inference(setup, runs[0])
    for split in ("test", "heldout"):
      if split not in config.data.eval_splits:
        continue
      d = data.load_split(config.data, split)
      pick = np.random.default_rng(0).permutation(len(d["label"]))[:TSNE_POINTS]
      emb = train.embed_images(setup, state, d["image"][pick])
      xy = TSNE(n_components=2, perplexity=30, init="pca", random_state=0).fit_transform(emb)
      name = label if split == "test" else f"{label} (held-out classes)"
      panels.append((name, xy, d["label"][pick]))
  if not panels:
    return False
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.set_axis_off()
  for ax, (name, xy, y) in zip(axes.ravel(), panels):
    ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=3, vmin=0, vmax=9)
    ax.set_title(name, fontsize=9)
  fig.suptitle(f"t-SNE of test embeddings, {table} (seed 0; colour = Fashion-MNIST class)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  print(f"wrote {path} ({table}: {len(panels)} panels)")
  return True


def curve_table(variants, metric: str = METRIC) -> str:
  """Markdown: `metric` per variant at each evaluated step (mean over seeds, count in brackets);
  step 0 is the run's random-init floor of that metric."""
  per_variant = {}
  steps: set[int] = set()
  for label, runs in variants:
    points: dict[int, list[float]] = {}
    for run in runs:
      with open(os.path.join(run, "final_metrics.json")) as f:
        final = json.load(f)
      floor = final.get("floors", {}).get("random_init", {}).get(metric)
      if floor is not None:
        points.setdefault(0, []).append(floor)
      for step, value in eval_curve(run, metric):
        points.setdefault(int(step), []).append(value)
    per_variant[label] = points
    steps |= set(points)
  order = sorted(steps)
  lines = ["| variant | " + " | ".join(f"step {s}" for s in order) + " |",
           "|---|" + "---:|" * len(order)]
  for label, points in per_variant.items():
    cells = [f"{np.mean(points[s]):.3f} ({len(points[s])})" if s in points else "n/a"
             for s in order]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _fmt(s: Summary | None, signed: bool = False) -> str:
  """"0.829 (0.828-0.830, n=3)" over several seeds, "0.829" for one, "n/a" for none; signed:
  "+0.005 (-0.006 to +0.013, n=3)" (a gain)."""
  if s is None:
    return "n/a"
  num = "{:+.3f}" if signed else "{:.3f}"
  text = num.format(s.mean)
  if s.n > 1:
    sep = " to " if signed else "-"
    text += f" ({num.format(s.low)}{sep}{num.format(s.high)}, n={s.n})"
  return text


def model_sizes(path: str = MODELS_MD) -> dict[str, tuple[str, str]]:
  """backbone -> (parameters, forward MFLOPs per image), from embeddings_models.py's table."""
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1][:1].isdigit():
          out[cells[0]] = (cells[1], cells[3])
  return out


def side_by_side(table: str, variants) -> str:
  """Markdown: the seed's F1 beside ours (mean, min-max over seeds), chance and both floors; the
  zero-shot F1 and its floors where the runs have them; parameters and FLOPs for backbones."""
  seed = SEED.get(table, {})
  zs = any(summary(runs, ZEROSHOT, "metrics") for _, runs in variants)
  sizes = model_sizes() if table == "backbones" else {}
  head = ["variant"] + (["parameters", "MFLOPs / image"] if sizes else [])
  head += ["seed's F1", "our 5-NN macro F1", "chance", "raw pixels", "random init"]
  head += ["zero-shot 5-NN F1", "its raw pixels", "its random init"] if zs else []
  lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  for label, runs in variants:
    row = [label] + (list(sizes.get(label, ("-", "-"))) if sizes else [])
    row.append(str(seed.get(label, "-")))
    if not runs:
      row += ["not run"] + [""] * (len(head) - len(row) - 1)
    else:
      row += [_fmt(summary(runs, METRIC, k))
              for k in ("metrics", "chance", "raw_pixels", "random_init")]
      if zs:
        row += [_fmt(summary(runs, ZEROSHOT, k)) for k in ("metrics", "raw_pixels", "random_init")]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def paired_gain(before, after, metric: str = METRIC) -> Summary | None:
  """`metric` of `after` minus `before`, over the seeds (seed_<s> directories) both finished."""
  def by_seed(runs):
    return {os.path.basename(r): summary([r], metric, "metrics") for r in runs}
  b, a = by_seed(before), by_seed(after)
  return summarize([a[k].mean - b[k].mean for k in sorted(set(a) & set(b)) if a[k] and b[k]])


def pretrained_table(table: str, variants, scratch_variants) -> str:
  """Markdown: each row from scratch (the table it is the column of) beside the same row
  fine-tuned from SimCLR, with both floors; then the SimCLR encoders alone, whose k-NN reference
  is every train image they pretrained on (so beside that reference's raw-pixel floor)."""
  scratch = dict(scratch_variants)
  seed = SEED.get(PRETRAINED[table], {})
  lines = ["| variant | seed's F1 (ImageNet-pretrained) | from scratch | SimCLR, then fine-tuned | "
           "gain, same seed | raw pixels | random init |", "|---|---:|---:|---:|---:|---:|---:|"]
  encoders = ["", "| SimCLR encoder alone | 5-NN macro F1, reference = all 60,000 train images | "
              "raw pixels there | random init there |", "|---|---:|---:|---:|"]
  for label, runs in variants:
    if label.startswith("simclr"):
      encoders.append("| " + " | ".join([label] + [_fmt(summary(runs, METRIC, k)) for k in (
          "metrics", "raw_pixels", "random_init")]) + " |")
      continue
    lines.append("| " + " | ".join([
        label, str(seed.get(label, "-")), _fmt(summary(scratch.get(label, []), METRIC, "metrics")),
        _fmt(summary(runs, METRIC, "metrics")) if runs else "not run",
        _fmt(paired_gain(scratch.get(label, []), runs), signed=True),
        _fmt(summary(runs, METRIC, "raw_pixels")), _fmt(summary(runs, METRIC, "random_init"))])
                 + " |")
  return "\n".join(lines + encoders) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs")
  parser.add_argument("--out", default=os.path.join("docs", "experiments"))
  parser.add_argument("--tables", default=",".join(TABLES))
  parser.add_argument("--no_tsne", action="store_true")
  args = parser.parse_args()
  for table in args.tables.split(","):
    table_dir = os.path.join(args.runs, f"embeddings_{table}")
    variants = variant_dirs(table, table_dir)
    if not any(runs for _, runs in variants):
      print(f"skipped {table}: no finished run in {table_dir}")
      continue
    path = os.path.join(args.out, f"embeddings_table_{table}.md")
    with open(path, "w") as f:
      if table in PRETRAINED:
        base = PRETRAINED[table]
        f.write(pretrained_table(table, variants,
                                 variant_dirs(base, os.path.join(args.runs, f"embeddings_{base}"))))
      else:
        f.write(side_by_side(table, variants))
    print(f"wrote {path}")
    if not args.no_tsne:
      tsne_panels(table, variants, os.path.join(args.out, f"embeddings_tsne_{table}.png"))
    path = os.path.join(args.out, f"embeddings_curves_{table}.md")
    with open(path, "w") as f:
      f.write(f"5-NN macro F1 of `{table}` over training steps: mean over the finished seeds "
              "(count in brackets); step 0 = the random-init floor.\n\n" + curve_table(variants))
      if any(summary(runs, ZEROSHOT, "metrics") for _, runs in variants):
        f.write("\nZero-shot 5-NN macro F1 (the classes never trained on) over the same steps:"
                "\n\n" + curve_table([(label, runs) for label, runs in variants
                                      if summary(runs, ZEROSHOT, "metrics")], ZEROSHOT))
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
