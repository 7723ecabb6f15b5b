"""Runs every benchmark that exists and writes their results into docs/performance.md.

  python -m bench.run_all                 # full runs (tens of minutes on 2 CPU cores)
  python -m bench.run_all --quick         # every bench's --quick mode: checks the plumbing
  python -m bench.run_all --report_only   # regenerate the markdown from the JSON already there
  python -m bench.run_all --only=train_step,retrieval

Each benchmark is called through its own command line and writes its own JSON under
bench/results/; this script only reads those files, so a bench that is missing (not written
yet) or failed is reported as such instead of stopping the others. The markdown lists the
machine, library versions and thread counts, then one section per benchmark with its ratios
(min / median over repeats where the bench repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import flax
import jax
import optax

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # `python bench/run_all.py` puts bench/, not the repo, on the path

from bench import allocators, train_step  # noqa: E402

RESULTS = os.path.join(_REPO, "bench", "results")
PERFORMANCE_MD = os.path.join(_REPO, "docs", "performance.md")


def _results(name: str, quick: bool, ext: str = ".json") -> str:
  return os.path.join(RESULTS, f"{name}{'_quick' if quick else ''}{ext}")


def bench_commands(quick: bool) -> dict[str, list[str]]:
  """name -> argv of each benchmark, writing its JSON where `load_results` looks for it."""
  py = sys.executable
  q = ["--quick"] if quick else []
  rs = _results
  # The headline train-step comparison runs both frameworks in one process, one environment
  # (glibc's malloc), rounds interleaved. The allocator bench is reported beside it; its
  # per-framework winners are not the headline because sim_jax's winner (huge pages) turned
  # 1.5-2x slower with the PyTorch worker stepping in between (docs/performance.md).
  return {
      "allocators": [py, "bench/allocators.py", *q, "--out", rs("allocators", False),
                     "--md", rs("allocators", False, ".md")],
      # The headline as measured: 5 interleaved rounds of the trainer's default step (parallel
      # splits and steps per execution auto) with the one-step-per-execution step timed in the
      # same rounds as a variant.
      "train_step": [py, "bench/train_step.py", *q,
                     *([] if quick else ["--repeats=5",
                                         "--variant=spe1:train.steps_per_execution=1"]),
                     "--out", rs("train_step", False), "--md", rs("train_step", False, ".md")],
      "loss_scaling": [py, "bench/loss_scaling.py", *q,
                       "--out", rs("loss_scaling", quick, "")],
      "input_pipeline": [py, "bench/input_pipeline.py", *q,
                         "--out", rs("input_pipeline", quick),
                         "--table", rs("input_pipeline", quick, ".md")],
      "retrieval": [py, "bench/retrieval.py", *q,
                    "--out", rs("retrieval", False), "--md", rs("retrieval", False, ".md")],
      "xla_flags": [py, "bench/xla_flags.py", *q, "--out", rs("xla_flags", quick)],
  }


def run_benches(names: list[str], quick: bool, timeout: float) -> dict[str, str]:
  """Runs each bench that exists; returns name -> 'ok' or the reason it did not produce JSON."""
  status = {}
  os.makedirs(RESULTS, exist_ok=True)
  for name, cmd in bench_commands(quick).items():
    if name not in names:
      continue
    if not os.path.exists(os.path.join(_REPO, cmd[1])):
      status[name] = f"not run: {cmd[1]} does not exist yet"
      continue
    print(f"[run_all] {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    try:
      proc = subprocess.run(cmd, cwd=_REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
      status[name] = f"timed out after {timeout:.0f} s"
      continue
    if proc.returncode:
      status[name] = f"failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    else:
      status[name] = f"ok ({time.time() - t0:.0f} s)"
    print(f"[run_all] {name}: {status[name]}", flush=True)
  return status


def load_results(quick: bool) -> dict[str, dict]:
  """The JSON each bench wrote (quick files when `quick`); missing ones are left out."""
  paths = {"allocators": _results("allocators", quick),
           "train_step": _results("train_step", quick),
           "loss_scaling": _results("loss_scaling", quick),
           "input_pipeline": _results("input_pipeline", quick),
           "retrieval": _results("retrieval", quick),
           "xla_flags": _results("xla_flags", quick)}
  out = {}
  for name, path in paths.items():
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
      out[name]["_path"] = os.path.relpath(path, _REPO)
  return out


# ------------------------------------------------------------------------------------ markdown


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return (xs[(n - 1) // 2] + xs[n // 2]) / 2


def environment_md() -> str:
  lines = [f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
           f"({len(os.sched_getaffinity(0))} usable), shared with other jobs while measured "
           f"(load average now {os.getloadavg()[0]:.1f}); no GPU/TPU.",
           f"- Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
           f"optax {optax.__version__}."]
  try:  # torch and faiss are optional (the `bench` extra): --report_only runs without them
    import torch
    lines.append(f"- torch {torch.__version__} ({torch.get_num_threads()} intra-op threads); XLA's "
                 f"CPU thread pool sizes itself to the {len(os.sched_getaffinity(0))} usable "
                 f"cores.")
  except ImportError:
    pass
  try:
    import faiss
    lines.append(f"- faiss {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads).")
  except ImportError:
    pass
  return "\n".join(lines)




def loss_scaling_md(r: dict) -> str:
  pts = [p for p in r.get("points", []) if p.get("status") == "ok"]
  by = {}
  for p in pts:
    by.setdefault((p["loss"], p["n"]), {})[p["impl"]] = p
  lines = ["| loss | N | dense s | streaming s | pml s | pml / dense | pml / streaming |",
           "|---|---|---|---|---|---|---|"]
  for (loss, n), impls in sorted(by.items()):
    def sec(k, impls=impls):
      return impls[k]["seconds"] if k in impls else None
    d, s, m = sec("dense"), sec("streaming"), sec("pml")
    lines.append(
        f"| {loss} | {n} | {_f(d)} | {_f(s)} | {_f(m)} | "
        f"{_f(m / d if m and d else None, 'x')} | {_f(m / s if m and s else None, 'x')} |")
  largest = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("largest_n", {}).items()))
  return (f"Seconds of one loss + gradient (median of the bench's repeats), D = 128; "
          f"ratio > 1 means sim_jax is faster. Largest N reached: {largest}.\n\n"
          + "\n".join(lines) + "\n")


def _f(x, suffix="") -> str:
  if x is None:
    return "-"
  return f"{x:.2f}{suffix}" if x < 100 else f"{x:.0f}{suffix}"


def input_pipeline_md(r: dict) -> str:
  keys = [k for k in r if k.endswith("images_per_s") or k.endswith("fraction")]
  rows = "\n".join(f"| {k} | {_f(r[k])} |" for k in keys)
  return (f"{r.get('dataset')} / {r.get('sampler')}, batch {r.get('batch_size')}, image shape "
          f"{r.get('image_shape')}, augment {r.get('augment')}: the pipeline must outrun the "
          f"step (data wait fraction near 0).\n\n| quantity | value |\n|---|---|\n{rows}\n")


def retrieval_md(r: dict) -> str:
  best = r["best"]
  f_runs, s_runs = r["faiss_seconds_runs"], best["seconds_runs"]
  ratio_best = min(f_runs) / min(s_runs)
  ratio_med = _median(f_runs) / _median(s_runs)
  return (f"Exact top-{r['k']} inner-product search, {r['num_gallery']:,} x {r['dim']} gallery, "
          f"{r['num_queries']:,} queries; sim_jax (block {best['block_size']}, query block "
          f"{best['query_block_size']}) vs faiss IndexFlatIP ({r['faiss_threads']} threads), "
          f"identical top-k indices: {best['identical_indices']:.4f}.\n\n"
          f"| | sim_jax s (min / median) | faiss s (min / median) | ratio faiss / sim_jax "
          f"(min, median) |\n|---|---|---|---|\n"
          f"| retrieval | {min(s_runs):.1f} / {_median(s_runs):.1f} | {min(f_runs):.1f} / "
          f"{_median(f_runs):.1f} | **{ratio_best:.2f}x**, {ratio_med:.2f}x |\n")


def xla_flags_md(r: dict) -> str:
  """One row per XLA flag set of bench/xla_flags.py (and the PyTorch yardstick)."""
  lines = ["| flag set | XLA_FLAGS (or compile options) | step s min / median | "
           "speed-up vs default (median) | "
           "library fusions (kCustom) / convolutions in the optimised HLO |",
           "|---|---|---|---|---|"]
  for label, e in r["sets"].items():
    if "error" in e:
      lines.append(f"| {label} | `{e['flags']}` | failed: {e['error'][-120:]!r} | - | - |")
      continue
    hlo = e.get("hlo_targets") or {}
    lib = "-" if not hlo else f"{hlo.get('kCustom', 0)} / {hlo.get('convolution', 0)}"
    flags = e["flags"] or ", ".join(f"{k}={v}" for k, v in e.get("compile_options", {}).items())
    lines.append(f"| {label} | `{flags or '(none)'}` | {e['step_s_min']:.2f} / "
                 f"{e['step_s_median']:.2f} | {_f(e.get('speedup_vs_default_median'), 'x')} | "
                 f"{lib} |")
  return (f"{r['workload']}, batch {r['batch']} ({r['images_per_step']} images per step), "
          f"{r['rounds']} round(s) of {r['steps']} step(s) per flag set, each set in its own "
          f"process (XLA_FLAGS is read once per process), rounds in alternating order; measured "
          f"{r['date']}. Speed-ups across processes are noisier than the interleaved "
          f"in-process ratios of the train-step table.\n\n" + "\n".join(lines) + "\n")


SECTIONS = {
    "allocators": ("Memory allocators: each framework's step under glibc / huge pages / tcmalloc "
                   "/ jemalloc", allocators.markdown, "bench/allocators.py"),
    "train_step": ("Train step: sim_jax vs PyTorch + pytorch-metric-learning", train_step.markdown,
                   "bench/train_step.py"),
    "loss_scaling": ("Loss scaling: dense vs streaming vs pytorch-metric-learning",
                     loss_scaling_md, "bench/loss_scaling.py"),
    "input_pipeline": ("Input pipeline vs train step", input_pipeline_md,
                       "bench/input_pipeline.py"),
    "retrieval": ("Exact retrieval: sim_jax vs faiss", retrieval_md, "bench/retrieval.py"),
    "xla_flags": ("XLA:CPU flags on the train step", xla_flags_md, "bench/xla_flags.py"),
}


def results_md(results: dict[str, dict], status: dict[str, str]) -> str:
  parts = ["## Environment", "", environment_md(), ""]
  for name, (title, fn, script) in SECTIONS.items():
    parts += [f"## {title}", ""]
    if name in results:
      parts += [f"From `{results[name]['_path']}` (`python {script}`).", ""]
      try:
        parts.append(fn(results[name]))
      except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        parts.append(f"(could not summarise {results[name]['_path']}: {type(e).__name__} {e})\n")
    else:
      parts.append(f"No results: {status.get(name, 'not run in this invocation and no JSON')}.\n")
  return "\n".join(parts)


BEGIN = "<!-- begin: generated by python -m bench.run_all; edit bench/run_all.py, not this -->"
END = "<!-- end: generated by python -m bench.run_all -->"


def replace_generated(doc: str, block: str, path: str = PERFORMANCE_MD) -> str:
  """`doc` with the text between its BEGIN and END marker lines replaced by `block`."""
  if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
    raise ValueError(f"{path} must hold the line {BEGIN!r} once, followed by {END!r} once; "
                     f"the generated results go between them")
  head, rest = doc.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return f"{head}{BEGIN}\n{block.strip()}\n{END}{tail}"


def write_docs(results, status, quick: bool) -> str:
  """The results section into docs/performance.md (quick mode: bench/results/report_quick.md,
  so smoke sizes never replace published numbers); returns the path written."""
  stamp = time.strftime("%Y-%m-%d %H:%M")
  body = results_md(results, status).replace("\n## ", "\n### ").replace("## Environment",
                                                                          "### Environment", 1)
  block = (f"Generated by `python -m bench.run_all` on {stamp} from the JSON each benchmark "
           f"writes under `bench/results/`. Ratios are sim_jax / other throughput unless stated; "
           f"the machine was shared, so absolute numbers are noisy and each ratio comes from "
           f"interleaved runs in one process.\n\n{body}")
  if quick:
    path = _results("report", True, ".md")
    with open(path, "w") as f:
      f.write(f"# Benchmarks (quick mode: smoke sizes, not results)\n\n{block}")
    return path
  with open(PERFORMANCE_MD) as f:
    doc = f.read()
  with open(PERFORMANCE_MD, "w") as f:
    f.write(replace_generated(doc, block))
  return PERFORMANCE_MD


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="each bench's --quick mode")
  p.add_argument("--report_only", action="store_true", help="only regenerate the markdown")
  p.add_argument("--only", default=",".join(SECTIONS), help="comma list of benches to run")
  p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per bench")
  args = p.parse_args(argv)
  names = [n for n in args.only.split(",") if n]
  for n in names:
    if n not in SECTIONS:
      raise ValueError(f"--only names {n!r}; expected some of {sorted(SECTIONS)}")
  status = {} if args.report_only else run_benches(names, args.quick, args.timeout)
  results = load_results(args.quick)
  path = write_docs(results, status, args.quick)
  print(f"[run_all] wrote {os.path.relpath(path, _REPO)} from {sorted(results)}")


if __name__ == "__main__":
  main()
