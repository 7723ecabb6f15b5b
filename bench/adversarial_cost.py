"""What adversarial training costs per step: clean vs FGSM vs PGD-k, side by side in one process.

Each variant is `bench/workloads.JaxRunner` (the trainer's real jitted step on one fixed batch)
with `train.adversarial.method` / `steps` set (`sim_jax/adversarial.py`; ratio 0.5, epsilon 8,
step size 2 pixel levels). Every variant is compiled first; then `--rounds` rounds each time
`--steps` steps of every variant, in an order that alternates between rounds, so all variants see
the same machine load. Reported per variant: the median seconds per step over the rounds (with
min-max), the ratio to the clean step, and the compile time. An attack of k gradient steps costs
about k extra forward + backward passes of the batch, so the expected ratio is about 1 + k.

  python bench/adversarial_cost.py --quick                   # lenet5, 2 rounds: a smoke run
  python bench/adversarial_cost.py                           # multiscale (icons-sized), PGD-3/7
  python bench/adversarial_cost.py --workload=lenet5 --batch=128 --pgd_steps=3,7,10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from bench import workloads  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The icons experiment's encoder size (configs/icons.py: multiscale width 8, 64x64 glyphs).
DEFAULT_SET = {"multiscale": {"model.width": 8}}


def variants(pgd_steps: list[int]) -> list[tuple[str, dict]]:
  """(label, overrides) of clean, FGSM and PGD with each step count."""
  out = [("clean", {"train.adversarial.method": "none"}),
         ("fgsm", {"train.adversarial.method": "fgsm"})]
  out += [(f"pgd{k}", {"train.adversarial.method": "pgd", "train.adversarial.steps": k})
          for k in pgd_steps]
  return out


def measure(workload: str, batch: int, pgd_steps: list[int], rounds: int, steps: int,
            extra: dict) -> dict:
  runners, compile_s = {}, {}
  for label, overrides in variants(pgd_steps):
    t0 = time.perf_counter()
    runners[label] = workloads.JaxRunner(workload, batch, {**extra, **overrides})
    compile_s[label] = time.perf_counter() - t0
    print(f"{label}: compiled and first step in {compile_s[label]:.1f} s", flush=True)
  times: dict[str, list[float]] = {label: [] for label in runners}
  for r in range(rounds):
    order = list(runners) if r % 2 == 0 else list(reversed(runners))
    for label in order:
      t0 = time.perf_counter()
      taken = runners[label].run(steps)
      times[label].append((time.perf_counter() - t0) / taken)
  clean = statistics.median(times["clean"])
  rows = {label: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                  "ratio_to_clean": statistics.median(t) / clean, "compile_s": compile_s[label],
                  "seconds_per_round": t} for label, t in times.items()}
  return {"workload": workload, "batch": batch, "rounds": rounds, "steps_per_round": steps,
          "overrides": extra, "variants": rows,
          "environment": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                          "affinity": len(os.sched_getaffinity(0)), "jax": jax.__version__,
                          "devices": [str(d) for d in jax.devices()],
                          "xla_flags": os.environ.get("XLA_FLAGS", "")}}


def table(result: dict, command: str) -> str:
  lines = [f"Adversarial training step cost: workload {result['workload']}, batch "
           f"{result['batch']}, {result['rounds']} rounds x {result['steps_per_round']} steps "
           f"(`{command}`)", "",
           "| variant | s / step (median) | min-max | x clean | compile + first step (s) |",
           "|---|---|---|---|---|"]
  for label, v in result["variants"].items():
    lines.append(f"| {label} | {v['median_s']:.4f} | {v['min_s']:.4f}-{v['max_s']:.4f} | "
                 f"{v['ratio_to_clean']:.2f} | {v['compile_s']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workload", default="multiscale", choices=sorted(workloads.WORKLOADS))
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--pgd_steps", default="3,7", help="comma-separated PGD step counts")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
  p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
  p.add_argument("--quick", action="store_true", help="lenet5, batch 16, PGD-3, 2 rounds of 1")
  p.add_argument("--out", default="", help="JSON path (default bench/results/adversarial_cost"
                 "[_quick].json; the markdown table beside it)")
  a = p.parse_args(argv)
  if a.quick:
    a.workload, a.batch, a.pgd_steps, a.rounds, a.steps = "lenet5", 16, "3", 2, 1
  pgd = [int(k) for k in a.pgd_steps.split(",") if k.strip()]
  extra = {**DEFAULT_SET.get(a.workload, {}), **workloads.parse_overrides(a.set)}
  result = measure(a.workload, a.batch, pgd, a.rounds, a.steps, extra)
  out = a.out or os.path.join(RESULTS, "adversarial_cost_quick.json" if a.quick
                              else "adversarial_cost.json")
  command = "python bench/adversarial_cost.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
  workloads.write_results(result, out, out[:-5] + ".md", table(result, command.strip()))
  return result


if __name__ == "__main__":
  main()
