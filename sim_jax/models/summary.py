"""Parameter counts and forward FLOPs per image of a model config.

  python -m sim_jax.models.summary --model=resnet50 --image_size=224
  python -m sim_jax.models.summary --table   # the docs/models.md table

FLOPs come from XLA's cost analysis of the compiled eval-mode forward pass at batch 1 (a
multiply-add counts as 2 FLOPs, so ResNet-50 at 224 px reads ~8.0 GFLOPs where papers quote
4.1 G multiply-adds; XLA also skips the zero-padding taps of convolutions, so convolutional
nets on small maps read a few percent below 2 x the textbook multiply-adds). Parameters are
counted with `jax.eval_shape`, so nothing is allocated.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import jax
import jax.numpy as jnp

from sim_jax.models import default_config, get_model


def _count(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def summarize(model_config, image_shape: tuple[int, int, int], flops: bool = True) -> dict:
  """{"name", "image_shape", "params", "params_backbone", "params_head", "batch_stats",
  "flops_per_image" (None when flops=False or the backend reports none)} for [H, W, C] images."""
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C); got {image_shape}")
  model = get_model(model_config)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  params = variables["params"]
  out = {
      "name": model_config.name, "image_shape": tuple(image_shape), "params": _count(params),
      "params_backbone": _count(params.get("backbone", {})),
      "params_head": _count({k: v for k, v in params.items() if k != "backbone"}),
      "batch_stats": _count(variables.get("batch_stats", {})), "flops_per_image": None,
  }
  if flops:
    fwd = jax.jit(lambda v, images: model.apply(v, images, train=False))
    cost = fwd.lower(variables, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "flops" in cost:
      out["flops_per_image"] = float(cost["flops"])
  return out


def _fmt(n: float | None) -> str:
  if n is None:
    return "n/a"
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= scale:
      return f"{n / scale:.2f}{unit}"
  return f"{n:.0f}"


TABLE = (  # (name, image size, channels, source)
    ("lenet5", 28, 1, "LeCun et al. 1998; seed 002"),
    ("multiscale", 32, 3, "seed 000 (1x1/3x3/5x5 branches)"),
    ("resnet18", 32, 3, "He et al. 2016, small stem"),
    ("resnet18", 224, 3, "He et al. 2016; torchvision"),
    ("resnet34", 224, 3, "He et al. 2016; torchvision"),
    ("resnet50", 64, 3, "He et al. 2016, small stem; seed 004"),
    ("resnet50", 224, 3, "He et al. 2016; torchvision; seeds 003/004"),
    ("vgg16", 224, 3, "Simonyan & Zisserman 2015; torchvision; seed 003"),
    ("vit_ti", 224, 3, "Dosovitskiy et al. 2021; timm"),
    ("vit_s", 224, 3, "Dosovitskiy et al. 2021; timm"),
    ("vit_b", 224, 3, "Dosovitskiy et al. 2021; timm; seed 004"),
    ("mobilenet_v3_small", 224, 3, "Howard et al. 2019; torchvision; seed 004"),
    ("efficientnet_b0", 224, 3, "Tan & Le 2019; torchvision; seed 004"),
    ("densenet121", 224, 3, "Huang et al. 2017; torchvision; seed 004"),
    ("swin_t", 224, 3, "Liu et al. 2021; torchvision; seed 004"),
)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", default="resnet50")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--embedding_dim", type=int, default=0, help="0: backbone features only")
  p.add_argument("--table", action="store_true", help="print the docs/models.md table")
  args = p.parse_args(argv)
  rows = TABLE if args.table else ((args.model, args.image_size, args.channels, ""),)
  if args.table:
    print("| model | input | params (backbone) | FLOPs / image | source |\n|---|---|---|---|---|")
  for name, size, channels, source in rows:
    cfg = default_config()
    cfg.name, cfg.embedding_dim, cfg.attention = name, args.embedding_dim, "none"
    if name == "lenet5":
      cfg.embedding_dim = 10  # LeNet-5's F7 layer is part of the published network
    s = summarize(cfg, (size, size, channels))
    if args.table:
      print(f"| {name} | {size}x{size}x{channels} | {s['params']:,} | "
            f"{_fmt(s['flops_per_image'])} | {source} |")
    else:
      print(f"model={name} image={size}x{size}x{channels} params={s['params']:,} "
            f"(backbone {s['params_backbone']:,}, head {s['params_head']:,}) "
            f"batch_stats={s['batch_stats']:,} flops_per_image={_fmt(s['flops_per_image'])}")


if __name__ == "__main__":
  main()
