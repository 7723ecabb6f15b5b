"""Where one sim_jax train step spends its time, per XLA op, from a jax.profiler trace.

  python bench/profile_step.py --workload=vit_ti
  python bench/profile_step.py --workload=vit_ti --override train.parallel_splits=4
  python bench/profile_step.py --workload=resnet18 --batch=32 --top=20

Builds the benchmark's step (`bench/workloads.JaxRunner`: the trainer's jitted step on one
fixed batch, CPU compiler options included), runs it once to warm up, then once under
`jax.profiler.trace(create_perfetto_trace=True)` with XLA:CPU's per-thunk trace events
(`--xla_cpu_enable_xprof_traceme=true`, added to XLA_FLAGS before JAX starts). It sums the
trace's complete events by HLO instruction and prints:
  - time per op kind (the instruction name without its `.N` suffix: `ynn_fusion` = a YNNPACK
    library fusion (dots, reductions), `dot` = an XLA/Eigen dot, `*_fusion` = XLA loop fusions);
  - the library fusions grouped by output shape and fused ops, with their count, total time
    and, for dots, the rate in GFLOP/s.
The times are each thunk's own span on the thread that ran it. Two caveats when reading them:
thunks without dependencies run concurrently (a fusion's span then includes waiting for cores
another one holds), and XLA/Eigen `dot` thunks return before their work on the thread pool is
done, so their spans under-count them (docs/performance.md: "profile of the ViT-Ti step").
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

_TRACEME = "--xla_cpu_enable_xprof_traceme=true"


def op_kind(name: str) -> str:
  """HLO instruction name without its numeric suffix: 'ynn_fusion.12' -> 'ynn_fusion'."""
  return re.sub(r"\.\d+$", "", name)


def sum_events(events: list[dict]) -> tuple[collections.Counter, collections.Counter]:
  """Total span (microseconds) and count per event name of the trace's complete ('X') events."""
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X":
      total[e.get("name", "")] += e.get("dur", 0)
      count[e.get("name", "")] += 1
  return total, count


def is_op(name: str) -> bool:
  """An HLO op's event, not Python frames ('$file:line fn') or the runtime's own spans."""
  return bool(name) and not name.startswith("$") and "::" not in name and "(" not in name


