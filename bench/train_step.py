"""One full training step: sim_jax vs the same model, loss, batch and optimizer in PyTorch.

  python bench/train_step.py --quick        # tiny batches, one repeat: checks that it runs
  python bench/train_step.py                # the four workloads below, 3 interleaved repeats
  python bench/train_step.py --workloads=lenet5 --repeats=5

The four workloads (issue 10) and both frameworks' steps are bench/workloads.py's: sim_jax's
side is the trainer's real jitted step on one fixed, already-global batch (the input pipeline is
measured by bench/input_pipeline.py), the PyTorch side the same architecture, batch, AdamW and
pytorch-metric-learning loss. Augmentation is "none" on both sides (the two views are the same
image), embedding diagnostics are off.

Each workload runs in its own subprocess (so peak RSS and thread pools are its own). Inside it,
both frameworks are warmed up (sim_jax: lower + compile, timed: the "compile" column; then one
step), then timed in interleaved repeats (order alternates) of `--steps` steps each, so that load
from other processes on this shared machine hits both alike; in each repeat a framework first takes
`--rewarm` untimed steps (default 1), so its timed steps follow its own step as in a training loop,
not the other framework's (workloads.REWARM says why this matters here). Reported per framework:
images/s min / median over repeats (images = encoder inputs per step), their ratio sim_jax / torch
(median over median, and min over min), the step's FLOPs from XLA's cost analysis and the achieved
FLOP/s relative to a float32 [2048,2048] x [2048,2048] jnp matmul timed in the same subprocess,
XLA's temp buffer size, and the subprocess's peak RSS (both frameworks together). Thread counts:
torch.get_num_threads() and the CPU affinity XLA's thread pool sizes itself to.
Writes JSON (--out) and a markdown table (--md).

Per-framework environments (`--jax_env NAME=VALUE`, `--torch_env NAME=VALUE`, or `--envs=best`
for the winners of bench/allocators.py): the memory allocator is fixed when a process starts,
and sim_jax and PyTorch are fastest under different ones, so then each workload runs sim_jax
and torch in two persistent worker processes (bench/workers.py), each in its own environment,
with the timed rounds interleaved exactly as above; the JSON and the table record each
framework's environment and the malloc libraries really loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # `python bench/train_step.py` puts bench/, not the repo, on the path

from bench import allocators, workers  # noqa: E402
from bench.workloads import (  # noqa: E402
    REWARM,
    WORKLOADS,
    JaxRunner,
    TorchRunner,
    environment,
    matmul_rate,
    parse_overrides,
    peak_rss_bytes,
    write_results,
)

# jaxlib 0.10.2's default YNNPACK fusion list (convolutions included), as a --variant value: the
# trainer's step without sim_jax.cpu.CPU_COMPILER_OPTIONS.
YNN_DEFAULT = ("LIBRARY_FUSION_TYPE_DOT|LIBRARY_FUSION_TYPE_REDUCE|"
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
# Second-stage targets (ahead of PyTorch + pml on every workload); the first stage asked 0.8x of
# ResNet-18 and multi-scale, as results files measured before it show.
TARGETS = {"lenet5": 1.0, "resnet18": 1.0, "vit_ti": 1.0, "multiscale": 1.0}


def run_workload(name: str, batch: int, repeats: int, steps: int,
                 overrides: dict | None = None, skip_torch: bool = False,
                 matmul_n: int = 2048, variants: dict | None = None,
                 rewarm: int = REWARM, torch_device: str = "cpu") -> dict:
  """Warm both frameworks, then time `repeats` interleaved rounds of `steps` steps each.

  In each round every runner first takes `rewarm` untimed steps, so that its timed steps follow
  its own step as in a training loop, not the other framework's (see REWARM).
  """
  import torch  # the optional `bench` extra: run_all --report_only works without it
  images = batch * WORKLOADS[name]["per_item"]
  jr = JaxRunner(name, batch, overrides)
  tr = None if skip_torch else TorchRunner(name, batch, torch_device)
  # Variants of sim_jax's config (e.g. bfloat16, remat) timed in the same interleaved rounds, so
  # what a change buys is measured against the base step under the same machine load.
  # A variant the trainer refuses for this workload (parallel_splits with batch norm) is recorded
  # with the trainer's reason instead of stopping the run.
  vr, refused = {}, {}
  for label, o in (variants or {}).items():
    try:
      vr[label] = JaxRunner(name, batch, {**(overrides or {}), **o})
    except ValueError as e:
      refused[label] = {"overrides": o, "refused": str(e)}
  rate = matmul_rate(matmul_n)
  times = {"sim_jax": [], "torch": [], **{f"variant:{k}": [] for k in vr}}
  for r in range(repeats):
    order = [("sim_jax", jr), ("torch", tr), *((f"variant:{k}", v) for k, v in vr.items())]
    if r % 2:
      order.reverse()
    for key, runner in order:
      if runner is None:
        continue
      if rewarm:
        runner.run(rewarm)
      t0 = time.perf_counter()
      taken = runner.run(steps)
      times[key].append((time.perf_counter() - t0) / taken)
  out = {"workload": name, "batch": batch, "images_per_step": images, "steps": steps,
         "repeats": repeats, "rewarm": rewarm, "overrides": overrides or {},
         "sim_jax_steps_taken": int(jr.state.step), "compile_s": jr.compile_s,
         "sim_jax_steps_per_execution": jr.per_execution,
         "sim_jax_steps_per_execution_why": jr.per_execution_why,
         "step_flops": jr.flops, "xla_temp_bytes": jr.temp_bytes,
         "matmul_flops_per_s": rate, "peak_rss_bytes": peak_rss_bytes(),
         "torch_threads": torch.get_num_threads(), "torch_device": torch_device,
         "xla_cpu_threads": len(os.sched_getaffinity(0)),
         "jax_devices": [str(d) for d in jax.devices()],
         "loss_after": jr.loss()}
  for key, ts in times.items():
    if not ts:
      continue
    ips = images / np.asarray(ts)
    out[key] = {"step_s": ts, "img_per_s_min": float(ips.min()),
                "img_per_s_median": float(np.median(ips))}
  if tr is not None:
    out["torch"]["first_step_s"] = tr.first_step_s
    out["ratio_median"] = out["sim_jax"]["img_per_s_median"] / out["torch"]["img_per_s_median"]
    out["ratio_min"] = out["sim_jax"]["img_per_s_min"] / out["torch"]["img_per_s_min"]
  for k in vr:
    v = out.pop(f"variant:{k}")
    v["speedup_vs_base_median"] = v["img_per_s_median"] / out["sim_jax"]["img_per_s_median"]
    v["speedup_vs_base_min"] = v["img_per_s_min"] / out["sim_jax"]["img_per_s_min"]
    v["overrides"], v["compile_s"] = variants[k], vr[k].compile_s
    v["steps_per_execution"], v["steps_taken"] = vr[k].per_execution, int(vr[k].state.step)
    if tr is not None:
      v["ratio_median"] = v["img_per_s_median"] / out["torch"]["img_per_s_median"]
      v["ratio_min"] = v["img_per_s_min"] / out["torch"]["img_per_s_min"]
    out.setdefault("variants", {})[k] = v
  for k, v in refused.items():
    out.setdefault("variants", {})[k] = v
  step_s = float(np.median(times["sim_jax"]))
  out["sim_jax"]["flops_per_s"] = jr.flops / step_s
  out["sim_jax"]["matmul_fraction"] = jr.flops / step_s / rate
  return out


def run_workload_workers(name: str, batch: int, repeats: int, steps: int,
                         envs: dict[str, dict], overrides: dict | None = None,
                         matmul_n: int = 2048, timeout: float = 1800.0,
                         rewarm: int = REWARM) -> dict:
  """`run_workload`, but sim_jax and torch each in its own worker process and environment.

  `envs` is {"sim_jax": {"name": label, "vars": {VAR: value}, "clear_allocator": bool}, "torch":
  ...}: each worker gets this process's environment (minus GLIBC_TUNABLES / LD_PRELOAD when
  `clear_allocator`) plus `vars`, so each framework can run under its own allocator
  (bench/workers.py). Timed rounds interleave exactly as `run_workload`'s (order alternating).
  Keys are `run_workload`'s; `peak_rss_bytes` is the sim_jax worker's (each framework's own is
  in its entry), and each framework's entry adds per-step system seconds and minor faults.
  """
  images = batch * WORKLOADS[name]["per_item"]
  specs = [dict(label=fw, framework=fw, workload=name, batch=batch, timeout=timeout,
                overrides=overrides if fw == "sim_jax" else None,
                matmul_n=matmul_n if fw == "sim_jax" else 0,
                env=workers.worker_env(envs[fw].get("vars"), envs[fw].get("clear_allocator")))
           for fw in workers.FRAMEWORKS]
  jw, tw = workers.start_all(specs)
  try:
    samples = {"sim_jax": [], "torch": []}
    for r in range(repeats):
      order = [jw, tw] if r % 2 == 0 else [tw, jw]
      for w in order:
        samples[w.label].append(w.step(steps, rewarm))
    stats = {w.label: w.request("stats") for w in (jw, tw)}
    rss = {k: v["peak_rss_bytes"] for k, v in stats.items()}
    loss = jw.request("loss")["loss"]  # last: JaxRunner.loss() donates (deletes) the state
  finally:
    jw.close()
    tw.close()
  j, t = jw.info, tw.info
  out = {"workload": name, "batch": batch, "images_per_step": images, "steps": steps,
         "repeats": repeats, "rewarm": rewarm, "overrides": overrides or {},
         "sim_jax_steps_taken": stats["sim_jax"]["train_state_step"],
         "compile_s": j["compile_s"], "sim_jax_steps_per_execution": j["steps_per_execution"],
         "step_flops": j["step_flops"], "xla_temp_bytes": j["xla_temp_bytes"],
         "matmul_flops_per_s": j.get("matmul_flops_per_s", float("nan")),
         "peak_rss_bytes": rss["sim_jax"], "torch_threads": t["torch_threads"],
         "xla_cpu_threads": j["affinity"], "jax_devices": j["jax_devices"], "loss_after": loss,
         "environments": {fw: {"name": envs[fw].get("name") or workers.describe_env(
             envs[fw].get("vars")), "vars": envs[fw].get("vars") or {},
             "malloc_libs": w.info["malloc_libs"], "allocator_vars_seen": w.info["env"]}
             for fw, w in (("sim_jax", jw), ("torch", tw))}}
  for fw, ss in samples.items():
    ips = images / np.asarray([x["step_s"] for x in ss])
    out[fw] = {"step_s": [x["step_s"] for x in ss], "img_per_s_min": float(ips.min()),
               "img_per_s_median": float(np.median(ips)),
               "sys_s_median": float(np.median([x["sys_s"] for x in ss])),
               "minflt_median": float(np.median([x["minflt"] for x in ss])),
               "peak_rss_bytes": rss[fw]}
  out["torch"]["first_step_s"] = t["first_step_s"]
  out["ratio_median"] = out["sim_jax"]["img_per_s_median"] / out["torch"]["img_per_s_median"]
  out["ratio_min"] = out["sim_jax"]["img_per_s_min"] / out["torch"]["img_per_s_min"]
  step_s = float(np.median(out["sim_jax"]["step_s"]))
  out["sim_jax"]["flops_per_s"] = j["step_flops"] / step_s
  out["sim_jax"]["matmul_fraction"] = j["step_flops"] / step_s / out["matmul_flops_per_s"]
  return out


def framework_envs(args, name: str) -> dict[str, dict] | None:
  """{framework: environment} for the two-worker mode from --jax_env / --torch_env / --envs;
  None (today's single process) when none of them is given."""
  if args.envs:
    if args.jax_env or args.torch_env:
      raise ValueError("--envs=best chooses both environments; do not combine it with "
                       f"--jax_env {args.jax_env} / --torch_env {args.torch_env}")
    if args.envs != "best":
      raise ValueError(f"--envs must be 'best'; got {args.envs!r}")
    path = args.allocators_json
    if not os.path.exists(path):
      raise FileNotFoundError(f"--envs=best reads {path}, which does not exist: run "
                              f"python bench/allocators.py first (or pass --allocators_json)")
    with open(path) as f:
      result = {**json.load(f), "_path": path}
    return {fw: {"name": a, "vars": v, "clear_allocator": True}
            for fw, (a, v) in allocators.best_envs(result, name).items()}
  if not (args.jax_env or args.torch_env):
    return None
  return {"sim_jax": {"vars": workers.parse_env(args.jax_env)},
          "torch": {"vars": workers.parse_env(args.torch_env)}}


def _child(args: dict) -> dict:
  return run_workload(**args)


def run_in_subprocess(args: dict, timeout: float, jax_platforms: str = "cpu") -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)]
  env = dict(os.environ, JAX_PLATFORMS=jax_platforms)
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=_REPO)
  if proc.returncode:
    raise RuntimeError(f"workload {args['name']} failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- reporting


def _fmt_rate(x: float) -> str:
  return f"{x / 1e9:.1f}"


def _allocator_note(env: dict) -> str:
  """The parent's malloc settings (JSON written before they were recorded: nothing)."""
  if "allocator_vars" not in env:
    return ""
  settings = " ".join(f"{k}={v}" for k, v in sorted(env["allocator_vars"].items()))
  return f"Allocator settings of the run: {settings or '(glibc defaults)'}. "


def _env_cell(e: dict) -> str:
  """`name` (`VAR=value ...`) of one framework's worker environment, for the table."""
  settings = " ".join(f"{k}={v}" for k, v in sorted(e.get("vars", {}).items()))
  return f"{e['name']} (`{settings}`)" if settings and settings != e["name"] else e["name"]


def _rewarm_note(result: dict) -> str:
  rewarm = next(iter(result["workloads"]), {}).get("rewarm")  # one --rewarm for the whole run
  if rewarm is None:
    return (" (no untimed re-warm step: a framework's timed step could follow the other "
            "framework's step, the protocol before `--rewarm`)")
  if rewarm == 0:
    return " (`--rewarm=0`: a framework's timed step may follow the other framework's step)"
  return f", each right after {rewarm} untimed step(s) of the same framework (`--rewarm`)"


def _per_execution_note(result: dict) -> str:
  if not any(r.get("sim_jax_steps_per_execution", 1) > 1 for r in result["workloads"]):
    return ""
  return (" sim_jax runs whole executions of its steps per execution (the trainer's "
          "`config.train.steps_per_execution`), so its rounds hold at least that many steps; "
          "images/s are per step taken.")


def markdown(result: dict) -> str:
  env = result["environment"]
  lines = [
      f"Measured {result['date']} on {env['machine']} with {env['affinity']} usable CPU core(s) "
      f"(load average at start {env['load_avg_at_start'][0]:.1f}: the machine was shared), "
      f"jax {env['jax']}, flax {env['flax']}, torch {env['torch']}, pytorch-metric-learning "
      f"{env['pytorch_metric_learning']}. XLA_FLAGS={env['xla_flags'] or '(none)'}. "
      f"{_allocator_note(env)}"
      f"Repeats: {result['repeats']} interleaved rounds of "
      f"{', '.join(str(r['steps']) for r in result['workloads'])} step(s){_rewarm_note(result)}."
      f"{_per_execution_note(result)}",
      "",
      "| workload | images/step | sim_jax steps / execution | sim_jax img/s min / median | "
      "torch img/s min / median | ratio median (min) | target | compile s | step GFLOP | "
      "achieved GFLOP/s (% of matmul) | XLA temp MiB | peak RSS MiB | threads torch / XLA |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  devices = {(str(r.get("jax_devices", ["?"])[0]), r.get("torch_device", "cpu"))
             for r in result["workloads"]}
  if any(not j.startswith("cpu") or t != "cpu" for j, t in devices):  # an accelerator ran
    lines[0] += " Devices (sim_jax, torch): " + "; ".join(f"{j}, {t}" for j, t in
                                                         sorted(devices)) + "."
  with_envs = any("environments" in r for r in result["workloads"])
  if with_envs:  # two-worker mode: each framework's process environment (bench/workers.py)
    lines[0] += (" Each framework ran in its own worker process with the environment in the "
                 "last column (rounds still interleaved); peak RSS is the sim_jax worker's.")
    lines[2] = lines[2][:-1] + "| environment sim_jax / torch |"
    lines[3] += "---|"
  for r in result["workloads"]:
    j, t = r["sim_jax"], r.get("torch")
    target = TARGETS.get(r["workload"])
    ratio = "n/a" if t is None else f"**{r['ratio_median']:.2f}x** ({r['ratio_min']:.2f}x)"
    met = "" if t is None or target is None else (" met" if r["ratio_median"] >= target
                                                  else " NOT met")
    if r["batch"] != WORKLOADS.get(r["workload"], {}).get("batch"):
      met = f" not assessed (batch {r['batch']}, not {WORKLOADS[r['workload']]['batch']})"
    tcol = "-" if t is None else f"{t['img_per_s_min']:.0f} / {t['img_per_s_median']:.0f}"
    lines.append(
        f"| {r['workload']} | {r['images_per_step']} | "
        f"{r.get('sim_jax_steps_per_execution', 1)} | {j['img_per_s_min']:.0f} / "
        f"{j['img_per_s_median']:.0f} | {tcol} | {ratio} | >= {target}x{met} | "
        f"{r['compile_s']:.1f} | {r['step_flops'] / 1e9:.1f} | "
        f"{_fmt_rate(j['flops_per_s'])} ({100 * j['matmul_fraction']:.0f}% of "
        f"{_fmt_rate(r['matmul_flops_per_s'])}) | {r['xla_temp_bytes'] / 2**20:.0f} | "
        f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['torch_threads']} / {r['xla_cpu_threads']} |")
    if with_envs:
      e = r.get("environments")
      lines[-1] += (" same process |" if e is None else
                    f" {_env_cell(e['sim_jax'])} / {_env_cell(e['torch'])} |")
  variant_rows = [(r, k, v) for r in result["workloads"] for k, v in r.get("variants", {}).items()]
  if variant_rows:
    lines += ["", "sim_jax config variants, timed in the same interleaved rounds as the table "
              "above (`--variant`):", "",
              "| workload | variant | overrides | img/s min / median | speed-up vs base median "
              "(min) | vs torch median (min) |", "|---|---|---|---|---|---|"]
    for r, k, v in variant_rows:
      over = ", ".join(f"{a}={b}" for a, b in v["overrides"].items())
      if "refused" in v:
        lines.append(f"| {r['workload']} | {k} | {over} | refused by the trainer: "
                     f"{v['refused']} | - | - |")
        continue
      vs_torch = (f"**{v['ratio_median']:.2f}x** ({v['ratio_min']:.2f}x)" if "ratio_median" in v
                  else "-")
      over += f" ({v.get('steps_per_execution', 1)} steps / execution)"
      lines.append(f"| {r['workload']} | {k} | {over} | {v['img_per_s_min']:.0f} / "
                   f"{v['img_per_s_median']:.0f} | {v['speedup_vs_base_median']:.2f}x "
                   f"({v['speedup_vs_base_min']:.2f}x) | {vs_torch} |")
  if result.get("note"):
    lines += ["", result["note"]]
  return "\n".join(lines) + "\n"



def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--quick", action="store_true", help="batch 8, one repeat of one step")
  p.add_argument("--workloads", default=",".join(WORKLOADS))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=0,
                 help="steps per timed round (0: the workload's default, 5 for LeNet, else 1)")
  p.add_argument("--batch", type=int, default=0, help="override every workload's batch")
  p.add_argument("--rewarm", type=int, default=REWARM,
                 help="untimed steps each framework takes right before its timed steps in every "
                      "round (0: time a step right after the other framework's; see REWARM)")
  p.add_argument("--override", action="append", default=[],
                 help="sim_jax config override key=value (e.g. model.dtype=bfloat16)")
  p.add_argument("--variant", action="append", default=[],
                 help="label:key=value[,key=value]: a sim_jax config variant timed in the same "
                      "interleaved rounds (e.g. bf16:model.dtype=bfloat16); a key xla.<option> "
                      "is an XLA compiler option instead ('|' for ',' in its value), e.g. "
                      f"ynn_conv:xla.xla_cpu_experimental_ynn_fusion_type={YNN_DEFAULT}")
  p.add_argument("--jax_env", action="append", default=[],
                 help="NAME=VALUE set for sim_jax only (repeatable), e.g. "
                      "GLIBC_TUNABLES=glibc.malloc.hugetlb=1: sim_jax and torch then run in two "
                      "worker processes, each in its own environment, rounds still interleaved")
  p.add_argument("--torch_env", action="append", default=[],
                 help="NAME=VALUE set for torch only (repeatable), e.g. "
                      "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
  p.add_argument("--envs", default="", help="'best': each framework in its best allocator "
                 "environment per --allocators_json (bench/allocators.py's per-workload winners)")
  p.add_argument("--allocators_json",
                 default=os.path.join(_REPO, "bench", "results", "allocators.json"))
  p.add_argument("--timeout", type=float, default=1800.0, help="seconds per workload")
  p.add_argument("--platform", default="cpu",
                 help="JAX_PLATFORMS of the one-process mode's workload subprocess (cpu, cuda; "
                      "'' = JAX's own choice)")
  p.add_argument("--torch_device", default="cpu", help="PyTorch's device there (cpu, cuda)")
  p.add_argument("--out", default=os.path.join(_REPO, "bench", "results", "train_step.json"))
  p.add_argument("--md", default=os.path.join(_REPO, "bench", "results", "train_step.md"))
  return p.parse_args(argv)



def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.child:
    print(json.dumps(_child(json.loads(args.child))), flush=True)
    return {}
  if args.quick:
    args.repeats, args.steps, args.batch = 1, 1, args.batch or 8
    args.out = args.out.replace(".json", "_quick.json")
    args.md = args.md.replace(".md", "_quick.md")
  names = [n for n in args.workloads.split(",") if n]
  for n in names:
    if n not in WORKLOADS:
      raise ValueError(f"--workloads names {n!r}; expected some of {sorted(WORKLOADS)}")
  overrides = parse_overrides(args.override)
  variants = {}
  for v in args.variant:
    label, sep, rest = v.partition(":")
    if not sep or not label:
      raise ValueError(f"--variant must be label:key=value[,key=value]; got {v!r}")
    variants[label] = parse_overrides(rest.split(","))
  result = {"date": time.strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats,
            "steps": args.steps, "quick": args.quick, "environment": environment(),
            "workloads": []}
  all_envs = {n: framework_envs(args, n) for n in names}  # bad flags fail before any run
  if (args.platform, args.torch_device) != ("cpu", "cpu") and any(all_envs.values()):
    raise ValueError("--platform / --torch_device apply to the one-process mode; drop "
                     "--jax_env / --torch_env / --envs with them")
  for n in names:
    batch = args.batch or WORKLOADS[n]["batch"]
    steps = args.steps or WORKLOADS[n]["steps"]
    envs = all_envs[n]
    if envs is None:
      r = run_in_subprocess(dict(name=n, batch=batch, repeats=args.repeats, steps=steps,
                                 overrides=overrides, variants=variants, rewarm=args.rewarm,
                                 torch_device=args.torch_device),
                            args.timeout, args.platform)
    elif variants:
      raise ValueError(f"--variant {args.variant} runs in one process with the base step; it "
                       f"cannot be combined with per-framework environments")
    else:
      r = run_workload_workers(n, batch, args.repeats, steps, envs, overrides,
                               timeout=args.timeout, rewarm=args.rewarm)
    print(json.dumps({**{k: r.get(k) for k in ("workload", "ratio_median", "ratio_min",
                                               "compile_s")},
                      **{f"{k} speedup vs base (median, min)": (v["speedup_vs_base_median"],
                                                                v["speedup_vs_base_min"])
                         if "refused" not in v else f"refused: {v['refused']}"
                         for k, v in r.get("variants", {}).items()}}), flush=True)
    result["workloads"].append(r)
  write_results(result, args.out, args.md, markdown(result))
  return result


if __name__ == "__main__":
  main()
