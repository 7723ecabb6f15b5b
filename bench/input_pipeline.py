"""Input pipeline throughput vs what a train step consumes, measured in one run.

  python bench/input_pipeline.py [--quick]   # writes bench/input_pipeline.json + docs table

The step is this script's own jitted LeNet-like forward + backward (2 conv + 2 dense, contrastive
pair-free SupCon-like loss replaced by a mean-square of embeddings: the cost that matters here is
the compute per image), with the default config's data settings and on-device augmentation.
Data wait fraction = time blocked in next(iterator) / total loop time, pipeline and step run
in the same loop (the pipeline is pulled synchronously: the pessimistic case).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default as default_config  # noqa: E402
from sim_jax.data import augment, create_train_iterator  # noqa: E402


class LeNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5))(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(120)(x.reshape(x.shape[0], -1)))
    return nn.Dense(64)(x)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="bench/input_pipeline.json")
  args = p.parse_args()
  cfg = default_config.get_config()
  batch_size = int(cfg.train.batch_size) if "train" in cfg and "batch_size" in cfg.train else 64
  steps = 20 if args.quick else 200
  if cfg.data.sampler == "pk":  # P x K must fit the class count (digits: 10 classes)
    from sim_jax.data import get_info

    k = int(cfg.data.examples_per_class)
    batch_size = min(batch_size, get_info(cfg.data).num_classes * k)
  it = create_train_iterator(cfg.data, global_batch_size=batch_size, seed=0)
  aug = augment.make_augment_fn(cfg.data.augment)
  model = LeNet()
  first = next(it)
  params = model.init(jax.random.key(0), jnp.zeros(first["image"].shape, jnp.float32))

  @jax.jit
  def step(params, images, key):
    x = aug(key, images.astype(jnp.float32) / 255.0)
    loss_fn = lambda p: jnp.mean(model.apply(p, x) ** 2)
    loss, g = jax.value_and_grad(loss_fn)(params)
    return jax.tree.map(lambda a, b: a - 1e-3 * b, params, g), loss

  params, loss = step(params, first["image"], jax.random.key(0))
  jax.block_until_ready(loss)
  # 1) pipeline alone
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  pipe_s = time.perf_counter() - t
  # 2) step alone (same batch)
  t = time.perf_counter()
  for i in range(steps):
    params, loss = step(params, first["image"], jax.random.key(i))
  jax.block_until_ready(loss)
  step_s = time.perf_counter() - t
  # 3) together: time blocked on data
  wait, t = 0.0, time.perf_counter()
  for i in range(steps):
    t0 = time.perf_counter()
    batch = next(it)
    wait += time.perf_counter() - t0
    params, loss = step(params, batch["image"], jax.random.key(i))
  jax.block_until_ready(loss)
  total = time.perf_counter() - t
  result = {"dataset": cfg.data.name, "sampler": cfg.data.sampler, "batch_size": batch_size,
            "image_shape": list(first["image"].shape[1:]), "augment": cfg.data.augment.name,
            "steps": steps, "pipeline_images_per_s": steps * batch_size / pipe_s,
            "step_images_per_s": steps * batch_size / step_s,
            "data_wait_fraction": wait / total, "quick": args.quick,
            "device": str(jax.devices()[0])}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  with open("docs/bench_input_pipeline.md", "w") as f:
    f.write("# Input pipeline vs train step (bench/input_pipeline.py)\n\n"
            "Step = the bench's own jitted LeNet-like forward+backward with on-device "
            "augmentation (not the trainer's step). Pipeline pulled synchronously in the loop.\n\n"
            "| dataset | sampler | batch | image | augment | pipeline img/s | step img/s | "
            "data wait |\n|---|---|---|---|---|---|---|---|\n"
            f"| {result['dataset']} | {result['sampler']} | {batch_size} | "
            f"{'x'.join(map(str, result['image_shape']))} | {result['augment']} | "
            f"{result['pipeline_images_per_s']:.0f} | {result['step_images_per_s']:.0f} | "
            f"{100 * result['data_wait_fraction']:.1f}% |\n\n"
            f"Command: `python bench/input_pipeline.py{' --quick' if args.quick else ''}` "
            f"({steps} steps, {result['device']}, 2-core shared CPU machine).\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
