r"""Tables and the trials plot of docs/experiments/icons_nas.md, from the search and the ablation.

  python docs/experiments/icons_nas_report.py trials docs/experiments/icons_search.json \
      docs/experiments/icons_nas_trials.png docs/experiments/icons_nas_ablation.json
  python docs/experiments/icons_nas_report.py compare docs/experiments/icons_nas_ablation.json
  python docs/experiments/icons_nas_report.py cost runs/icons_nas
  python docs/experiments/icons_nas_report.py steptime docs/experiments/icons_search_best.json

trials plots the search's objective against the trial number (dots: complete trials, crosses
at the bottom: failed ones; the line: the best value so far) from the search.json that
`python -m sim_jax.experiments.search` writes; given an ablation JSON, the band is its
hand_designed runs' min-max of the objective over seeds (the seed-to-seed spread of one
architecture). compare prints, per variant of the ablation JSON
that `ablate.py` writes, mean [min-max] over its runs (seeds) of the validation and heldout
metrics, next to chance and the two floors where the metric has them. cost prints, per variant
of an ablation workdir, the encoder's parameter count and the median train step time, both read
from the runs' log.txt (the trainer logs "Model multiscale: N parameters" and CLU's
`steps_per_sec` every 25 steps; the first report is dropped, it includes compilation), and the
wall time per run (from the "=== ablate.py <time>" line the runner writes before launching to
the log's last timestamped line: start-up, data, compilation, training and evaluation). Both
are measured on the shared host under whatever else ran at the time; steptime is the fair
comparison: the hand-designed config and the config with best.json's overrides, their jitted
train steps built in one process and timed alternately (`--repeats` blocks of `--steps` steps
on one synthetic batch, as docs/experiments/icons_step_time.py does), median seconds per step.
"""

import datetime
import glob
import json
import os
import re
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import icons_step_time  # noqa: E402  (this directory: the synthetic batch of the step timing)

import sim_jax.data as sd  # noqa: E402
from sim_jax import train  # noqa: E402
from sim_jax.experiments import commands  # noqa: E402

ICONS = os.path.join(REPO, "configs", "icons.py")

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
HEADER = re.compile(r"^=== ablate.py (\S+):", re.M)
GLOG_TIME = re.compile(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+)", re.M)


def plot_trials(search_json: str, out_png: str, ablation_json: str | None = None) -> None:
  """Objective vs trial number, with the running best (maximisation or minimisation) and,
  from `ablation_json`, the hand-designed architecture's spread over seeds."""
  with open(search_json) as f:
    data = json.load(f)
  rows = data["trials"]
  done = [r for r in rows if r["value"] is not None]
  xs = np.array([r["number"] for r in done])
  ys = np.array([r["value"] for r in done])
  better = np.maximum if data["direction"] == "MAXIMIZE" else np.minimum
  fig, ax = plt.subplots(figsize=(8.5, 3.5))
  ax.plot(xs, ys, "o", label="trial")
  ax.step(xs, better.accumulate(ys), where="post", label="best so far")
  if ablation_json:
    with open(ablation_json) as f:
      hand = [v for v in json.load(f)["variants"] if v["label"] == "hand_designed"]
    band = run_stats(hand[0], data["objective"]) if hand else None
    if band:
      ax.axhspan(band["min"], band["max"], color="grey", alpha=0.25,
                 label="hand-designed, min-max over seeds")
  failed = [r["number"] for r in rows if r["value"] is None]
  if failed:
    ax.plot(failed, [ys.min()] * len(failed), "x", color="red", label="failed")
  ax.set_xlabel("trial")
  ax.set_ylabel(data["objective"])
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
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
            if r.get("status") in ("ok", "cached") and metric in r.get("metrics", {})]
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


