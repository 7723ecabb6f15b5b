"""Which XLA:CPU flags pay on sim_jax's real train step: one subprocess per flag set, in rounds.

  python bench/xla_flags.py --quick                         # batch 8, LeNet-5: checks it runs
  python bench/xla_flags.py --workload=resnet18 --batch=64  # the screen in docs/performance.md

XLA_FLAGS is read once per process, so each flag set (and the PyTorch twin, as the yardstick)
runs in its own subprocess: build `bench.workloads.JaxRunner` (lower + compile, one warm-up
step), then time `--steps` steps one at a time. The whole sweep is repeated `--rounds` times
with the order reversed every other round, so that load from other jobs on a shared machine
hits every flag set alike; reported per flag set: step seconds min / median over every timed
step of every round, the speed-up over the first set (no flags) median over median, compile
seconds, and which library calls XLA emitted (custom-call / fusion targets counted in the
optimised HLO, so a flag that is accepted but does nothing is visible as such).
Writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # `python bench/xla_flags.py` puts bench/, not the repo, on the path

from bench import workloads  # noqa: E402

# label -> XLA_FLAGS. Names and values checked against jaxlib 0.10.2's flag table (an unknown
# value aborts the process with the flag listing, so a typo cannot pass as "no effect"). Every
# set runs on top of the trainer's own compile options (sim_jax.cpu.CPU_COMPILER_OPTIONS:
# YNNPACK convolutions off), which override XLA_FLAGS for the same field.
FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "onednn_fusions": "--xla_cpu_use_onednn=true "
                      "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    # Convolutions leave YNNPACK (on by default) for XLA's Eigen convolution.
    "eigen_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    # Not XLA_FLAGS but compile options (see COMPILE_OPTIONS): jaxlib's default YNNPACK list.
    "ynn_conv": "",
    "ynn_eltwise": "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
    "xnn_graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}

# label -> XLA compile options merged over the trainer's (JaxRunner's "xla." overrides).
COMPILE_OPTIONS = {
    "ynn_conv": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,"
                 "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
}


def _child(args: dict) -> dict:
  """Runs in the subprocess: time the step (or the torch twin) `steps` times, one at a time."""
  if args["label"] == "torch":
    r = workloads.TorchRunner(args["workload"], args["batch"])
    compile_s, targets = 0.0, {}
  else:
    r = workloads.JaxRunner(args["workload"], args["batch"], {
        f"xla.{k}": v for k, v in COMPILE_OPTIONS.get(args["label"], {}).items()})
    compile_s = r.compile_s
    hlo = r.compiled.as_text()
    targets = {}
    for m in re.finditer(r'custom_call_target="([^"]+)"|kind=(kCustom|kLoop|kOutput|kInput)', hlo):
      k = m.group(1) or m.group(2)
      targets[k] = targets.get(k, 0) + 1
    targets["convolution"] = len(re.findall(r"\bconvolution\(", hlo))
  times = []
  for _ in range(args["steps"]):
    t0 = time.perf_counter()
    taken = r.run(1)
    times.append((time.perf_counter() - t0) / taken)
  return {"times": times, "compile_s": compile_s, "hlo_targets": targets}


def run_one(label: str, flags: str, workload: str, batch: int, steps: int,
            timeout: float) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  arg = json.dumps(dict(label=label, workload=workload, batch=batch, steps=steps))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", arg],
                        capture_output=True, text=True, timeout=timeout, env=env, cwd=_REPO)
  if proc.returncode:
    return {"error": proc.stderr.strip()[-1500:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(xs):
  xs = sorted(xs)
  return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--quick", action="store_true", help="lenet5, batch 8, 1 round of 1 step")
  p.add_argument("--workload", default="resnet18")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=2, help="timed steps per subprocess")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--sets", default=",".join(FLAG_SETS),
                 help=f"comma-separated labels of {sorted(FLAG_SETS)} (plus 'torch')")
  p.add_argument("--no_torch", action="store_true", help="leave out the PyTorch yardstick")
  p.add_argument("--timeout", type=float, default=1200.0)
  p.add_argument("--out", default=os.path.join(_REPO, "bench", "results", "xla_flags.json"))
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(_child(json.loads(args.child))), flush=True)
    return {}
  if args.quick:
    args.workload, args.batch, args.steps, args.rounds = "lenet5", 8, 1, 1
    args.sets = "default,no_xnnpack"
    args.out = args.out.replace(".json", "_quick.json")
  labels = [s for s in args.sets.split(",") if s]
  for s in labels:
    if s not in FLAG_SETS and s != "torch":
      raise ValueError(f"--sets names {s!r}; expected some of {sorted(FLAG_SETS)} or 'torch'")
  if not args.no_torch and "torch" not in labels:
    labels.append("torch")
  runs = {s: [] for s in labels}
  for rnd in range(args.rounds):
    for s in (labels if rnd % 2 == 0 else labels[::-1]):
      r = run_one(s, FLAG_SETS.get(s, ""), args.workload, args.batch, args.steps, args.timeout)
      print(f"[xla_flags] round {rnd} {s}: "
            f"{r.get('error', '')[-300:] or [round(t, 3) for t in r['times']]}", flush=True)
      runs[s].append(r)
  images = args.batch * (2 if args.workload in ("lenet5", "resnet18", "vit_ti") else 1)
  out = {"date": time.strftime("%Y-%m-%d %H:%M"), "workload": args.workload, "batch": args.batch,
         "images_per_step": images, "steps": args.steps, "rounds": args.rounds,
         "load_avg": os.getloadavg(), "sets": {}}
  base = None
  for s in labels:
    ok = [r for r in runs[s] if "error" not in r]
    if not ok:
      out["sets"][s] = {"flags": FLAG_SETS.get(s, ""), "error": runs[s][0]["error"]}
      continue
    ts = [t for r in ok for t in r["times"]]
    entry = {"flags": FLAG_SETS.get(s, ""), "compile_options": COMPILE_OPTIONS.get(s, {}),
             "step_s": ts, "step_s_min": min(ts),
             "step_s_median": _median(ts), "img_per_s_median": images / _median(ts),
             "compile_s": [r["compile_s"] for r in ok], "hlo_targets": ok[0]["hlo_targets"]}
    if base is None and s != "torch":
      base = entry["step_s_median"]
    if base is not None:
      entry["speedup_vs_default_median"] = base / entry["step_s_median"]
    out["sets"][s] = entry
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  for s, e in out["sets"].items():
    print(f"{s:16s} {e.get('step_s_median', float('nan')):8.3f} s median  "
          f"{e.get('speedup_vs_default_median', float('nan')):5.2f}x  {e.get('error', '')[:200]}")
  return out


if __name__ == "__main__":
  main()
