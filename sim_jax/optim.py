"""The optimizer of `config.optimizer`: optax transformation and learning-rate schedule."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then constant or cosine decay to `end_lr_fraction * learning_rate`."""
  peak, warmup = opt.learning_rate, min(opt.warmup_steps, max(total_steps - 1, 0))
  if opt.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
        [warmup]) if warmup else optax.constant_schedule(peak)
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * opt.end_lr_fraction)
  raise ValueError(f"config.optimizer.schedule must be 'constant' or 'cosine', "
                   f"got {opt.schedule!r}")


def _decay_mask(params):
  # Weight decay on kernels only: biases, norms' scales and the loss's own scalars are left alone.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int):
  """The optax transformation for `config.optimizer` and its learning-rate schedule."""
  schedule = make_schedule(opt, total_steps)
  if opt.name == "adam":
    tx = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  elif opt.name == "adamw":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                     mask=_decay_mask)
  elif opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=_decay_mask),
                     optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  elif opt.name == "lars":  # SimCLR's large-batch optimizer.
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=_decay_mask,
                    trust_coefficient=opt.lars_trust_coefficient, momentum=opt.momentum,
                    nesterov=opt.nesterov, trust_ratio_mask=_decay_mask)
  else:
    raise ValueError(f"config.optimizer.name must be one of adam, adamw, sgd, lars; "
                     f"got {opt.name!r}")
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule
