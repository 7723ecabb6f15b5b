"""Runs every benchmark that exists and writes bench/README.md and docs/benchmarks.md.

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

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(_REPO, "bench", "results")


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
  # 1.5-2x slower with the PyTorch worker stepping in between (docs/cpu_performance.md).
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
  # Where the benches write when run by hand with their default flags (their owners' choice).
  defaults = {"input_pipeline": os.path.join(_REPO, "bench", "input_pipeline.json"),
              "loss_scaling": os.path.join(_REPO, "docs", "bench_loss_scaling.json")}
  out = {}
  for name, path in paths.items():
    if not os.path.exists(path) and not quick and name in defaults:
      path = defaults[name]
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
  import flax
  import jax
  import optax
  lines = [f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
           f"({len(os.sched_getaffinity(0))} usable), shared with other jobs while measured "
           f"(load average now {os.getloadavg()[0]:.1f}); no GPU/TPU.",
           f"- Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
           f"optax {optax.__version__}."]
  try:
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


def train_step_md(r: dict) -> str:
  sys.path.insert(0, _REPO)
  from bench import train_step
  return train_step.markdown(r)


def allocators_md(r: dict) -> str:
  sys.path.insert(0, _REPO)
  from bench import allocators
  return allocators.markdown(r)


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
                   "/ jemalloc", allocators_md, "bench/allocators.py"),
    "train_step": ("Train step: sim_jax vs PyTorch + pytorch-metric-learning", train_step_md,
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


# What was tried to speed up sim_jax's step and what each change bought (measured by hand with
# bench/train_step.py; see the commands in each row). Kept here so the generated README carries it.
OPTIMIZATIONS = """\
## What was tried on sim_jax's step, and what each change bought

Measured on the shared 2-core CPU, so each row compares within one process, interleaved, unless
it says otherwise. Commands reproduce each row; JSON of every row is under `bench/results/`.

**Machine load changes the ratios.** The first pass measured at load average 8-10 (other jobs);
PyTorch's OpenMP threads lose far more than XLA's pool under that contention (LeNet-5's torch
step took 0.6-1.5 s there, 0.03 s at load 1-2). The first pass's LeNet-5 1.95x and ResNet-18
0.40x are therefore not comparable with this pass's numbers (load 1-4). The same holds on a
quiet machine the other way: at load ~1 (2026-12-05) PyTorch's lead on the convolutional
workloads grew (ResNet-18 0.84x -> 0.64x, multi-scale 1.02x -> 0.88x against the load 1.2-1.6
run of 2026-11-23, `bench/results/train_step_2026-11-23.json`). The table under "Results"
(`bench/results/train_step.json`) is the reference.

