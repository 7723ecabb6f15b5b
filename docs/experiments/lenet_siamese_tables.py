"""Rewrites Tables 6 and 7 of docs/experiments/lenet_siamese.md from the ablation.json files that
`python ablate.py --config=configs/lenet_siamese.py --ablation=learning_rate|batch_size` wrote
and from bench/results/lenet_epoch_time.json. From the repository root:

  python docs/experiments/lenet_siamese_tables.py
"""

import json
import re

DOC = "docs/experiments/lenet_siamese.md"
KEYS = ("verification/fixed_accuracy_train", "verification/fixed_accuracy_validation",
        "verification/fixed_accuracy_test", "verification/accuracy")
SEED_LR = {"lr_1e-4": "99.75", "lr_1e-3": "99.95", "lr_1e-2": "98.10"}  # seed 002, Table 6
SEED_BATCH = {"batch_32": ("99.93", "34.76"), "batch_64": ("99.95", "17.36"),
              "batch_96": ("99.83", "16.80")}  # seed 002, Table 7


def cell(summary) -> str:
  """'mean (min–max)' in percent over the seeds; the mean alone for one seed."""
  m = summary["metric"]
  if m["n"] == 1:
    return f"{100 * m['mean']:.2f}"
  return f"{100 * m['mean']:.2f} ({100 * m['min']:.2f}–{100 * m['max']:.2f})"


def load(ablation: str):
  with open(f"runs/lenet_siamese_{ablation}/ablation.json") as f:
    d = json.load(f)
  return ", ".join(map(str, d["seeds"])), {v["label"]: v["summary"] for v in d["variants"]}


def lr_table() -> str:
  seeds, rows = load("learning_rate")
  out = [f"### Table 6: learning rate (train accuracy; mean and min–max over seeds {seeds})", "",
         "| lr | seed 002: train, MNIST, 50 epochs | here: train (s > 0.5) | validation | test "
         "| test, fitted |", "|---|---|---|---|---|---|"]
  for label, s in rows.items():
    out.append(f"| {label[3:]} | {SEED_LR[label]} | **{cell(s[KEYS[0]])}** | "
               + " | ".join(cell(s[k]) for k in KEYS[1:]) + " |")
  out += ["", "Fashion-MNIST, 1 epoch, batch 64. Runs: the `learning_rate` ablation "
          "(`lenet_siamese_table_learning_rate.md`)."]
  return "\n".join(out)


def batch_table() -> str:
  seeds, rows = load("batch_size")
  with open("bench/results/lenet_epoch_time.json") as f:
    epoch = json.load(f)["variants"]
  out = [f"### Table 7: batch size (train accuracy at one epoch; mean and min–max over seeds "
         f"{seeds})", "",
         "| batch (pairs) | seed 002: train | seed 002: s / epoch | here: train (s > 0.5) | test "
         "| here: s / epoch (bench) |", "|---|---|---|---|---|---|"]
  for label, s in rows.items():
    out.append(f"| {label[6:]} | {SEED_BATCH[label][0]} | {SEED_BATCH[label][1]} | "
               f"**{cell(s[KEYS[0]])}** | {cell(s[KEYS[2]])} | "
               f"{epoch[label]['seconds_per_epoch']:.1f} |")
  out += ["", "Every batch size sees the same 48,000 pairs per epoch, so batch 32 takes twice "
          "the steps of batch 64. `batch_64` is the run of `lr_1e-3` (the same configuration). "
          "The s / epoch column is `python bench/lenet_epoch_time.py`: the trainer's step at "
          "each batch size, interleaved in one process, on CPU under load average 17."]
  return "\n".join(out)


def main():
  with open(DOC) as f:
    text = f.read()
  text = re.sub(r"### Table 6:.*?(?=\n### Table 7:)", lr_table() + "\n", text, flags=re.S)
  text = re.sub(r"### Table 7:.*?(?=\n### MNIST stand-in)", batch_table() + "\n", text,
                flags=re.S)
  with open(DOC, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
