"""Input pipeline throughput vs what the real train step consumes, measured in one run.

  python bench/input_pipeline.py [--quick] [--config=configs/default.py]

Writes bench/results/input_pipeline.json and .md. The step is the trainer's own,
`train.jit_train_step(train.make_setup(config))` (model, loss, on-device augmentation and
optimizer of the config), fed as `train_and_evaluate` feeds it: `next(iterator)` ->
`sharding.host_to_global` -> step, with JAX's asynchronous dispatch.

Measured, in this order, in one process:
- pipeline img/s: batches built on demand in the calling thread (no prefetch, no step running);
- step img/s: the jitted step on one fixed batch, back to back (no input pipeline);
- for each prefetch setting (on demand; the config's `prefetch_threads` / `prefetch_batches`;
  grain's own default of 16 threads x 500 batches): the train loop, with data wait = time blocked
  in `next(iterator)` / wall time of the loop (the trainer logs the same ratio as
  `train/data_wait_fraction`). The first batch of each iterator (thread start, buffer fill) and
  the first step (compilation) are not timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim_jax import sharding, train  # noqa: E402
from sim_jax.data import create_train_iterator  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def make_iterator(cfg, threads: int, batches: int):
  data = cfg.data.copy_and_resolve_references()
  data.prefetch_threads, data.prefetch_batches = threads, batches
  return create_train_iterator(data, global_batch_size=cfg.train.batch_size, seed=cfg.seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())


def pipeline_images_per_s(cfg, steps: int) -> float:
  it = make_iterator(cfg, 0, 0)
  next(it)
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * cfg.train.batch_size / (time.perf_counter() - t)


def step_images_per_s(trainer, step_fn, state, cfg, steps: int):
  batch = sharding.host_to_global(next(make_iterator(cfg, 0, 0)), trainer.mesh)
  state, m = step_fn(state, batch)  # compiles
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step_fn(state, batch)
  jax.block_until_ready((state, m))
  return steps * cfg.train.batch_size / (time.perf_counter() - t), state


def train_loop(trainer, step_fn, state, cfg, steps: int, threads: int, batches: int):
  """The trainer's loop; returns (data wait fraction, loop img/s, state)."""
  it = make_iterator(cfg, threads, batches)
  state, m = step_fn(state, sharding.host_to_global(next(it), trainer.mesh))
  jax.block_until_ready(m)
  wait, t = 0.0, time.perf_counter()
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = next(it)
    wait += time.perf_counter() - t0
    state, m = step_fn(state, sharding.host_to_global(batch, trainer.mesh))
  jax.block_until_ready((state, m))
  total = time.perf_counter() - t
  if hasattr(it, "close"):
    it.close()  # stops its prefetch threads before the next setting is measured
  return wait / total, steps * cfg.train.batch_size / total, state


def write_table(result: dict, path: str, command: str) -> None:
  rows = "".join(
      f"| {r['setting']} | {r['threads']} | {r['batches']} | {r['loop_images_per_s']:.0f} | "
      f"{100 * r['data_wait_fraction']:.1f}% |\n" for r in result["loops"])
  with open(path, "w") as f:
    f.write(
        "# Input pipeline vs train step (bench/input_pipeline.py)\n\n"
        f"Config `{result['config']}`: dataset `{result['dataset']}`, sampler "
        f"`{result['sampler']}`, global batch {result['batch_size']}, images "
        f"{'x'.join(map(str, result['image_shape']))}, model `{result['model']}`, loss "
        f"`{result['loss']}`, augmentation `{result['augment']}` (on device, inside the step). "
        "The step is the trainer's `train.jit_train_step(train.make_setup(config))`; the loop "
        "is `train_and_evaluate`'s "
        "(next -> host_to_global -> step, asynchronous dispatch).\n\n"
        "| pipeline img/s (on demand, no step) | step img/s (no pipeline) | ratio |\n"
        "|---|---|---|\n"
        f"| {result['pipeline_images_per_s']:.0f} | {result['step_images_per_s']:.0f} | "
        f"{result['pipeline_images_per_s'] / result['step_images_per_s']:.1f}x |\n\n"
        "Train loop, data wait = time blocked in `next(iterator)` / loop wall time:\n\n"
        "| prefetch | threads | batches ahead | loop img/s | data wait |\n|---|---|---|---|---|\n"
        f"{rows}\n"
        f"Command: `{command}` ({result['steps']} timed steps per measurement, "
        f"{result['device']}, {os.cpu_count()} CPU cores shared with other jobs; jax "
        f"{jax.__version__}).\n")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true", help="few steps: checks that the bench runs")
  p.add_argument("--config", default=os.path.join(_REPO, "configs", "default.py"))
  p.add_argument("--out", default=os.path.join(_REPO, "bench", "results", "input_pipeline.json"))
  p.add_argument("--table",
                 default=os.path.join(_REPO, "bench", "results", "input_pipeline.md"))
  args = p.parse_args()
  cfg = load_config(args.config)
  steps = 8 if args.quick else 60
  trainer = train.make_setup(cfg)
  step_fn = train.jit_train_step(trainer)
  state = train.init_state(trainer)
  pipe = pipeline_images_per_s(cfg, steps)
  step_rate, state = step_images_per_s(trainer, step_fn, state, cfg, steps)
  loops = []
  settings = [("on demand", 0, 0),
              ("config default", int(cfg.data.prefetch_threads),
               int(cfg.data.prefetch_batches)),
              ("grain default", 16, 500)]
  for name, threads, batches in settings:
    wait, rate, state = train_loop(trainer, step_fn, state, cfg, steps, threads, batches)
    loops.append({"setting": name, "threads": threads, "batches": batches,
                  "data_wait_fraction": wait, "loop_images_per_s": rate})
  result = {"config": os.path.relpath(args.config, _REPO), "dataset": cfg.data.name,
            "sampler": cfg.data.sampler, "batch_size": int(cfg.train.batch_size),
            "image_shape": list(trainer.image_shape), "model": cfg.model.name,
            "loss": cfg.loss.name, "augment": cfg.data.augment.name, "steps": steps,
            "pipeline_images_per_s": pipe, "step_images_per_s": step_rate, "loops": loops,
            "quick": args.quick, "device": str(jax.devices()[0])}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  write_table(result, args.table,
              "python bench/input_pipeline.py" + (" --quick" if args.quick else ""))
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
