"""Adversarial examples for training and evaluation (seed 000: "adversarial training").

Both attacks maximise a scalar loss L(x) of float images x in [0, 1] (any shape); the step sizes
are given in pixel units, i.e. intensity levels of 0..255 (epsilon=8 is 8/255 on [0, 1] images):
  FGSM (Goodfellow et al. 2015):   x' = clip(x + e * sign(dL/dx), 0, 1),  e = epsilon / 255
  PGD  (Madry et al. 2018), k = steps, a = step_size / 255, from a uniform random start:
    x_0     = clip(x + U(-e, e), 0, 1)
    x_{t+1} = clip(clip(x_t + a * sign(dL/dx_t), x - e, x + e), 0, 1),    x' = x_k
so |x' - x| <= e elementwise and x' in [0, 1]. dL/dx comes from `jax.grad` w.r.t. the images;
the result is `stop_gradient`-ed, so the parameters' gradient never flows through the attack
and both run inside a jitted step.

Adversarial training (`config.train.adversarial`, `perturb`): each train step attacks the step's
own loss (same augmentation draws, dropout and batch, the parameters before the update) and
replaces round(ratio * B) of the batch's B leading entries (images, pairs or triplets, so a pair
stays whole), chosen uniformly at random per step, by their adversarial versions; the update is
then the usual one on the mixed batch (ratio=1: adversarial only; 0.5: Goodfellow et al.'s
half-and-half objective, up to the batch coupling of all-pairs losses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

METHODS = ("none", "fgsm", "pgd")
PIXEL_LEVELS = 255.0  # images on the wire are uint8; the encoder sees them / 255
# Folded into the step key for the attack's own randomness (PGD's start, the mixed rows), so the
# augmentation and dropout draws of the step are the ones the attack targets.
_ATTACK_SALT = 0x616476


def fgsm(loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, epsilon: float) -> jax.Array:
  """One signed-gradient step of `epsilon` pixel levels: clip(x + e sign(grad L(x)), 0, 1)."""
  g = jax.grad(loss_fn)(x)
  return jax.lax.stop_gradient(jnp.clip(x + (epsilon / PIXEL_LEVELS) * jnp.sign(g), 0.0, 1.0))


def pgd(loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, epsilon: float,
        step_size: float, steps: int, rng: jax.Array | None = None) -> jax.Array:
  """`steps` projected signed-gradient steps in the L-inf ball of `epsilon` pixel levels (the
  module docstring's formula); `rng` None starts at x itself instead of a random point."""
  e, a = epsilon / PIXEL_LEVELS, step_size / PIXEL_LEVELS
  x0 = x if rng is None else jnp.clip(
      x + jax.random.uniform(rng, x.shape, x.dtype, -e, e), 0.0, 1.0)

  def step(_, xa):
    xa = xa + a * jnp.sign(jax.grad(loss_fn)(xa))
    return jnp.clip(jnp.clip(xa, x - e, x + e), 0.0, 1.0)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, step, x0))


def attack(method: str, loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, *,
           epsilon: float, steps: int, step_size: float, rng: jax.Array) -> jax.Array:
  """`fgsm` or `pgd` (random start) by name."""
  if method == "fgsm":
    return fgsm(loss_fn, x, epsilon)
  if method == "pgd":
    return pgd(loss_fn, x, epsilon, step_size, steps, rng)
  raise ValueError(f"attack method must be one of {METHODS[1:]}; got {method!r}")


def parse_attacks(text: str, key: str = "config.eval.robust_attacks") -> tuple[str, ...]:
  """"fgsm,pgd" -> ("fgsm", "pgd"); "" -> (); an unknown name raises ValueError naming `key`."""
  names = tuple(t.strip() for t in str(text).split(",") if t.strip())
  for n in names:
    if n not in METHODS[1:]:
      raise ValueError(f"{key}={text!r}: {n!r} is not one of {METHODS[1:]}")
  return names


def mix_mask(rng: jax.Array, n: int, ratio: float) -> jax.Array:
  """bool [n] with exactly round(ratio * n) True entries at uniformly random positions."""
  count = int(round(ratio * n))
  return jnp.argsort(jax.random.uniform(rng, (n,))) < count


def _to_float(images: jax.Array) -> jax.Array:
  # As train.to_float_images (this leaf module cannot import the trainer): uint8 -> [0, 1].
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / PIXEL_LEVELS
  return images.astype(jnp.float32)


def perturb(config, loss_fn: Callable, params, batch_stats, batch: Mapping[str, Any],
            rng: jax.Array, memory=None) -> Mapping[str, Any]:
  """The train step's batch with round(ratio * B) entries replaced by adversarial ones.

  `loss_fn(params, batch_stats, batch, rng, memory) -> (loss, aux)` is the step's loss
  (`train.compute_loss` bound to its config); `config.train.adversarial.method` "none" returns
  `batch` itself (nothing traced). The images come back as float32 in [0, 1].
  """
  cfg = config.train.adversarial
  if cfg.method == "none":
    return batch
  x = _to_float(batch["image"])

  def loss_of_images(images):
    return loss_fn(params, batch_stats, {**batch, "image": images}, rng, memory)[0]

  k_attack, k_mix = jax.random.split(jax.random.fold_in(rng, _ATTACK_SALT))
  x_adv = attack(cfg.method, loss_of_images, x, epsilon=cfg.epsilon, steps=cfg.steps,
                 step_size=cfg.step_size, rng=k_attack)
  mask = mix_mask(k_mix, x.shape[0], cfg.ratio).reshape((-1,) + (1,) * (x.ndim - 1))
  return {**batch, "image": jnp.where(mask, x_adv, x)}


def check_config(config) -> None:
  """Refuses an unknown method and the combinations the attack cannot run with (ranges of the
  numeric fields are `validation.RANGES`)."""
  cfg = config.train.adversarial
  if cfg.method not in METHODS:
    raise ValueError(f"config.train.adversarial.method={cfg.method!r}; expected one of "
                     f"{METHODS}")
  if cfg.method != "none" and config.train.grad_accum_chunks > 1:
    raise ValueError(f"config.train.adversarial.method={cfg.method!r} needs the whole batch's "
                     f"image gradient; config.train.grad_accum_chunks="
                     f"{config.train.grad_accum_chunks} (GradCache) must be 1")
  parse_attacks(config.eval.robust_attacks)
