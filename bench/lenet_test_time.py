"""Seed 002's Table 4: time to score the 10,000 Fashion-MNIST test images, Siamese LeNet-5 vs a
plain LeNet-5 classifier, on the same machine in the same process, as a ratio.

  python bench/lenet_test_time.py                # writes bench/results/lenet_test_time.{json,md}
  python bench/lenet_test_time.py --synthetic    # random uint8 images (no dataset needed)

Both models are the ones `configs/lenet_siamese.py` trains (the SN-LeNet-5 default and its
`classifier` ablation's `lenet5_softmax`), at their initial parameters: the time of a forward
pass does not depend on the weights' values. Scoring, per test image:
- classifier: LeNet-5 -> 10 logits -> argmax (one forward pass per image);
- SN-LeNet-5, per pair: the test image and a partner image both through the subnet, then the
  head s = sigmoid(b - w ||e1 - e2||) > 0.5 (two forward passes per image; how seed 002 scores
  a pair);
- SN-LeNet-5, cached: each image embedded once, then the head on its pair (one forward pass
  plus the head; partners' embeddings assumed already computed).
Each scorer is jitted on batches of --batch images (compile excluded: one warm-up call), run
over the 10,000 images, in --rounds interleaved rounds; the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import lenet_siamese
from sim_jax import data, models
from sim_jax.experiments import variants
from sim_jax.losses import objective
from sim_jax.train import to_float_images


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=500, help="images per jitted call")
  p.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds (median kept)")
  p.add_argument("--synthetic", action="store_true", help="random images instead of the test set")
  p.add_argument("--out", default="bench/results/lenet_test_time.json")
  p.add_argument("--md", default="bench/results/lenet_test_time.md")
  return p.parse_args()


def _configs():
  sn = lenet_siamese.get_config()
  cls_variant = next(v for v in lenet_siamese.get_ablations()["classifier"]
                     if v.label == "lenet5_softmax")
  return sn, variants.apply_overrides(lenet_siamese.get_config(), cls_variant.overrides)


def make_scorers(sn_cfg, cls_cfg, image_shape):
  """{name: fn(images [B, H, W, C] uint8, partners same) -> predictions [B]}, jitted."""
  key = jax.random.PRNGKey(0)
  x = jnp.zeros((2, *image_shape), jnp.float32)
  sn_model, cls_model = models.get_model(sn_cfg.model), models.get_model(cls_cfg.model)
  sn_vars = sn_model.init(key, x, train=False)
  cls_vars = cls_model.init(key, x, train=False)
  head = models.get_pair_head(sn_cfg.model)
  e = jnp.zeros((2, sn_cfg.model.embedding_dim))
  head_vars = head.init(key, e, e)
  loss_params = objective.init_params(cls_cfg.loss, embedding_dim=cls_cfg.model.embedding_dim,
                                      num_classes=10, rng=key)
  embed = lambda model, v, im: model.apply(v, to_float_images(im), train=False)[0]  # noqa: E731

  @jax.jit
  def classifier(images, partners):
    del partners
    z = embed(cls_model, cls_vars, images)
    return jnp.argmax(objective.classifier_logits({"loss": loss_params}, z), axis=1)

  @jax.jit
  def siamese_pair(images, partners):
    e1, e2 = embed(sn_model, sn_vars, images), embed(sn_model, sn_vars, partners)
    return head.apply(head_vars, e1, e2) > 0

  @jax.jit
  def siamese_cached(images, partner_embeddings):
    return head.apply(head_vars, embed(sn_model, sn_vars, images), partner_embeddings) > 0

  partner_emb = jnp.zeros((1, sn_cfg.model.embedding_dim))
  return {"lenet5_classifier": classifier, "sn_lenet5_pair": siamese_pair,
          "sn_lenet5_cached": lambda im, _: siamese_cached(
              im, jnp.broadcast_to(partner_emb, (im.shape[0], partner_emb.shape[1])))}


def time_once(fn, images, partners, batch) -> float:
  t0 = time.perf_counter()
  for start in range(0, len(images), batch):
    out = fn(images[start:start + batch], partners[start:start + batch])
  jax.block_until_ready(out)
  return time.perf_counter() - t0


def main():
  args = parse_args()
  sn_cfg, cls_cfg = _configs()
  if args.synthetic:
    images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28, 1), dtype=np.uint8)
  else:
    images = data.load_split(sn_cfg.data, "test")["image"]
  if len(images) % args.batch:
    raise ValueError(f"--batch={args.batch} must divide the {len(images)} test images")
  partners = images[np.random.default_rng(1).permutation(len(images))]
  images, partners = jax.device_put(images), jax.device_put(partners)
  scorers = make_scorers(sn_cfg, cls_cfg, images.shape[1:])
  for fn in scorers.values():  # compile outside the timed rounds
    jax.block_until_ready(fn(images[:args.batch], partners[:args.batch]))
  times = {name: [] for name in scorers}
  for _ in range(args.rounds):
    for name, fn in scorers.items():
      times[name].append(time_once(fn, images, partners, args.batch))
  median = {name: float(np.median(t)) for name, t in times.items()}
  base = median["lenet5_classifier"]
  result = {"num_images": int(len(images)), "batch": args.batch, "rounds": args.rounds,
            "synthetic": args.synthetic, "seconds_median": median, "seconds_all": times,
            "ratio_to_classifier": {n: t / base for n, t in median.items()},
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                        "load_average": list(os.getloadavg())}}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  lines = ["| scorer | seconds for 10,000 test images (median of "
           f"{args.rounds}) | ratio to the classifier |", "|---|---|---|"]
  lines += [f"| {n} | {t:.3f} | {t / base:.2f} |" for n, t in median.items()]
  lines.append(f"\n`python bench/lenet_test_time.py` on {jax.default_backend()}, "
               f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end.")
  with open(args.md, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
