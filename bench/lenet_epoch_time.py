"""Seed 002's Table 7 time column: seconds per training epoch of SN-LeNet-5 at 32, 64 and 96
pairs per batch, the trainer's own jitted step, the three timed in the same process, interleaved.

  python bench/lenet_epoch_time.py      # writes bench/results/lenet_epoch_time.{json,md}

An epoch is `configs/lenet_siamese.TRAIN_PAIRS` = 48,000 pairs, i.e. 48,000 / batch steps
(configs/lenet_siamese.py's batch_size ablation). Each batch size's step
(`sim_jax.train.jit_train_step` on the config of that ablation's variant) is compiled, run once,
then timed over --steps steps on one fixed batch of the real pairs sampler, in --rounds
interleaved rounds; s/epoch = (48,000 / batch) x the median time per step. Loading and
evaluation are excluded: the step alone, as the seed's s/epoch of a Keras fit on in-memory
arrays mostly is. The ablation runs measure the same thing less cleanly (their steps_per_sec
includes evaluation and other processes' load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from configs import lenet_siamese
from sim_jax import data, sharding, train
from sim_jax.experiments import variants


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=30, help="steps per timed round")
  p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
  p.add_argument("--out", default="bench/results/lenet_epoch_time.json")
  p.add_argument("--md", default="bench/results/lenet_epoch_time.md")
  return p.parse_args()


class Stepper:
  """The trainer's jitted step of one batch_size variant on one fixed batch."""

  def __init__(self, variant: variants.Variant):
    self.cfg = variants.apply_overrides(lenet_siamese.get_config(), variant.overrides)
    self.batch_size = int(self.cfg.train.batch_size)
    self.setup = train.make_setup(self.cfg)
    self.state = train.init_state(self.setup)
    it = data.create_train_iterator(self.cfg.data, global_batch_size=self.batch_size, seed=0)
    self.batch = sharding.host_to_global(next(it), self.setup.mesh)
    if hasattr(it, "close"):
      it.close()
    self.step = train.jit_train_step(self.setup)
    self.run(1)  # compile and first execution

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    m = None
    for _ in range(n):
      self.state, m = self.step(self.state, self.batch)
    jax.block_until_ready((self.state.params, m))
    return time.perf_counter() - t0


def main():
  args = parse_args()
  steppers = {v.label: Stepper(v) for v in lenet_siamese.get_ablations()["batch_size"].variants}
  per_step = {label: [] for label in steppers}
  for _ in range(args.rounds):
    for label, s in steppers.items():
      per_step[label].append(s.run(args.steps) / args.steps)
  rows = {}
  for label, s in steppers.items():
    steps_per_epoch = lenet_siamese.TRAIN_PAIRS / s.batch_size
    med = float(np.median(per_step[label]))
    rows[label] = {"batch_size": s.batch_size, "seconds_per_step_median": med,
                   "seconds_per_step_all": per_step[label], "steps_per_epoch": steps_per_epoch,
                   "seconds_per_epoch": med * steps_per_epoch}
  result = {"steps": args.steps, "rounds": args.rounds, "variants": rows,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "backend": jax.default_backend(), "load_average": list(os.getloadavg())}}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  lines = ["| batch (pairs) | ms per step (median) | steps per epoch | s per epoch |",
           "|---|---|---|---|"]
  lines += [f"| {r['batch_size']} | {1e3 * r['seconds_per_step_median']:.1f} | "
            f"{r['steps_per_epoch']:.0f} | {r['seconds_per_epoch']:.1f} |" for r in rows.values()]
  lines.append(f"\n`python bench/lenet_epoch_time.py` on {jax.default_backend()}, "
               f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end.")
  with open(args.md, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
