"""Each framework's train step under each memory allocator, each in its own worker process.

  python bench/allocators.py --quick --workloads=lenet5     # batch 8: checks that it runs
  python bench/allocators.py --workloads=lenet5             # the workload's full batch
  python bench/allocators.py                                # all four workloads (see memory)

Why: XLA:CPU mallocs one multi-GiB scratch buffer per step, which glibc maps and unmaps every
time (page faults in 4 KiB pages) unless malloc asks for transparent huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`); PyTorch makes many mid-size allocations and is fastest
with tcmalloc, and slowest with huge pages. One process cannot give both frameworks their best
allocator, so this bench runs every (framework, allocator) pair in its own persistent worker
(bench/workers.py, running bench/workloads.py's JaxRunner / TorchRunner), and times them in
interleaved rounds: in round r every worker times `--steps` steps once, the order rotated by r,
after `--warmup_rounds` untimed rounds (an allocator's caches and arenas grow over the first
steps of a fresh process; a long training run sees the steady state),
so that load from other jobs hits every pair alike. Each worker takes `--rewarm` untimed steps
right before its timed ones (workloads.REWARM says why: on these VMs a step right after another
process's step re-faults memory the host has taken back).

Allocators: glibc (defaults), glibc_hugetlb (the tunable above), tcmalloc and jemalloc
(`LD_PRELOAD` of Debian's libtcmalloc-minimal4 / libjemalloc2; skipped, with the reason printed,
where the .so is missing). Every worker starts from the parent's environment with
`GLIBC_TUNABLES` and `LD_PRELOAD` removed, then adds its allocator's settings; each worker also
reports the malloc libraries really mapped into it (/proc/self/maps).

Reported per workload, framework and allocator: step seconds min / median over rounds, and
per-step medians of system CPU seconds and minor page faults (getrusage in the worker); per
framework its best allocator (lowest median step time); the throughput ratios sim_jax / torch
with each framework in its best environment and with both on plain glibc. `best_overall` picks,
per framework, the allocator with the lowest geometric mean of step time relative to glibc
over the measured workloads; `bench/train_step.py --envs=best` uses the per-workload winners
(or `best_overall` for a workload not measured here).

Memory: all 2 x 4 workers of a workload live at once (at most two start at once and they are
timed one at a time, so their transient peaks do not pile up); tcmalloc and jemalloc keep freed
memory, so a ViT-Ti sim_jax worker under them holds its ~4.4 GiB scratch buffer between steps.
Use `--frameworks` to measure one framework at a time if memory is short. A workload whose worker
fails (e.g. killed for memory) is recorded with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import sysconfig
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from bench import workers, workloads  # noqa: E402

HUGETLB = "glibc.malloc.hugetlb=1"
# allocator -> (library file names to look for, or None, extra environment)
ALLOCATOR_LIBS = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}
ALLOCATOR_ORDER = ("glibc", "glibc_hugetlb", "tcmalloc", "jemalloc")
DEBIAN_PACKAGES = "libjemalloc2 libtcmalloc-minimal4"


def find_library(filename: str) -> str | None:
  """The full path of a shared library in the usual Debian / multiarch directories, or None."""
  multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
  for d in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib", "/usr/lib64",
            "/usr/local/lib"):
    path = os.path.join(d, filename)
    if os.path.exists(path):
      return path
  return None


def allocator_envs() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
  """({allocator: environment settings} for those available, {allocator: why skipped})."""
  envs = {"glibc": {}, "glibc_hugetlb": {"GLIBC_TUNABLES": HUGETLB}}
  skipped = {}
  for name, lib in ALLOCATOR_LIBS.items():
    path = find_library(lib)
    if path:
      envs[name] = {"LD_PRELOAD": path}
    else:
      skipped[name] = (f"{lib} not found (Debian: apt-get install -y {DEBIAN_PACKAGES})")
  return envs, skipped


def run_workload(name: str, batch: int, rounds: int, steps: int, envs: dict[str, dict],
                 frameworks: tuple[str, ...] = workers.FRAMEWORKS,
                 timeout: float = 1800.0, warmup_rounds: int = 0,
                 rewarm: int = workloads.REWARM) -> dict:
  """Start a worker per (framework, allocator), time `rounds` rotated rounds, summarise."""
  images = batch * workloads.WORKLOADS[name]["per_item"]
  specs = [dict(label=f"{fw}/{a}", framework=fw, workload=name, batch=batch, timeout=timeout,
                env=workers.worker_env(env, clear_allocator=True))
           for fw in frameworks for a, env in envs.items()]
  pool = workers.start_all(specs)
  try:
    samples = {w.label: [] for w in pool}
    for _ in range(warmup_rounds):
      for w in pool:
        w.step(steps)
    for r in range(rounds):
      k = r % len(pool)
      for w in pool[k:] + pool[:k]:
        samples[w.label].append(w.step(steps, rewarm))
    stats = {w.label: w.request("stats") for w in pool}
  finally:
    for w in pool:
      w.close()
  runs = {}
  for w in pool:
    fw, alloc = w.label.split("/")
    s = samples[w.label]
    step = [x["step_s"] for x in s]
    runs.setdefault(fw, {})[alloc] = {
        "env": envs[alloc], "malloc_libs": w.info["malloc_libs"],
        "step_s": step, "step_s_min": min(step), "step_s_median": statistics.median(step),
        "img_per_s_median": images / statistics.median(step),
        "sys_s_median": statistics.median(x["sys_s"] for x in s),
        "user_s_median": statistics.median(x["user_s"] for x in s),
        "minflt_median": statistics.median(x["minflt"] for x in s),
        "peak_rss_bytes": stats[w.label]["peak_rss_bytes"],
        "train_state_step": stats[w.label].get("train_state_step")}
  out = {"workload": name, "batch": batch, "images_per_step": images, "rounds": rounds,
         "warmup_rounds": warmup_rounds, "rewarm": rewarm,
         "steps": steps, "runs": runs,
         "best": {fw: min(r, key=lambda a, r=r: r[a]["step_s_median"]) for fw, r in runs.items()}}
  if set(runs) == set(workers.FRAMEWORKS):
    j, t = runs["sim_jax"], runs["torch"]
    bj, bt = j[out["best"]["sim_jax"]], t[out["best"]["torch"]]
    out["ratio_best_median"] = bt["step_s_median"] / bj["step_s_median"]
    out["ratio_best_min"] = bt["step_s_min"] / bj["step_s_min"]
    if "glibc" in j and "glibc" in t:
      out["ratio_glibc_median"] = t["glibc"]["step_s_median"] / j["glibc"]["step_s_median"]
      out["ratio_glibc_min"] = t["glibc"]["step_s_min"] / j["glibc"]["step_s_min"]
  return out


def best_overall(workloads: list[dict]) -> dict[str, str]:
  """Per framework: the allocator with the lowest geometric mean of step time / glibc's."""
  out = {}
  for fw in workers.FRAMEWORKS:
    scores = {}
    for w in workloads:
      runs = w.get("runs", {}).get(fw, {})
      if "glibc" not in runs:
        continue
      for a, r in runs.items():
        scores.setdefault(a, []).append(r["step_s_median"] / runs["glibc"]["step_s_median"])
    full = {a: v for a, v in scores.items() if len(v) == max(map(len, scores.values()))}
    if full:
      out[fw] = min(full, key=lambda a: math.fsum(map(math.log, full[a])))
  return out