def _dims(shape: str) -> list[int]:
  """'f32[16640,192]{1,0}' -> [16640, 192]; a scalar -> []."""
  m = re.search(r"\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",")] if m and m.group(1) else []


def dot_flops(body: str) -> int:
  """2 * output elements * contracted size, summed over the dots of a fused computation."""
  shapes = dict(re.findall(r"\n\s*(%?[\w.\-]+) = (\S+) ", "\n" + body))
  flops = 0
  for out, lhs, dims in re.findall(
      r"= (\S+) dot\((%?[\w.\-]+), [^)]*\),[^\n]*?lhs_contracting_dims=\{([\d,]*)\}", body):
    lhs_dims = _dims(shapes.get(lhs, ""))
    if not lhs_dims or not dims:
      continue
    contracted = 1
    for d in dims.split(","):
      contracted *= lhs_dims[int(d)]
    n = 1
    for d in _dims(out):
      n *= d
    flops += 2 * n * contracted
  return flops


def fusion_table(hlo: str, total: collections.Counter) -> list[dict]:
  """Library fusions of `hlo` grouped by (output shape, fused ops): count, time, dot GFLOP/s."""
  groups: dict[tuple, dict] = {}
  for name, us in total.items():
    if op_kind(name) not in ("ynn_fusion", "xnn_fusion", "onednn_fusion"):
      continue
    m = re.search(r"\n\s*%?" + re.escape(name) + r" = (\S+) fusion\([^\n]*calls=%?([\w.\-]+)",
                  hlo)
    if not m:
      continue
    out, comp = m.groups()
    body = re.search(r"\n%?" + re.escape(comp) + r" [^\n]*\{(.*?)\n\}", hlo, re.S)
    body = body.group(1) if body else ""
    ops = sorted(set(re.findall(r"= \S+ (\w+)\(", body)) - {"parameter", "bitcast"})
    flops = dot_flops(body)
    g = groups.setdefault((out, ",".join(ops)), {"output": out, "ops": ",".join(ops),
                                                  "count": 0, "us": 0, "flops": 0})
    g["count"] += 1
    g["us"] += us
    g["flops"] += flops
  return sorted(groups.values(), key=lambda g: -g["us"])


def profile(workload: str, batch: int, overrides: dict, top: int) -> dict:
  # Imported here, not at the top: main() must put the traceme flag into XLA_FLAGS before JAX
  # is first imported (bench.workloads imports it).
  import jax

  from bench import workloads
  # One step per execution unless asked otherwise, so the trace holds exactly one step.
  runner = workloads.JaxRunner(workload, batch, {"train.steps_per_execution": 1, **overrides})
  runner.run(1)
  logdir = tempfile.mkdtemp(prefix="sim_jax_profile_")
  t0 = time.perf_counter()
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    runner.run(1)
  wall = time.perf_counter() - t0
  files = glob.glob(os.path.join(logdir, "**", "*.json.gz"), recursive=True)
  if not files:
    raise RuntimeError(f"jax.profiler wrote no perfetto trace under {logdir}")
  with gzip.open(files[0]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total, count = sum_events(events)
  kinds, kind_count = collections.Counter(), collections.Counter()
  for name, us in total.items():
    if is_op(name):
      kinds[op_kind(name)] += us
      kind_count[op_kind(name)] += count[name]
  return {"workload": workload, "batch": batch, "overrides": overrides, "wall_s": wall,
          "trace": files[0],
          "kinds": [{"kind": k, "us": us, "count": kind_count[k]}
                    for k, us in kinds.most_common(top)],
          "op_us": sum(kinds.values()),
          "fusions": fusion_table(runner.compiled.as_text(), total)[:top]}


def report(r: dict) -> str:
  lines = [f"{r['workload']} batch {r['batch']} {r['overrides'] or ''}: one profiled step "
           f"{r['wall_s']:.2f} s wall; op spans summed over threads {r['op_us'] / 1e6:.2f} s "
           f"(trace: {r['trace']})", "", "time per op kind:"]
  for k in r["kinds"]:
    lines.append(f"  {k['us'] / 1e3:9.1f} ms {100 * k['us'] / r['op_us']:5.1f}%  "
                 f"x{k['count']:<5d} {k['kind']}")
  lines += ["", "library fusions by output shape and fused ops:"]
  for g in r["fusions"]:
    rate = (f"{g['flops'] / (g['us'] * 1e-6) / 1e9:6.0f} GFLOP/s" if g["flops"] and g["us"]
            else " " * 14)
    lines.append(f"  {g['us'] / 1e3:9.1f} ms x{g['count']:<4d} {rate}  {g['output']}  "
                 f"[{g['ops']}]")
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workload", default="vit_ti")
  p.add_argument("--batch", type=int, default=None, help="default: the workload's batch")
  p.add_argument("--override", action="append", default=[],
                 help="sim_jax config override key=value (e.g. train.parallel_splits=4)")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--out", default=None, help="also write the numbers as JSON here")
  args = p.parse_args(argv)
  flags = os.environ.get("XLA_FLAGS", "")
  if _TRACEME not in flags:
    if "jax" in sys.modules:
      raise RuntimeError(f"XLA_FLAGS must contain {_TRACEME} before JAX is imported")
    os.environ["XLA_FLAGS"] = f"{flags} {_TRACEME}".strip()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
  from bench import workloads  # after XLA_FLAGS is set (see profile)
  if args.workload not in workloads.WORKLOADS:
    raise ValueError(f"--workload={args.workload!r}; expected one of "
                     f"{sorted(workloads.WORKLOADS)}")
  r = profile(args.workload, args.batch or workloads.WORKLOADS[args.workload]["batch"],
              workloads.parse_overrides(args.override), args.top)
  print(report(r))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(r, f, indent=1)
  return r


if __name__ == "__main__":
  main()
