"""Parameters and forward FLOPs per image of every backbone row of configs/embeddings.py.

  python docs/experiments/embeddings_models.py > docs/experiments/embeddings_models.md

FLOPs: XLA's cost analysis of the eval-mode forward pass at batch 1 (`sim_jax.models.summary`;
a multiply-add counts 2), at the table's 28x28x1 input.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from configs import embeddings  # noqa: E402
from sim_jax.experiments.variants import apply_overrides, as_ablation  # noqa: E402
from sim_jax.models import summary  # noqa: E402


def main() -> None:
  base = embeddings.get_config()
  shape = (int(base.data.image_size),) * 2 + (1,)
  print("| backbone | parameters | backbone parameters | forward MFLOPs / image |")
  print("|---|---:|---:|---:|")
  for v in as_ablation(embeddings.get_ablations()["backbones"]).variants:
    config = apply_overrides(base, v.overrides)
    s = summary.summarize(config.model, shape)
    flops = "n/a" if s["flops_per_image"] is None else f"{s['flops_per_image'] / 1e6:.1f}"
    print(f"| {v.label} | {s['params']:,} | {s['params_backbone']:,} | {flops} |")


if __name__ == "__main__":
  main()
