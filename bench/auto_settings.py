"""The trainer's `auto` settings as they resolve on a platform, against the picks documented for it.

  python bench/auto_settings.py                   # this JAX backend; exit 1 if a pick is wrong
  python bench/auto_settings.py --platform=gpu    # as they resolve for a GPU, on any machine
  python bench/auto_settings.py --run_models      # also one loss + gradient of each model form
                                                  # on this backend's first device

Issue 30 asks that the default `auto` settings pick the right thing on a GPU. Every XLA:CPU
choice of the trainer resolves from a platform string (`sim_jax.cpu`, `sim_jax.models.get_model`),
so this script resolves each one for `--platform` (default: the backend's, i.e. what the trainer
passes there) and compares it with EXPECTED, the table docs/performance.md states ("CPU tuning"):
on CPU the tuned forms, anywhere else the plain step and the plain Flax modules. The compiler
options need a device of that platform and are resolved only for the backend's own.
`--run_models` compiles and runs, on the backend's device, the form `get_model` picks there for
each model (a batch of 8 images, a fixed projection of the embeddings, its gradient), so a plain
module that does not compile on that backend shows up here. Writes JSON (--out) and markdown (--md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # `python bench/auto_settings.py` puts bench/, not the repo, on the path

from configs import default  # noqa: E402
from sim_jax import cpu  # noqa: E402
from sim_jax.cpu import kernels  # noqa: E402
from sim_jax.models import cpu_ops, get_model, lenet, multiscale, vit  # noqa: E402

# The one-step program's scratch sizes that `resolve_steps_per_execution` is asked about: below
# and above glibc's mmap threshold (32 MiB).
SMALL_TEMP, LARGE_TEMP = 2**20, 2**30

# (model, backbone field, its CPU form, its plain form, image size): what `get_model` must build.
FORMS = (
    ("lenet5", "stage", cpu_ops.FusedConvReluPool, lenet.ConvReluPool, 28),
    ("vit_ti", "block", cpu_ops.FusedBlock, vit.Block, 32),
    ("resnet18", "materialize", True, False, 32),
    ("multiscale", "pool", kernels.max_pool_2x2, multiscale.max_pool, 64),
    ("mobilenet_v3_small", "depthwise", cpu_ops.ShiftedDepthwiseConv, nn.Conv, 28),
    ("efficientnet_b0", "depthwise", cpu_ops.ShiftedDepthwiseConv, nn.Conv, 28),
)

# setting -> (value on CPU, value on any other platform), as docs/performance.md states them.
EXPECTED = {
    "parallel_splits, lenet5 (256 pairs, no batch norm)": (4, 1),
    "parallel_splits, resnet18 (batch norm)": (1, 1),
    "steps_per_execution, 1 MiB scratch": (1, 1),
    "steps_per_execution, 1 GiB scratch": (4, 1),
    "model.materialize=auto": (True, False),
    **{f"get_model {m}: {field}": ("cpu form", "plain") for m, field, *_ in FORMS},
}


def _config(model: str, image_size: int = 28):
  cfg = default.get_config()
  cfg.unlock()
  cfg.model.name = model
  cfg.model.patch_size = 4
  cfg.data.image_size = image_size
  cfg.lock()
  return cfg


def _form(model: str, field: str, cpu_form, plain_form, platform: str) -> str:
  value = getattr(get_model(_config(model).model, platform).backbone, field)
  return "cpu form" if value is cpu_form else "plain" if value is plain_form else repr(value)


def resolve(platform: str) -> dict:
  """Every `auto` setting of EXPECTED as it resolves for `platform`: {setting: (value, why)}."""
  out = {}
  for name, model, bn in (("lenet5 (256 pairs, no batch norm)", "lenet5", False),
                          ("resnet18 (batch norm)", "resnet18", True)):
    out[f"parallel_splits, {name}"] = cpu.resolve_parallel_splits(
        _config(model), platform=platform, has_batch_norm=bn, inputs_per_device=512)
  for label, temp in (("1 MiB", SMALL_TEMP), ("1 GiB", LARGE_TEMP)):
    out[f"steps_per_execution, {label} scratch"] = cpu.resolve_steps_per_execution(
        _config("lenet5"), platform=platform, temp_bytes=temp)
  out["model.materialize=auto"] = (cpu_ops.resolve_materialize("auto", platform), "")
  for model, field, cpu_form, plain_form, _ in FORMS:
    out[f"get_model {model}: {field}"] = (_form(model, field, cpu_form, plain_form, platform), "")
  return out


def check(platform: str) -> list[dict]:
  """One row per setting: resolved value, expected value, whether they agree, and why."""
  resolved = resolve(platform)
  rows = []
  for setting, (on_cpu, elsewhere) in EXPECTED.items():
    value, why = resolved[setting]
    expected = on_cpu if platform == "cpu" else elsewhere
    rows.append({"setting": setting, "value": value, "expected": expected,
                 "ok": value == expected, "why": why})
  return rows


def compiler_options_row() -> dict:
  """The train step's compiler options on the backend's own devices (needs such a device)."""
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  value = cpu.compiler_options(mesh)
  expected = cpu.CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  return {"setting": "compiler_options", "value": value, "expected": expected,
          "ok": value == expected, "why": f"mesh of {jax.devices()[0].device_kind}"}


def run_models(names: list[str]) -> list[dict]:
  """Compile and run the form `get_model` picks on this backend for each model of FORMS named."""
  rows = []
  for model, _, _, _, size in [f for f in FORMS if f[0] in names]:
    cfg = _config(model, size)
    net = get_model(cfg.model)
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, size, size, 1))
    row = {"model": model, "backend": jax.default_backend()}
    try:
      variables = net.init(jax.random.PRNGKey(1), x, train=False)
      params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

      def loss(p, rest=rest, net=net, x=x):
        (emb, _), _ = net.apply({"params": p, **rest}, x, train=True, mutable=list(rest),
                                rngs={"dropout": jax.random.PRNGKey(2)})
        # A fixed projection of the embeddings: unlike their norm (1 after the L2 head) its
        # gradient reaches every parameter.
        return jnp.mean(emb * jnp.linspace(-1.0, 1.0, emb.shape[-1]))

      start = time.perf_counter()
      step = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
      row["compile_s"] = time.perf_counter() - start
      value, grads = step(params)
      jax.block_until_ready(grads)
      finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
      row.update(ok=bool(jnp.isfinite(value)) and finite, loss=float(value))
    except Exception as e:  # noqa: BLE001  (a failing model is a row of the report, not a stop)
      row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
    rows.append(row)
  return rows


def markdown(report: dict) -> str:
  lines = [f"`auto` settings resolved for platform **{report['platform']}** (JAX backend "
           f"{report['backend']}, {report['device']}, jax {report['jax']}). Command: "
           f"`{report['command']}`", "",
           "| setting | resolved | expected | ok | why |", "|---|---|---|---|---|"]
  for r in report["settings"]:
    lines.append(f"| {r['setting']} | {r['value']} | {r['expected']} | "
                 f"{'yes' if r['ok'] else '**NO**'} | {r['why']} |")
  if report.get("models"):
    lines += ["", "| model (form picked here) | compile (s) | loss | runs |",
              "|---|---|---|---|"]
    for r in report["models"]:
      compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
      value = f"{r['loss']:.4f}" if "loss" in r else r.get("error", "-")
      lines.append(f"| {r['model']} | {compile_s} | {value} | {'yes' if r['ok'] else '**NO**'} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--platform", default="",
                      help="cpu, gpu or tpu (default: this JAX backend's, as the trainer uses)")
  parser.add_argument("--run_models", action="store_true")
  parser.add_argument("--models", default=",".join(f[0] for f in FORMS),
                      help="the models --run_models runs (comma-separated)")
  parser.add_argument("--out", default="")
  parser.add_argument("--md", default="")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.models.split(",")) - {f[0] for f in FORMS})
  if unknown:
    parser.error(f"--models: unknown {unknown}; known: {', '.join(f[0] for f in FORMS)}")
  backend = jax.default_backend()
  platform = args.platform or backend
  rows = check(platform)
  if platform == backend:
    rows.append(compiler_options_row())
  report = {"platform": platform, "backend": backend, "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "settings": rows,
            "models": run_models(args.models.split(",")) if args.run_models else [],
            "command": "python " + " ".join(["bench/auto_settings.py", *sys.argv[1:]])}
  text = markdown(report)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1, default=repr)
  if args.md:
    with open(args.md, "w") as f:
      f.write(text)
  return 0 if all(r["ok"] for r in rows + report["models"]) else 1


if __name__ == "__main__":
  sys.exit(main())
