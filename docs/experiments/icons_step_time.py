"""Seconds per train step of configs/icons.py at a few encoder widths / image sizes (CPU).

  python docs/experiments/icons_step_time.py --widths=4,8,16 --sizes=64,32 --steps=20

The trainer's own jitted step (`train.jit_train_step(train.make_setup(config))`, augmentation
included) on one batch drawn by the pipeline's batch maker from a synthetic split of random
images (no dataset needed); compile and the first step are not timed. Prints one line per
setting: width, image size, augmentation, seconds per step (median of `--repeats` blocks).
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sim_jax.data as sd  # noqa: E402
from configs import icons  # noqa: E402
from sim_jax import train  # noqa: E402
from sim_jax.data import pipeline, sources  # noqa: E402


def batch_for(config, classes: int = 64, per_class: int = 8) -> dict:
  size = config.data.image_size
  rng = np.random.default_rng(0)
  n = classes * per_class
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  source = sources.ArraySource(images, np.repeat(np.arange(classes), per_class), np.arange(n),
                               classes)
  return pipeline.BatchMaker(source, np.arange(n), config.data, config.train.batch_size,
                             seed=0).map(0)


def seconds_per_step(config, steps: int, repeats: int) -> float:
  batch = batch_for(config)
  info = sd.DatasetInfo("icon_themes", tuple(batch["image"].shape[-3:]), 64, {"train": 512})
  setup = train.make_setup(config, devices=jax.devices()[:1], info=info)
  state = train.init_state(setup, pretrained=False)
  step = train.jit_train_step(setup)
  state = step(state, batch)[0]
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state = step(state, batch)[0]
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t) / steps)
  return float(np.median(times))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--widths", default="4,8")
  p.add_argument("--sizes", default="64")
  p.add_argument("--augments", default="simclr")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  for size in map(int, a.sizes.split(",")):
    for width in map(int, a.widths.split(",")):
      for aug in a.augments.split(","):
        config = icons.get_config()
        config.model.width, config.data.image_size, config.data.augment.name = width, size, aug
        s = seconds_per_step(config, a.steps, a.repeats)
        print(f"width {width:3d}  size {size:3d}  augment {aug:7s}  {s:.3f} s/step", flush=True)


if __name__ == "__main__":
  main()