def log_cost(log_path: str) -> tuple[int | None, float | None, float | None]:
  """(parameters, median seconds per step, wall seconds) of a run's log.txt, its last launch."""
  with open(log_path, errors="replace") as f:
    text = f.read()
  starts = list(HEADER.finditer(text))
  text = text[starts[-1].start():] if starts else text
  params = PARAMS.findall(text)
  rates = [float(r) for step, r in STEPS_PER_SEC.findall(text) if int(step) > 25]
  wall = None
  stamps = GLOG_TIME.findall(text)
  if starts and stamps:
    begin = datetime.datetime.fromisoformat(starts[-1].group(1))
    mmdd, clock = stamps[-1]
    end = datetime.datetime.fromisoformat(f"{begin.year}-{mmdd[:2]}-{mmdd[2:]}T{clock}")
    wall = (end - begin).total_seconds()
  return (int(params[-1].replace(",", "")) if params else None,
          1.0 / float(np.median(rates)) if rates else None, wall)


def _spread(values, scale: float = 1.0, unit: str = "") -> str:
  """'median [min-max]' of `values` times `scale`, or n/a."""
  if not values:
    return "n/a"
  v = [scale * x for x in values]
  return f"{np.median(v):.0f}{unit} [{min(v):.0f}-{max(v):.0f}]"


def cost(workdir: str) -> None:
  """Markdown: variant, parameters, step time and wall time per run over its seeds' runs."""
  labels = sorted(d for d in os.listdir(workdir) if glob.glob(os.path.join(workdir, d, "seed_*")))
  print("| variant | parameters | step time, ms (median [min-max] of runs) | wall per run, s |")
  print("|---|---|---|---|")
  for label in labels:
    costs = [log_cost(p) for p in sorted(glob.glob(os.path.join(workdir, label, "seed_*",
                                                               "log.txt")))]
    params = sorted({c[0] for c in costs if c[0] is not None})
    steps = [c[1] for c in costs if c[1] is not None]
    walls = [c[2] for c in costs if c[2] is not None]
    print(f"| {label} | {', '.join(f'{p:,}' for p in params) or 'n/a'} | "
          f"{_spread(steps, 1000.0)} | {_spread(walls)} |")


def steptime(best_json: str, steps: int = 10, repeats: int = 5) -> None:
  """Median seconds per jitted train step of the hand-designed and the searched config, timed
  alternately in one process (so both see the same load)."""
  with open(best_json) as f:
    overrides = json.load(f)["overrides"]
  # The configs launch.py would build (the ablation runner's own path from overrides to flags).
  configs = {label: commands.child_config(commands.launch_command(ICONS, "unused", o), REPO)
             for label, o in (("hand_designed", {}), ("searched", overrides))}
  runs = {}
  for label, config in configs.items():
    batch = icons_step_time.batch_for(config)
    info = sd.DatasetInfo("icon_themes", tuple(batch["image"].shape[-3:]), 64, {"train": 512})
    setup = train.make_setup(config, devices=jax.devices()[:1], info=info)
    state = train.init_state(setup, pretrained=False)
    step = train.jit_train_step(setup)
    state = step(state, batch)[0]  # compile; not timed
    jax.block_until_ready(state)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    runs[label] = [step, state, batch, params, []]
  for _ in range(repeats):
    for run in runs.values():
      step, state, batch = run[:3]
      t = time.perf_counter()
      for _ in range(steps):
        state = step(state, batch)[0]
      jax.block_until_ready(state)
      run[1] = state
      run[4].append((time.perf_counter() - t) / steps)
  print("| variant | parameters (encoder + head) | ms per train step (median [min-max]) |")
  print("|---|---|---|")
  for label, run in runs.items():
    print(f"| {label} | {run[3]:,} | {_spread(run[4], 1000.0)} |")


def main(argv):
  if len(argv) >= 4 and argv[1] == "trials":
    plot_trials(argv[2], argv[3], argv[4] if len(argv) > 4 else None)
  elif len(argv) >= 3 and argv[1] == "compare":
    compare(argv[2])
  elif len(argv) >= 3 and argv[1] == "cost":
    cost(argv[2])
  elif len(argv) >= 3 and argv[1] == "steptime":
    steptime(argv[2])
  else:
    print(__doc__, file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
