r"""Plots of seed 003's pool experiment (docs/experiments/pools.md).

  python docs/experiments/pools_plots.py curves --out=docs/experiments/pools_curves.png \
      runs/pools_lr/lr_1e-4 runs/pools_lr/lr_3e-4 runs/pools_lr/lr_1e-3
  python launch.py --mode=embed --config=configs/pools.py --workdir=RUN --output=RUN/emb.npz
  python docs/experiments/pools_plots.py grid --embeddings=RUN/emb.npz \
      --out=docs/experiments/pools_grid.png

`curves` overlays, per run directory, the logged `train/loss` and the evaluations
`pool/top2_accuracy` (held-out classes, queries of the query families) and `validation/mrr@5`
(the selection metric) against the step.

`score` prints the cross-family pool metrics of an embeddings file for any two of its splits
(e.g. `--left=query --right=train`: the trained classes, queries still drawn by the query
families; `--left=train --right=train`: pools within one split, as training draws them),
beside the same pools ranked on raw pixels (`eval.floors.raw_pixel_embeddings`):

  python launch.py --mode=embed --config=configs/pools.py --workdir=RUN \
      --config.data.eval_splits='("query","train")' --output=RUN/train_emb.npz
  python docs/experiments/pools_plots.py score --embeddings=RUN/train_emb.npz --left=query \
      --right=train

`grid` draws cross-family candidate pools exactly as the evaluation samples them
(`sim_jax.eval.pools.sample_cross_pools`, seed `eval.pool_seed`): each row is a query drawing
(blue frame) followed by its 20 candidates ranked by cosine similarity, the true match framed
green, foils red. The images are read from the dataset of configs/pools.py (`data.load_split`),
in the row order `--mode=embed` wrote the embeddings.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from configs import pools as pools_config  # noqa: E402
from sim_jax import data  # noqa: E402
from sim_jax.eval import floors, plots, pools  # noqa: E402

TAGS = ("train/loss", "eval/pool/top2_accuracy", "eval/validation/mrr@5")


def curves(run_dirs, out: str) -> None:
  fig, axes = plt.subplots(1, len(TAGS), figsize=(4.6 * len(TAGS), 3.3))
  for run in run_dirs:
    series = plots.read_scalars(run)
    label = os.path.relpath(run, os.path.dirname(os.path.dirname(run)))
    for ax, tag in zip(axes, TAGS):
      pts = sorted(series.get(tag, []))
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
  for ax, tag in zip(axes, TAGS):
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  print(f"Wrote {out}")


def grid(embeddings: str, out: str, rows: int) -> None:
  config = pools_config.get_config()
  z = np.load(embeddings)
  left, right = config.eval.pool_left_split, config.eval.pool_right_split
  emb = {s: z["embeddings"][z["splits"] == s] for s in (left, right)}
  lab = {s: z["labels"][z["splits"] == s] for s in (left, right)}
  imgs = {s: data.load_split(config.data, s)["image"] for s in (left, right)}
  qrows, cand, _ = pools.sample_cross_pools(lab[left], lab[right],
                                            int(config.eval.pool_num_foils),
                                            int(config.eval.pool_seed))
  pick = np.random.default_rng(0).choice(len(qrows), rows, replace=False)
  q = emb[left][qrows[pick]]
  c = emb[right][cand[pick]]
  qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
  cn = c / np.linalg.norm(c, axis=-1, keepdims=True)
  sim = np.einsum("nd,npd->np", qn, cn)
  order = np.argsort(-sim, axis=1, kind="stable")
  ranked = np.take_along_axis(cand[pick], order, axis=1)
  plots.save_retrieval_grid(out, imgs[left][qrows[pick]], imgs[right], ranked,
                            lab[left][qrows[pick]], lab[right], scale=1)
  print(f"Wrote {out}")


def score(embeddings: str, left: str, right: str) -> None:
  config = pools_config.get_config()
  z = np.load(embeddings)
  num_foils, seed = int(config.eval.pool_num_foils), int(config.eval.pool_seed)
  lab = {s: z["labels"][z["splits"] == s] for s in (left, right)}
  emb = {s: z["embeddings"][z["splits"] == s] for s in (left, right)}
  raw = {s: floors.raw_pixel_embeddings(data.load_split(config.data, s)["image"])
         for s in (left, right)}
  if left == right:  # within one split: the true match is another drawing of the class
    rows, cand, _ = pools.sample_label_pools(lab[left], num_foils, seed)
  else:
    rows, cand, _ = pools.sample_cross_pools(lab[left], lab[right], num_foils, seed)
  for name, vec in (("embeddings", emb), ("raw pixels", raw)):
    q = vec[left] / np.linalg.norm(vec[left], axis=1, keepdims=True)
    g = vec[right] / np.linalg.norm(vec[right], axis=1, keepdims=True)
    # Cosine of each query with its 20 candidates, 256 queries at a time (raw pixels are
    # 12,288-d: all pools at once would take gigabytes).
    sim = np.concatenate([np.einsum("nd,npd->np", q[rows[i:i + 256]], g[cand[i:i + 256]])
                          for i in range(0, len(rows), 256)])
    m = pools.pool_scores(sim, 2)
    print(f"{name:>10s} {left} vs {right}: top1 {m['top1_accuracy']:.4f} top2 "
          f"{m['top2_accuracy']:.4f} mrr {m['mrr']:.4f} ({int(m['num_queries'])} queries)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="what", required=True)
  c = sub.add_parser("curves")
  c.add_argument("--out", required=True)
  c.add_argument("runs", nargs="+")
  g = sub.add_parser("grid")
  g.add_argument("--embeddings", required=True)
  g.add_argument("--out", required=True)
  g.add_argument("--rows", type=int, default=8)
  s = sub.add_parser("score")
  s.add_argument("--embeddings", required=True)
  s.add_argument("--left", required=True)
  s.add_argument("--right", required=True)
  args = parser.parse_args()
  if args.what == "curves":
    curves(args.runs, args.out)
  elif args.what == "score":
    score(args.embeddings, args.left, args.right)
  else:
    grid(args.embeddings, args.out, args.rows)


if __name__ == "__main__":
  main()
