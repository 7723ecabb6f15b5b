"""Table 5 at the seed's length: SN-LeNet-5's pair accuracy every 10 epochs, over the seeds.

Reads the TensorBoard events of `python ablate.py --config=configs/lenet_siamese.py
--ablation=long --workdir=runs/lenet_siamese_long` (evaluated every 7,500 steps = 10 epochs of
48,000 pairs) and prints one markdown row per evaluation: the train / validation / test pair
accuracy at the seed's rule s > 0.5, as the mean (min–max) over the seeds that reached it, and
the train-test gap; then, per seed, the evaluation that validation would stop at and its test
accuracy. It also draws the three curves. From the repository root:

  python docs/experiments/lenet_siamese_long.py \
      --out=docs/experiments/lenet_siamese_long.png runs/lenet_siamese_long/sn_lenet5_100_epochs
"""

import argparse
import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from sim_jax.eval.plots import read_scalars  # noqa: E402
from sim_jax.experiments.tables import summarize  # noqa: E402

SPLITS = ("train", "validation", "test")
TAG = "eval/verification/fixed_accuracy_{}"
STEPS_PER_EPOCH = 750  # 48,000 pairs / 64 per step
SEED_002 = {"train": 98.56, "validation": 91.66, "test": 91.65}  # its Table 5, 100 epochs


def seed_curves(variant_dir: str) -> dict[int, dict[str, dict[int, float]]]:
  """{seed: {split: {step: accuracy}}} from each seed_<s> directory's events."""
  out = {}
  for d in sorted(glob.glob(os.path.join(variant_dir, "seed_*"))):
    scalars = read_scalars(d)
    out[int(d.rsplit("_", 1)[1])] = {
        s: dict(scalars.get(TAG.format(s), [])) for s in SPLITS}
  if not out:
    raise ValueError(f"{variant_dir!r} has no seed_* run directories.")
  return out


def cell(values: list[float]) -> str:
  """Percent, 'mean (min–max)' over seeds; the value alone for one seed."""
  s = summarize([100 * v for v in values])
  if s.n == 1:
    return f"{s.mean:.2f}"
  return f"{s.mean:.2f} ({s.low:.2f}–{s.high:.2f})"


def table(curves) -> list[str]:
  steps = sorted({t for c in curves.values() for t in c["test"]})
  rows = ["| epoch | seeds | train | validation | test | train - test |",
          "|---|---|---|---|---|---|"]
  for t in steps:
    seeds = [s for s, c in curves.items() if all(t in c[k] for k in SPLITS)]
    vals = {k: [curves[s][k][t] for s in seeds] for k in SPLITS}
    gap = [a - b for a, b in zip(vals["train"], vals["test"])]
    rows.append(f"| {t // STEPS_PER_EPOCH} | {len(seeds)} | "
                + " | ".join(cell(vals[k]) for k in SPLITS) + f" | {cell(gap)} |")
  rows.append("| seed 002, 100 epochs | | " + " | ".join(f"{SEED_002[k]:.2f}" for k in SPLITS)
              + f" | {SEED_002['train'] - SEED_002['test']:.2f} |")
  return rows


def early_stopping(curves) -> list[str]:
  """Per seed: the evaluation with the best validation accuracy, and its test accuracy."""
  out = []
  for seed, c in sorted(curves.items()):
    if not c["validation"]:
      continue  # a run that has not reached its first evaluation yet
    best = max(c["validation"], key=lambda t: (c["validation"][t], -t))
    out.append(f"seed {seed}: best validation {100 * c['validation'][best]:.2f} at epoch "
               f"{best // STEPS_PER_EPOCH}, test there {100 * c['test'][best]:.2f}")
  return out


def plot(curves, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for k, color in zip(SPLITS, ("C0", "C1", "C2")):
    for i, (_, c) in enumerate(sorted(curves.items())):
      steps = sorted(c[k])
      ax.plot([t / STEPS_PER_EPOCH for t in steps], [100 * c[k][t] for t in steps],
              color=color, marker="o", ms=3, alpha=0.8, label=k if i == 0 else None)
    ax.axhline(SEED_002[k], color=color, ls="--", lw=1)
  ax.set_xlabel("epoch (750 steps of 64 pairs)")
  ax.set_ylabel("pair accuracy at s > 0.5 (%)")
  ax.set_title("SN-LeNet-5 on Fashion-MNIST (dashed: seed 002 at 100 epochs)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("variant_dir")
  parser.add_argument("--out", default="", help="PNG path for the curves (none if empty)")
  args = parser.parse_args()
  curves = seed_curves(args.variant_dir)
  print("\n".join(table(curves)))
  print("\nStopped at the best validation evaluation:")
  print("\n".join(early_stopping(curves)))
  if args.out:
    plot(curves, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