def best_envs(result: dict, workload: str) -> dict[str, tuple[str, dict[str, str]]]:
  """framework -> (allocator name, environment settings) that won for `workload`, falling back
  to `best_overall` when this result did not measure it."""
  per = {w["workload"]: w["best"] for w in result["workloads"] if "best" in w}
  out = {}
  for fw in workers.FRAMEWORKS:
    name = per.get(workload, {}).get(fw) or result.get("best_overall", {}).get(fw)
    if name is None:
      raise ValueError(f"{result.get('_path', 'the allocators JSON')} has no best allocator for "
                       f"{fw} (workload {workload!r}); run bench/allocators.py first")
    out[fw] = (name, result["allocators"][name])
  return out


# ---------------------------------------------------------------------------------- reporting


def _rewarm_note(result: dict) -> str:
  r = result.get("rewarm")
  return (", no re-warm step (timed right after another worker's step)" if not r else
          f", each timed step right after {r} untimed step(s) of its own worker")


def markdown(result: dict) -> str:
  """A table of every (workload, framework, allocator) and the ratios (bench/results/)."""
  end = result.get("load_avg_at_end")
  lines = [
      f"Measured {result['date']} (load average at start {result['load_avg_at_start'][0]:.1f}"
      f"{'' if end is None else f', at end {end[0]:.1f}'}), "
      f"each (framework, allocator) in its own worker process, {result['rounds']} rotated "
      f"interleaved round(s) after {result.get('warmup_rounds', 0)} untimed"
      f"{_rewarm_note(result)}. Skipped: "
      f"{'; '.join(f'{k}: {v}' for k, v in result['skipped'].items()) or 'none'}. "
      f"Best overall (geometric mean vs glibc): "
      f"{', '.join(f'{k} {v}' for k, v in result.get('best_overall', {}).items())}.",
      "",
      "| workload | framework | allocator | step s min / median | sys s / step | "
      "minor faults / step | peak RSS MiB |",
      "|---|---|---|---|---|---|---|"]
  for w in result["workloads"]:
    if "error" in w:
      lines.append(f"| {w['workload']} (batch {w['batch']}) | - | - | failed: "
                   f"{w['error'].strip().splitlines()[0][:150]!r} | - | - | - |")
      continue
    for fw, runs in w["runs"].items():
      for a in ALLOCATOR_ORDER:
        if a not in runs:
          continue
        r = runs[a]
        best = " (best)" if w["best"].get(fw) == a else ""
        lines.append(
            f"| {w['workload']} (batch {w['batch']}) | {fw} | {a}{best} | "
            f"{r['step_s_min']:.3f} / {r['step_s_median']:.3f} | {r['sys_s_median']:.3f} | "
            f"{r['minflt_median']:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
  lines += ["", "| workload | sim_jax best / torch best: ratio median (min) | "
            "both on glibc: ratio median (min) |", "|---|---|---|"]
  for w in result["workloads"]:
    if "ratio_best_median" not in w:
      continue
    glibc = ("-" if "ratio_glibc_median" not in w else
             f"{w['ratio_glibc_median']:.2f}x ({w['ratio_glibc_min']:.2f}x)")
    lines.append(f"| {w['workload']} | {w['best']['sim_jax']} / {w['best']['torch']}: "
                 f"**{w['ratio_best_median']:.2f}x** ({w['ratio_best_min']:.2f}x) | {glibc} |")
  if result.get("note"):
    lines += ["", result["note"]]
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="batch 8, 2 rounds of 1 step")
  p.add_argument("--workloads", default=",".join(workloads.WORKLOADS))
  p.add_argument("--frameworks", default=",".join(workers.FRAMEWORKS))
  p.add_argument("--allocators", default=",".join(ALLOCATOR_ORDER))
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--rewarm", type=int, default=workloads.REWARM,
                 help="untimed steps each worker takes right before its timed ones per round")
  p.add_argument("--warmup_rounds", type=int, default=None,
                 help="untimed rounds first (default 1; 0 with --quick)")
  p.add_argument("--steps", type=int, default=0,
                 help="steps per timed round (0: the workload's default)")
  p.add_argument("--batch", type=int, default=0, help="override every workload's batch")
  p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker reply")
  p.add_argument("--out", default=os.path.join(_REPO, "bench", "results", "allocators.json"))
  p.add_argument("--md", default=os.path.join(_REPO, "bench", "results", "allocators.md"))
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.quick:
    args.rounds, args.steps, args.batch = 2, 1, args.batch or 8
    args.warmup_rounds = 0 if args.warmup_rounds is None else args.warmup_rounds
    args.out = args.out.replace(".json", "_quick.json")
    args.md = args.md.replace(".md", "_quick.md")
  args.warmup_rounds = 1 if args.warmup_rounds is None else args.warmup_rounds
  names = [n for n in args.workloads.split(",") if n]
  for n in names:
    if n not in workloads.WORKLOADS:
      raise ValueError(f"--workloads names {n!r}; expected some of {sorted(workloads.WORKLOADS)}")
  frameworks = tuple(f for f in args.frameworks.split(",") if f)
  for f in frameworks:
    if f not in workers.FRAMEWORKS:
      raise ValueError(f"--frameworks names {f!r}; expected some of {workers.FRAMEWORKS}")
  wanted = [a for a in args.allocators.split(",") if a]
  for a in wanted:
    if a not in ALLOCATOR_ORDER:
      raise ValueError(f"--allocators names {a!r}; expected some of {ALLOCATOR_ORDER}")
  envs, skipped = allocator_envs()
  for a, why in skipped.items():
    if a in wanted:
      print(f"[allocators] skipping {a}: {why}", flush=True)
  envs = {a: e for a, e in envs.items() if a in wanted}
  result = {"date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick, "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds, "rewarm": args.rewarm,
            "load_avg_at_start": os.getloadavg(), "allocators": envs,
            "skipped": {a: w for a, w in skipped.items() if a in wanted},
            "frameworks": list(frameworks), "workloads": []}
  for n in names:
    batch = args.batch or workloads.WORKLOADS[n]["batch"]
    steps = args.steps or workloads.WORKLOADS[n]["steps"]
    try:
      w = run_workload(n, batch, args.rounds, steps, envs, frameworks, args.timeout,
                       args.warmup_rounds, args.rewarm)
    except workers.WorkerError as e:  # e.g. a worker killed for memory: report, go on
      print(f"[allocators] {n} failed: {e}", flush=True)
      result["workloads"].append({"workload": n, "batch": batch, "error": str(e)})
      continue
    print(json.dumps({k: w.get(k) for k in ("workload", "best", "ratio_best_median",
                                            "ratio_glibc_median")}), flush=True)
    result["workloads"].append(w)
  result["best_overall"] = best_overall(result["workloads"])
  result["load_avg_at_end"] = os.getloadavg()
  workloads.write_results(result, args.out, args.md, markdown(result))
  return result


if __name__ == "__main__":
  main()
