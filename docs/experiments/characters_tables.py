"""Seed 001's Tables 1 and 2 next to ours, from the runner's ablation.json files.

Reads `<tables>/ablation.json` (`python ablate.py --config=configs/characters.py --ablation=tables
--workdir=runs/characters_tables`) and, if given, those of `--ablation=large_batch` and
`--ablation=large_batch_equal_steps`, and prints markdown: each cell is the mean (min–max) over
the seeds, and each metric's chance level and floors (raw pixels; random-init LeNet-5) follow in
brackets. From the repository root:

  python docs/experiments/characters_tables.py runs/characters_tables \
      runs/characters_large_batch runs/characters_large_batch_equal_steps
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from sim_jax.experiments.tables import Summary, format_summary  # noqa: E402

METRICS = ("retrieval/mrr@5", "retrieval/recall@1", "validation/mrr@5", "zeroshot/mrr@5")
# Seed 001's MRR@5 (its Tables 1 and 2), by our variant label.
SEED_TABLE1 = {"classifier": 0.92, "cosine": 0.81, "kl": 0.82, "cross_entropy": 0.88}
SEED_TABLE2 = {"classifier": 0.92, "contrastive": 0.948, "triplet_batch_all": 0.957,
               "surrogate": 0.92}
TABLE1_LABEL = {"classifier": "Euclidean", "cosine": "Cosine", "kl": "KL",
                "cross_entropy": "Cross-entropy"}
TABLE2_LABEL = {"classifier": "No metric learning (the classifier)", "contrastive": "Contrastive",
                "triplet_batch_all": "Triplet, online batch-all mining",
                "surrogate": "Recall@k surrogate (batch 128)",
                "surrogate_b2048_lr4e-3": "Recall@k surrogate (batch 2,048, 96 steps)",
                "surrogate_b128_96_steps": "Recall@k surrogate (batch 128, 96 steps)"}


def load(workdir: str) -> tuple[list[int], dict[str, dict]]:
  path = os.path.join(workdir, "ablation.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: run the ablation's ablate.py command first.")
  with open(path) as f:
    d = json.load(f)
  return d["seeds"], {v["label"]: v for v in d["variants"]}


def spread(s: dict) -> str:
  """The runner's 'mean (min–max)' of one ablation.json summary record."""
  return format_summary(Summary(s["mean"], s["min"], s["max"], s["n"]))


def cell(summary: dict, metric: str) -> str:
  """The metric over seeds, then [chance; raw pixels; random init] (floors as their means)."""
  m = summary.get(metric)
  if m is None:
    return "not run"
  refs = "; ".join(f"{m[k]['mean']:.4f}" if k in m else "n/a"
                   for k in ("chance", "raw_pixels", "random_init"))
  return f"{spread(m['metric'])} [{refs}]"


def rows(variants: dict, labels: dict, seed_values: dict) -> list[str]:
  out = ["| method | seed 001 MRR@5 | seeds | " + " | ".join(f"`{m}`" for m in METRICS) + " |",
         "|---" * (3 + len(METRICS)) + "|"]
  for label, name in labels.items():
    v = variants.get(label)
    if v is None:
      continue
    seeds = (", ".join(map(str, v["seeds"])) or "–") if v["status"] in ("ok", "cached") \
        else v["status"]
    seed = seed_values.get(label)
    out.append(f"| {name} | {seed if seed is not None else '–'} | {seeds} | "
               + " | ".join(cell(v["summary"], m) for m in METRICS) + " |")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("tables")
  parser.add_argument("more", nargs="*", help="large_batch / large_batch_equal_steps workdirs")
  args = parser.parse_args()
  seeds, variants = load(args.tables)
  print(f"Table 1: one classifier, four distances (seeds {seeds}).\n")
  print("\n".join(rows(variants, TABLE1_LABEL, SEED_TABLE1)))
  for workdir in args.more:
    variants = {**variants, **load(workdir)[1]}
  print(f"\nTable 2: ranked by Euclidean distance (seeds {seeds}).\n")
  print("\n".join(rows(variants, TABLE2_LABEL, SEED_TABLE2)))
  print("\nCells: mean (min–max) over the seeds [chance; raw pixels; random-init LeNet-5].")


if __name__ == "__main__":
  main()