| change | status | measured effect | command |
|---|---|---|---|
| jit end to end, state donated, augmentation on device inside the step | in place before \
this work (`Trainer.jit_train_step`) | the baseline every ratio below is measured with | - |
| no per-step host round trip | audited: `train_and_evaluate` merges metrics as device \
arrays and fetches them only every `log_every` steps; diagnostics are summed on device; \
the preemption check is host-only with one process | nothing to remove | - |
| persistent compilation cache | in place (`launch.py --compilation_cache`) | a second \
launch skips the compile column of the table | - |
| profile of the ResNet-18 step (`jax.profiler` trace with \
`--xla_cpu_enable_xprof_traceme=true`, per-op time summed by HLO op) | finding | batch 32 x 2 \
views: YNNPACK convolutions in the backward pass 59% of op time (the weight gradients of \
layer1 / layer2 alone ~0.4-0.9 s each), forward convolutions 17%, the layout transposes feeding \
the weight-gradient convolutions 11%. Forward and input-gradient convolutions alone were at \
or above torch's speed in a per-layer micro-benchmark; weight gradients 0.4-0.65x torch | \
by-hand `jax.profiler` script (not in the repo) |
| **YNNPACK convolutions off**: the train step is compiled with \
`xla_cpu_experimental_ynn_fusion_type=DOT,REDUCE` (jaxlib's default minus \
INDIVIDUAL_CONVOLUTION), so XLA's Eigen convolutions run (`sim_jax.train.CPU_COMPILER_OPTIONS`, \
CPU only) | **kept** | the default-compiled step over the YNNPACK-conv one, 3 interleaved \
rounds at the issue's batch, median (min): ResNet-18 1.32x (1.19x), multi-scale 1.77x (1.86x), \
ViT-Ti 1.09x (1.02x, only its patch embedding is a conv); LeNet-5 1.03x (1.10x; 4 rounds, \
see `train_step_lenet_before_pool.json`). ResNet-18 \
vs torch went to 0.87x, multi-scale to 0.83x (`bench/results/train_step_eigen_conv.json`) | \
`python bench/train_step.py --workloads=resnet18,multiscale,vit_ti --variant \
"ynn_conv:xla.xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT\\|\
LIBRARY_FUSION_TYPE_REDUCE\\|LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"` |
| weight gradient as im2col + one GEMM, or as 9 shifted GEMMs (instead of the \
weight-gradient convolution) | **not kept** | layer1 shape (batch 128, 32x32, 64->64), best / \
median of 5 interleaved: YNNPACK conv VJP 338 / 353 ms, im2col GEMM 439 / 513, shifted GEMMs \
419 / 537, torch 128 / 144: slower | by-hand micro-benchmark (not in the repo) |
| **2x2 max pooling as strided slices + a first-max custom VJP** \
(`sim_jax.models.encoder.max_pool_2x2`, LeNet-5 and multi-scale) | **kept** | XLA:CPU \
lowers reduce-window's gradient to a scatter with materialised iota index arrays: 60% of the \
LeNet-5 step's op time. Pool gradient at [512, 28, 28, 6]: 26.3 -> 5.1 ms; LeNet-5 step \
(batch 256 pairs, 4 rounds each, two runs) 0.100 -> 0.051 s median, ratio vs torch 0.30x -> \
0.52x. Values and gradients equal torch / `nn.max_pool` exactly (tested with ties) | \
`python bench/train_step.py --workloads=lenet5 --repeats=4` before / after commit 42c3e56 \
(`bench/results/train_step_lenet_{before,after}_pool.json`) |
| oneDNN (`--xla_cpu_use_onednn`, its custom calls / fusions), XNNPACK graph fusion | \
**not kept** | ResNet-18 batch 32 x 2 views, 2 rounds in alternating order, one process per \
set: 1.02x and 1.03x the default step (noise; the optimised HLO is unchanged, the flags are \
accepted but take nothing over); oneDNN fusions fail to compile the ViT step ("partition \
compile failed"). See the XLA-flag table below | `python bench/xla_flags.py --batch=32 \
--steps=1 --rounds=2 --sets=default,ynn_conv,onednn,xnn_graph` |
| profile of the ViT-Ti step at the issue's batch (same method) | finding | dots 47% of op \
time (forward 24%, backward 23%); the rest element-wise and layout fusions: \
gradient-accumulation copies 13%, bias / LayerNorm reductions 7%, exact-GELU erfc 5%. The \
GEMMs themselves are not slower than torch's: [16640, 192] x [192, 768] ran at 125 GFLOP/s \
(YNNPACK), 174 (Eigen), 120 (torch), best of 7 | by-hand scripts (not in the repo) |
| ViT-Ti: other YNNPACK fusion lists, fast math, head-major attention layout | **not kept** | \
batch 32 x 2 views, 4 interleaved rounds, speed-up median (min): dots to Eigen 0.98x \
(1.01x), YNNPACK dots only 0.98x (0.98x), YNNPACK element-wise fusions 0.73x (0.77x); \
`--xla_cpu_enable_fast_math` 1.02x (one process each, batch 16); q/k/v transposed to \
[B, heads, N, d] once with q pre-scaled: 1.47 vs 1.45 s best of 5 (batch 64 fwd+bwd): noise | \
`python bench/train_step.py --workloads=vit_ti --batch=32 --repeats=4 --variant \
"eigen_dot:xla.xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"` \
(`bench/results/train_step_vit_variants.json`) |
| LeNet convolutions as patches + matmul (`conv_general_dilated_patches` @ kernel) | \
**not kept** | (first pass, YNNPACK convs, load 8-10) forward + backward of one layer at \
batch 512, best of 5: conv1 1014 vs 1093 ms, conv2 2299 vs 383 ms: slower | by-hand |
| `--xla_cpu_use_thunk_runtime=false` (legacy CPU runtime) | **not available** | jax \
0.10.2: the flag is deprecated and ignored | - |
| bfloat16 compute (`model.dtype=bfloat16`, float32 params and loss) | selectable for \
GPU/TPU, **not the default on CPU** | (first pass, load 8-10) LeNet-5: median 1.23x, min 0.97x \
the float32 step: within noise | `python bench/train_step.py --workloads=lenet5 --repeats=4 \
--variant bf16:model.dtype=bfloat16` |
| **LeNet-5 conv -> ReLU -> 2x2 max-pool stages as one custom VJP** \
(`sim_jax.models.encoder.conv_relu_max_pool`, second pass): conv1 (C_in = 1) summed per pool \
corner from the input's 2x2 parity planes; conv2's input gradient as a 3x3 space-to-depth \
convolution (64 -> 24 channels) instead of a 5x5 one with 6 output channels (that op 34 -> 11 \
ms); conv1's weight gradient from the parity planes, no re-interleave to 28x28 | **kept** | \
LeNet-5 trainer step vs the previous `nn.Conv` -> ReLU -> `max_pool_2x2` LeNet, 9 interleaved \
rounds x 5 steps, load 3.6: 117.0 -> 62.6 ms median (**1.87x**), 97.8 -> 50.8 ms min (1.93x). \
vs torch at load 1.6-2.0: 0.54x -> **1.07x-1.13x**. Values and gradients equal torch's conv2d + \
relu + max_pool2d, ties included (`tests/models_fastconv_test.py`). (The helper's by-hand A/B \
of the three steps: 1.49x, 1.27x, 1.08x.) | `python bench/ab_formulations.py --workload=lenet5 \
--rounds=9`; `python bench/train_step.py --workloads=lenet5 --repeats=5` |
| LeNet-5, not kept (second pass) | **not kept** | `xla_cpu_prefer_vector_width=512` 0.97x; \
concurrency-optimised scheduler 0.91x / 1.10x (noise); `xla_cpu_use_fusion_emitters=false` \
0.71x; im2col from 25 shifted slices + one GEMM 0.70x (the concatenate alone 22 ms); conv1 as \
25 taps 0.62x; conv2 input gradient as GEMM + col2im 1.5x on the op but 0.55x in the step \
(duplicated into 4 consumers); output channels zero-padded to 8 / 16: no gain | by-hand A/B, \
load 3-7 (scripts not in the repo) |
| **ViT-Ti: every Dense on 2-D [B*N, D] inputs; exact GELU as 0.5 x (1 + erf(x / sqrt 2))** \
(`sim_jax.models.vit.dense_tokens`, `gelu`) | **kept** | with [B, N, D] inputs XLA:CPU \
copied each weight gradient's [B*N, features] cotangent into a transposed layout (13% of op \
time in a by-hand profile); `jax.nn.gelu`'s erfc form expands into exp + selects. \
`tests/models_vit_fast_test.py` pins values, gradients and the absence of transposed copies | \
measured together with the next row |
| **ViT-Ti attention with heads folded into one batch axis** after a single qkv transpose, q \
pre-scaled as timm does | **kept** | both ViT rows together, trainer step at the full batch \
(128 x 2 views) vs the previous 3-D Dense / erfc GELU / head-major attention, 3 interleaved \
rounds, load 5.1: 14.73 -> 9.70 s median (**1.52x**); vs torch 0.58x -> **0.67x** (load 2.0). \
(The helper's by-hand A/B, load 4-7.5: 1.24x for the previous row, 1.09x for this one.) | \
`python bench/ab_formulations.py --workload=vit_ti --rounds=3`; `python bench/train_step.py \
--workloads=vit_ti --repeats=3` |
| ViT-Ti, not kept (second pass) | **not kept** | hand-written LayerNorm VJP 0.95x; LayerNorm on \
2-D inputs 0.97x; GELU VJP recomputing from x 0.89x; `jax.nn.dot_product_attention` 0.88-1.04x; \
head-major einsums 1.07x vs the folded layout's 1.09x; YNNPACK dots only / Eigen dots / \
vector width 512 / concurrency scheduler 0.97x-1.03x (noise) | by-hand A/B, load 5-7.5 \
(scripts not in the repo) |
| ViT-Ti finding: XLA's scratch buffer is mapped and page-faulted anew every step | **not \
adopted** | full batch: 1.12 M minor faults per sim_jax step against 0.40-0.56 M for torch's \
(at load 5: 6.1-8.6 s of system time per sim_jax step next to 5.9-6.2 s of user time; torch \
0.7-0.9 s). `GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\
glibc.malloc.trim_threshold=68719476736` keeps freed memory mapped; the bench at load 1.5 gave \
sim_jax 43 -> 48 img/s median, 0.67x -> 0.72x vs torch, with peak RSS 8.3 -> 9.1 GiB. Not \
adopted: it does not reach the target, costs memory, and must be set before the process starts \
(`bench/results/train_step_vit_glibc.json`) | `python bench/ab_formulations.py \
--workload=vit_ti --faults`; `GLIBC_TUNABLES=... python bench/train_step.py --workloads=vit_ti \
--repeats=3` |
| XLA:CPU loop fusions use one core | finding | in jaxlib 0.10.2 element-wise and transpose \
fusions showed no 2-core speed-up (`taskset`: element-wise 35 ms on 1 core vs 44-49 ms on 2); a \
12.8 MB transpose takes 23 ms against 0.8 ms for an element-wise pass over it. This is the main \
reason the ViT-Ti step stays below torch, whose element-wise kernels are OpenMP-parallel | \
by-hand scripts (not in the repo) |
| **ViT: each pre-norm LayerNorm folded into the projection after it** \
(`vit.layer_norm_dense`: xhat (gamma W) + (beta W + b), hand-written VJP; q's 1/sqrt(D_h) in \
its weight columns; final LN on the class token alone) | **kept** | compiled ViT-Ti fwd+bwd at \
256 images: XLA temp 4355 -> 3448 MiB, element-wise fusion traffic (operands + outputs, summed \
over the HLO) 11.5 -> 9.0 GiB, library-fusion traffic 12.2 -> 11.2 GiB, materialised \
broadcasts 42 -> 18. Trainer step A/B in one process, 5 rounds, load 1.8: median 4.83 -> 4.67 s \
(1.03x), min 4.65 -> 4.59 s | by-hand scripts (not in the repo): the pre-session `vit.py` and \
the new one side by side |
| GELU with a closed-form derivative (custom JVP, then custom VJP keeping GELU'(x), with an \
optimisation barrier) | **not kept** | XLA fused the derivative's exp back into the fc2 \
backward matmul each time: the compiled programs had identical traffic to plain autodiff | \
by-hand HLO inspection |
| attention per head on slices of the token-major qkv (no transposes) | **not kept** | \
element-wise traffic 9.0 -> 10.8 GiB (slices and concatenations cost more than the one \
transpose) | by-hand HLO traffic count |
| finding: where ViT-Ti's step goes after the fold (profile, load ~1.5) | finding | 2-D \
(linear) matmuls 55% of op time at ~214 GFLOP/s, element-wise / copy fusions 23%, batched \
attention matmuls 8%, library reduces 8%. Per shape, XLA vs torch (ms, same process, min of 7): \
qkv 42 vs 28, fc1 41 vs 41, fc2 24 vs 21, fc1 dX 24 vs 18, fc2 dX 43 vs 41, fc1 dW 30 vs 21, \
fc2 dW 42 vs 26; batched Q K^T [768, 65, 64] 10-11 vs 3.9 (2-3x, also with XNNPACK or without \
a library; splitting the batch into independent halves did not help) | by-hand scripts |
| glibc malloc with transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) | \
**opt-in** (`SIM_JAX_HUGEPAGES=1`, `sim_jax.hostenv`) | ViT-Ti step alone, alternating \
processes: median 5.84 -> 4.64 s, minor faults 1.12 M -> 2 k; with a PyTorch worker stepping \
in between: 6.4-12.6 s a step, 4.5-7.5 s of system time (no compaction stalls); PyTorch itself \
is slower with it (5.8 vs 3.7-4.5 s) and fastest with tcmalloc | `docs/cpu_performance.md`, \
`python bench/allocators.py` |
| huge pages with the scratch buffer kept mapped (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1:\
glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.arena_max=1`) | \
**opt-in** (`SIM_JAX_HUGEPAGES=resident`, `sim_jax.hostenv`) | ViT-Ti, each framework in its \
own worker, rounds interleaved (2026-12-02, a slower day: GEMM 75-140 GFLOP/s): sim_jax step \
0 minor faults and 0.006-0.07 s of system time (was 1.12 M and ~2 s); vs PyTorch under glibc \
1.37x (min 1.57x), vs PyTorch under tcmalloc 1.00x (0.97x) and 0.92x (0.70x) in a second run, \
1.17x (0.83x, a slow first round) with 2 XLA CPU devices added. No slowdown from the other \
worker (unlike hugetlb=1 alone). Cost: the heap keeps its peak \
(sim_jax worker peak RSS 4.8-8.0 GiB) | `docs/cpu_performance.md`; `python \
bench/train_step.py --workloads=vit_ti --jax_env GLIBC_TUNABLES=... --torch_env \
LD_PRELOAD=...libtcmalloc_minimal.so.4` (`bench/results/train_step_vit_resident_*.json`) |
| one XLA CPU device per core (`XLA_FLAGS=--xla_force_host_platform_device_count=2`; the \
trainer shards the batch, same math under GSPMD) | **documented, not default** | ViT-Ti vs \
torch in one process: 1 device 0.87x, 2 devices 0.94x, 4 devices 0.93x (load 1.6); a \
second 2-device run 0.99x (min 1.09x). \
Other workloads with 2 devices (load 2.5): LeNet-5 1.08x -> 1.21x, ResNet-18 0.84x -> 0.90x, \
multi-scale 1.02x -> 0.89x, so not a default | \
`XLA_FLAGS=... python bench/train_step.py --workloads vit_ti --repeats 4` \
(`bench/results/train_step_vit_2dev.json`, `train_step_2dev_others.json`) |
| **`config.train.parallel_splits`** (`sim_jax.train.forward_in_splits`): the encoder runs on S \
independent slices of the batch inside the one jitted step, re-assembled before the loss; XLA's \
thunk executor then runs one slice's single-core fusions while another's matmuls run. Exact \
without batch norm (tested against the unsplit step); refused with it | **kept; the default \
is auto** (`parallel_splits=0`: 4 slices on CPU without batch norm or GradCache, else 1) | \
quiet machine (load ~1, 2026-12-05), one \
process, glibc defaults, 5 interleaved rounds: ViT-Ti 4 splits 1.38x the unsplit step (min \
1.83x; the unsplit step's times swing 4.1-7.2 s, the split one's 3.9 s), vs torch 0.69x -> \
**0.95x** (min 0.98x); 2 splits 1.03x. LeNet-5 2 / 4 splits 1.15x / 1.17x, vs torch 1.06x -> \
1.24x. With two XLA CPU devices x 4 splits: ViT-Ti 0.95x (min 0.97x), 1.21x the 2-device step. \
With the resident malloc tunables (both frameworks): ViT-Ti 4 splits 1.10x | `python \
bench/train_step.py --repeats=5 --variant split2:train.parallel_splits=2 --variant \
split4:train.parallel_splits=4`, before auto was the default \
(`bench/results/train_step_explicit_splits.json`; `XLA_FLAGS=... \
--workloads=vit_ti`: `train_step_vit_2dev_splits.json`; `train_step_resident_both_*.json`) |
| profile of the ViT-Ti step with 4 splits (`bench/profile_step.py`, committed this time) | \
finding | YNNPACK library fusions 65% of op spans (dots with their fused LayerNorm backward, \
bias adds and reductions), exact-GELU fusions 6.6%, other element-wise / layout fusions ~20%. \
The input-gradient dots show ~100-146 GFLOP/s in the step against 244-290 GFLOP/s alone: they \
share the 2 cores with the weight-gradient dots (XLA/Eigen `dot` thunks, which run \
asynchronously and so are under-counted by the trace) | `python bench/profile_step.py \
--workload=vit_ti --override train.parallel_splits=4` |
| the GEMM layouts alone (by-hand micro-benchmark, [16640, K] x [K, N] for ViT-Ti's K, N) | \
finding | NN (forward) 219-264 GFLOP/s, NT (input gradient) 183-269, **TN (weight gradient, x^T \
g) 128-186**, against torch's 237-300 for all three: the weight gradients are the GEMM gap. \
XLA:CPU sends TN to Eigen; `xla_cpu_experimental_onednn_fusion_type` / \
`xla_cpu_experimental_xnn_fusion_type` = DOT or INDIVIDUAL_DOT are accepted but every dot still \
compiles to Eigen or YNNPACK | by-hand scripts (not in the repo) |
| weight gradient as two batched half-contractions summed, x[:M/2]^T g[:M/2] + x[M/2:]^T \
g[M/2:] (a custom VJP on every ViT Dense), which XLA:CPU hands to YNNPACK | **not kept** | \
alone 1.15-1.28x faster on every ViT-Ti shape (e.g. 32.9 -> 27.6 ms), same accuracy; in the \
step **0.90x** (median 4.16 -> 4.60 s, 7 interleaved rounds, load 1.6): Eigen's asynchronous TN \
dots had overlapped the YNNPACK input-gradient fusions, and moving them onto YNNPACK serialised \
the two | by-hand micro-benchmark; the step A/B with `bench/ab_formulations.py \
--change=weight_grad` before the change was reverted (not in the repo) |
| weight gradient via the narrow operand's transpose ((g^T x)^T behind an optimisation barrier \
so XLA cannot fold it back into a TN dot), or with x^T materialised | **not kept** | 0.94x \
(fc2's shape) to 0.5x (the others): the barrier stops the dot fusing, and transposing a [16640, \
768] array costs ~20 ms on one core (a [16640, 192] one 2-3 ms) | by-hand micro-benchmark |
| attention core alone (qkv -> softmax(QK^T)V -> heads merged, forward + backward, 256 images) \
| finding | sim_jax 75 ms vs torch 90 ms (min of 7): not the gap; padding 65 tokens to 72 / 80 \
made it slower (91 / 98 ms), head-major einsums too (82 ms) | by-hand micro-benchmark |
| SIM_JAX_HUGEPAGES=resident's tunables for the *whole* benchmark process (both frameworks) | \
finding | PyTorch gains from them as much or more: ViT-Ti torch 4.2 -> 3.3 s, sim_jax 6.3 -> \
4.3 s; same-environment ratios ViT-Ti 0.77x (4 splits 0.84x), LeNet-5 0.90x, ResNet-18 0.60x, \
multi-scale 0.65x. So it is no way to a fairer headline; the headline stays glibc defaults for \
both | `GLIBC_TUNABLES=... python bench/train_step.py ...` \
(`bench/results/train_step_resident_both_*.json`) |
| profile of the ResNet-18 step with XLA's convolutions (session 7) | finding | \
`transpose_copy_fusion` 64.5% of op spans (3.6 s of a 9.3 s profiled step): the layout copies \
that move N innermost for each weight-gradient convolution ([C, H, W, N]) had batch norm's \
scale/shift, the ReLUs and the residual adds fused in, evaluated in the copy's transposed order; \
along the residual stream one copy re-computed three blocks' chains (0.95 s for layer1_1's \
output, 0.2-0.25 s for a single chain, against ~30 ms for a plain transpose of that array) | \
`python bench/profile_step.py --workload=resnet18` |
| what batch norm costs each framework inside the ResNet-18 step (every BN the identity in both \
twins, same rounds), measured before the next rows' `materialize` | finding | \
sim_jax 7.83 -> 5.40 s (**2.43 s**), torch 4.43 -> 3.72 s \
(0.70 s); ratio 0.56x with BN, 0.69x without. Per step, sim_jax 529k minor faults, 10.5 s user \
and 4.4 s system CPU time with BN (362k / 8.7 / 1.9 without); torch 682k / 7.5 / 1.1. \
Multi-scale: BN costs both ~0.4 s | `python bench/resnet_parts.py --part=ablate \
--workloads=resnet18,multiscale --repeats=5` \
(`bench/results/resnet_parts_before_materialize.json`) |
| forcing XLA to compute each ReLU output once: `lax.optimization_barrier`, an identity \
`lax.cond`, `max(y, y)`, `sqrt(y * y)`, a loop-invariant `while` | **not kept** | XLA:CPU \
removes each of them (barrier expanded, the others simplified): the compiled layout copies \
still take the convolution outputs and BN parameters as operands | by-hand HLO inspection |
| **ResNet: every ReLU output through `encoder.materialize`** (a one-trip `while` whose state is \
y x (i + 1) at i = 0, trip count read from the data, identity JVP; `config.model.materialize`, \
"auto" = on on CPU) | **kept; on by default on CPU** | the layout copies now read one \
materialised buffer each. ResNet-18 step 7.88 -> 5.56 s median (**1.42x**; min 7.47 -> 5.04 s), \
vs torch 0.60x -> **0.85x** (min 0.66x: one 7.2 s round); XLA temp 1838 -> 2014 MiB. Values \
and gradients bit-identical (`tests/models_materialize_test.py`). Not adopted elsewhere \
(by-hand A/B, 4-5 interleaved rounds): multi-scale ReLUs 0.90x, ViT-Ti GELU outputs 0.96x \
| `python bench/train_step.py \
--workloads=resnet18 --repeats=5 --variant off:model.materialize=off` \
(`bench/results/train_step_resnet_materialize.json`) |
| 3x3 weight gradient alone per ResNet-18 stage (256 images) vs `torch.nn.grad.conv2d_weight` \
| finding | median ms, XLA (input materialised) / with a fused BN + ReLU producer / torch: \
32x32x64 165 / 274 / 112; 16x16x128 115 / 135 / 81; 8x8x256 87 / 103 / 70; 4x4x512 71 / 79 / \
83. After `materialize` the remaining ResNet gap is mostly XLA/Eigen's weight-gradient \
convolution at 64 and 128 channels (117-168 GFLOP/s against torch's 173-239) | `python \
bench/resnet_parts.py --part=wgrad --repeats=5` \
(`bench/results/resnet_parts_before_materialize.json`: the micro-benchmark does not use it) |
| weight gradient with the images stacked along H (two zero rows between them), so the \
convolution's feature dimension is 1 and its input is [C, N, H+2, W+2]; im2col + one GEMM; 9 \
shifted TN GEMMs | **not kept** | stacked 206 / 148 / 125 / 138 ms for the four stages \
(slower than XLA's own, 165 / 115 / 87 / 71); im2col 916 ms and shifted GEMMs 1153 ms at \
32x32x64 | `bench/resnet_parts.py` (`xla_stacked` column; `weight_grad_stacked` tested \
against a NumPy loop); im2col / shifted GEMMs by-hand |
| finding: a step timed right after the *other* framework's step is slower (virtio-balloon \
free page reporting on these VMs) -> **one untimed re-warm step per framework per round** \
(`bench/train_step.py --rewarm=1`, the default) | **protocol change** | 3 GiB mapped and \
touched: 3.4 s of system time after a 1-5 s wait vs 1.7 s right after a free (median). ViT-Ti \
sim_jax steps after a torch step 4.3-5.4 s (one process, `train_step_vit_splits.json`) / \
6.5-7.3 s (own process each) vs 3.9-4.0 / 4.6-4.8 s after its own. Headline without -> with \
re-warm (different hours): LeNet-5 1.05x -> 1.33x, ResNet-18 0.87x -> 0.93x, ViT-Ti 0.75x -> \
0.93x, multi-scale 0.92x -> 0.95x; \
ViT-Ti back to back, alternating: 0.73x, **1.02x**, 0.78x, **0.94x** (without, with, without, \
with; `train_step_vit_rewarm_ab_*.json`) | \
`python bench/fault_probe.py`; `python bench/train_step.py --rewarm=0 ...` \
(`bench/results/fault_probe.json`, `train_step_norewarm.json`, \
`train_step_vit_workers_norewarm.json`, `train_step_one_step_per_execution.json`) |
| **several train steps per jitted execution** (`config.train.steps_per_execution`, \
`sim_jax.train.train_steps`: an unrolled `lax.scan` of the step over k stacked batches; auto = \
4 on CPU when the one-step program's XLA scratch buffer is above glibc's 32 MiB mmap threshold) \
| **kept; auto by default** | XLA:CPU maps and faults in its whole scratch buffer at every \
execution (ViT-Ti, own process: 0.88 M minor faults, 1.87 s system time per step); with 4 \
steps per execution 0.24 M and 0.46 s, step 4.69-4.93 -> 3.81-3.86 s \
(`train_step_vit_workers_spe_auto.json`, `..._spe1.json`). In the headline's rounds, auto over one \
step per execution: ViT-Ti **1.13x** \
(min 1.24x), ResNet-18 1.12x, multi-scale 1.11x, LeNet-5 1 step either way; vs torch ViT-Ti \
0.99x -> **1.12x**, ResNet-18 0.83x -> 0.93x, multi-scale 0.85x -> 0.94x. Unrolled: a rolled \
scan was slower (by-hand check, not in the repo). Costs compile time (ViT-Ti 9 -> 49 s) | \
`python bench/train_step.py --repeats=5 --variant spe1:train.steps_per_execution=1` \
(`train_step.json`) |
"""


def write_docs(results, status, quick: bool) -> None:
  stamp = time.strftime("%Y-%m-%d %H:%M")
  mode = " (quick mode: smoke sizes, not results)" if quick else ""
  body = results_md(results, status)
  docs = (f"# Benchmarks{mode}\n\nGenerated by `python -m bench.run_all` on {stamp} from the JSON "
          f"each benchmark writes under `bench/results/`. Ratios are sim_jax / other "
          f"throughput unless stated; the machine was shared, so absolute numbers are noisy and "
          f"each ratio comes from interleaved runs in one process.\n\n{body}")
  with open(os.path.join(_REPO, "docs", "benchmarks.md"), "w") as f:
    f.write(docs)
  how = ("# bench/\n\nSide-by-side benchmarks. Run all of them and regenerate this page and "
         "`docs/benchmarks.md`:\n\n```\npython -m bench.run_all            # full (long)\n"
         "python -m bench.run_all --quick    # smoke sizes\npython -m bench.run_all "
         "--report_only  # markdown from the existing JSON\n```\n\n"
         "| script | measures |\n|---|---|\n"
         "| `allocators.py` | each framework's step under each malloc, one worker process "
         "each |\n"
         "| `train_step.py` | one full train step, sim_jax vs PyTorch + pml, 4 workloads |\n"
         "| `loss_scaling.py` | dense vs streaming losses vs pml as N grows |\n"
         "| `input_pipeline.py` | grain pipeline throughput vs the step's consumption |\n"
         "| `retrieval.py` | exact blockwise top-k vs faiss |\n"
         "| `xla_flags.py` | the train step under each XLA:CPU flag set, one process each |\n\n")
  if OPTIMIZATIONS:
    how += OPTIMIZATIONS + "\n"
  with open(os.path.join(_REPO, "bench", "README.md"), "w") as f:
    f.write(how + f"# Results{mode} ({stamp})\n\n" + body.replace("\n## ", "\n### ")
            .replace("## Environment", "### Environment", 1))


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
  write_docs(results, status, args.quick)
  print(f"[run_all] wrote bench/README.md and docs/benchmarks.md from {sorted(results)}")


if __name__ == "__main__":
  main()
