"""Training and evaluation loop: train state, pure train/eval steps, `train_and_evaluate`.

Design (after flax/examples and big_vision):
- One `jax.jit` over a 1-D `data` mesh of every device of every process; batches are global
  `jax.Array`s assembled from process-local grain batches; parameters are replicated; the state is
  donated. XLA inserts the collectives, so batch-norm statistics and all-pairs losses (negatives)
  use the global batch.
- Steps are pure `(state, batch) -> (state, metrics)` with their dependencies bound by
  `functools.partial`; per-step randomness is `fold_in(state.rng, state.step)`, so a resumed run
  draws the same numbers as an uninterrupted one.
- Parameters that belong to the objective (a learnable margin) live in `params["loss"]` and are
  optimised and checkpointed with the encoder.
- A non-finite loss or gradient never reaches the parameters: the update is skipped and counted
  in the state. Past `config.train.max_nonfinite_skips` every later update is frozen and the host
  halts the run at its next check with the first bad step, without writing a checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, metrics, periodic_actions

from sim_jax import checkpointing, sharding

PAIR_LOSSES = ("contrastive", "learnable_margin_contrastive", "pair_bce", "snr_contrastive")
LABEL_LOSSES = ("nt_xent", "supcon", "triplet", "recall_at_k_surrogate", "softmax_ce")
SAMPLERS = ("pk", "random", "views", "pairs", "triplets")
# Sections whose change makes a checkpoint mean something else; `train.*` cadence fields, run
# length and `eval.*` may change between a run and its resume.
IMMUTABLE_KEYS = ("seed", "model", "data", "loss", "optimizer", "train.batch_size",
                  "train.grad_accum_chunks", "train.view_labels", "train.max_nonfinite_skips")


# XLA:CPU options of the jitted train step (see bench/README.md; `python bench/xla_flags.py`).
# jaxlib 0.10.2 hands convolutions to YNNPACK by default; in a profile of the ResNet-18 step its
# weight-gradient convolutions and the layout transposes around them took ~70% of the time.
# XLA's own (Eigen) convolutions made that step 1.32x faster (median; min 1.19x) at batch
# 128 x 2 views, measured interleaved in one process. The value is YNNPACK's default list minus
# INDIVIDUAL_CONVOLUTION: dots and reductions stay with YNNPACK.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(mesh: jax.sharding.Mesh) -> dict[str, str] | None:
  """`CPU_COMPILER_OPTIONS` when the mesh's devices are CPUs, else None (XLA's defaults)."""
  return CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else None


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN/Inf more often than the config allows."""


class ConfigMismatchError(ValueError):
  """A resumed run's config differs from the checkpoint's in a field that must not change."""


class Preempted(Exception):
  """Raised internally to stop after the preemption checkpoint was written."""


# ----------------------------------------------------------------------------- state and optimizer


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32: number of updates taken.
  params: Any  # {"encoder": ..., "loss": {...}?, "pair_head": ...?}
  batch_stats: Any  # batch-norm statistics of the encoder ({} when it has none).
  opt_state: Any
  rng: jax.Array  # uint32[2] base key; step keys are fold_in(rng, step).
  nonfinite_skips: jax.Array  # int32: updates skipped because of a NaN/Inf.
  first_nonfinite_step: jax.Array  # int32: step of the first NaN/Inf, -1 if none.


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


def _softplus_inverse(x: float) -> float:
  return float(np.log(np.expm1(x)))


def init_loss_params(loss_cfg: ml_collections.ConfigDict, *, embedding_dim: int = 0,
                     num_classes: int = 0, rng=None) -> dict:
  """Trainable parameters of the objective.

  Margin and temperature are kept positive through softplus. softmax_ce's linear classifier
  [embedding_dim, num_classes] starts like `flax.linen.Dense` (LeCun normal kernel, zero bias).
  """
  out = {}
  if loss_cfg.name == "softmax_ce":
    if embedding_dim <= 0 or num_classes <= 0 or rng is None:
      raise ValueError(f"softmax_ce needs embedding_dim, num_classes > 0 and an rng; got "
                       f"embedding_dim={embedding_dim}, num_classes={num_classes}")
    init = jax.nn.initializers.lecun_normal()
    out["classifier_kernel"] = init(rng, (embedding_dim, num_classes), jnp.float32)
    out["classifier_bias"] = jnp.zeros((num_classes,), jnp.float32)
  if loss_cfg.name == "learnable_margin_contrastive" or loss_cfg.learnable_margin:
    out["margin_raw"] = jnp.asarray(_softplus_inverse(loss_cfg.margin), jnp.float32)
  if loss_cfg.learnable_temperature:
    out["temperature_raw"] = jnp.asarray(_softplus_inverse(loss_cfg.temperature), jnp.float32)
  return out


def create_model(config: ml_collections.ConfigDict):
  from sim_jax import models
  return models.get_model(config.model)


def create_pair_head(config: ml_collections.ConfigDict):
  from sim_jax import models
  return models.get_pair_head(config.model)


def init_variables(config, model, pair_head, rng, image_shape,
                   num_classes: int = 0) -> tuple[dict, dict]:
  """Initial `(params, batch_stats)` for the encoder, the pair head and the objective."""
  k_model, k_drop, k_head = jax.random.split(rng, 3)
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  variables = model.init({"params": k_model, "dropout": k_drop}, dummy, train=False)
  params = {"encoder": variables["params"]}
  embedding_dim = 0
  if config.loss.name == "softmax_ce":
    embedding_dim = model.apply(variables, dummy, train=False)[0].shape[-1]
  loss_params = init_loss_params(config.loss, embedding_dim=embedding_dim,
                                 num_classes=num_classes, rng=jax.random.fold_in(k_head, 1))
  if loss_params:
    params["loss"] = loss_params
  if pair_head is not None:
    emb, _ = model.apply(variables, dummy, train=False)
    params["pair_head"] = pair_head.init(k_head, emb, emb)["params"]
  return params, variables.get("batch_stats", {})


def create_train_state(config, model, pair_head, tx, rng, image_shape,
                       num_classes: int = 0) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  params, batch_stats = init_variables(config, model, pair_head, init_rng, image_shape,
                                       num_classes)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=state_rng,
                    nonfinite_skips=jnp.zeros((), jnp.int32),
                    first_nonfinite_step=jnp.full((), -1, jnp.int32))


# ------------------------------------------------------------------------------------- objectives


def to_float_images(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] on the wire -> float32 [0, 1] on device."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def forward(model, params, batch_stats, images, *, train: bool, rng=None):
  """Encoder forward; returns `(embeddings, aux, new_batch_stats)`."""
  variables = {"params": params["encoder"]}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  if train:
    (emb, aux), updates = model.apply(variables, images, train=True, rngs={"dropout": rng},
                                      mutable=["batch_stats"])
    return emb, aux, updates.get("batch_stats", batch_stats)
  emb, aux = model.apply(variables, images, train=False)
  return emb, aux, batch_stats


# config.train.parallel_splits=0 ("auto") tries these slice counts, largest first.
AUTO_SPLITS = (4, 2)
# Encoder inputs per batch item (pairs and triplets are flattened, views are two augmentations).
INPUTS_PER_ITEM = {"pairs": 2, "triplets": 3, "views": 2}


def resolve_parallel_splits(config: ml_collections.ConfigDict, *, platform: str,
                            has_batch_norm: bool, inputs_per_device: int) -> tuple[int, str]:
  """The encoder's slice count for `forward_in_splits`, and why (for the log).

  A positive `config.train.parallel_splits` is taken as given (batch norm refused). 0 = auto:
  the largest of `AUTO_SPLITS` that divides each device's encoder inputs, on CPU only (the
  overlap it buys is of XLA:CPU's single-threaded fusions; GPU and TPU kernels use the whole
  chip), and only where it is exact and meaningful: no batch norm, no GradCache.
  """
  requested = config.train.parallel_splits
  if requested > 0:
    if requested > 1 and has_batch_norm:
      raise ValueError(
          f"config.train.parallel_splits={requested}: config.model.name="
          f"{config.model.name!r} has batch norm, whose statistics would be computed per slice "
          f"instead of over the batch; use parallel_splits=1 (or 0, auto) with it")
    return requested, "set in the config"
  if platform != "cpu":
    return 1, f"auto: {platform} kernels already use the whole chip"
  if has_batch_norm:
    return 1, f"auto: {config.model.name} has batch norm"
  if config.train.grad_accum_chunks > 1:
    return 1, "auto: GradCache already runs the encoder in chunks"
  for s in AUTO_SPLITS:
    if inputs_per_device % s == 0:
      return s, (f"auto: CPU, no batch norm; {inputs_per_device} encoder inputs per device "
                 f"in {s} slices")
  return 1, f"auto: {inputs_per_device} encoder inputs per device do not split evenly"


# glibc's largest dynamic mmap threshold on 64-bit Linux (DEFAULT_MMAP_THRESHOLD_MAX): a larger
# allocation is always a fresh mmap, so each execution faults all of that scratch buffer in anew.
MMAP_THRESHOLD_MAX = 32 * 2**20
AUTO_STEPS_PER_EXECUTION = 4


def scratch_bytes(compiled) -> int:
  """XLA's temp (scratch) buffer size of a compiled program, per device; -1 if not reported."""
  memory = compiled.memory_analysis()
  return int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1


def resolve_steps_per_execution(config: ml_collections.ConfigDict, *, platform: str,
                                temp_bytes: int) -> tuple[int, str]:
  """Train steps per jitted execution (`train_steps`), and why (for the log).

  A positive `config.train.steps_per_execution` is taken as given. 0 = auto: on CPU,
  `AUTO_STEPS_PER_EXECUTION` when the one-step program's scratch buffer (`temp_bytes`, from
  XLA's memory analysis) is larger than glibc's mmap threshold, i.e. freshly mapped and
  page-faulted on every execution; 1 otherwise and on GPU / TPU, whose runtimes take scratch
  memory from a pool.
  """
  requested = config.train.steps_per_execution
  if requested > 0:
    return requested, "set in the config"
  if platform != "cpu":
    return 1, f"auto: {platform} takes scratch memory from a pool"
  mib = temp_bytes / 2**20
  if temp_bytes > MMAP_THRESHOLD_MAX:
    return AUTO_STEPS_PER_EXECUTION, (f"auto: CPU, the step's {mib:.0f} MiB scratch buffer is "
                                      f"mapped and faulted in once per execution")
  return 1, f"auto: the step's {mib:.0f} MiB scratch buffer is reused from malloc's heap"


def execution_sizes(start: int, end: int, per_execution: int,
                    is_boundary: Callable[[int], bool]) -> list[int]:
  """How many steps each execution takes to go from step `start` to `end`.

  Executions of `per_execution` steps, except where one would run past `end` or past a step
  with host work after it (`is_boundary(step)`: logging, evaluation, a checkpoint): those
  steps run one at a time, so every boundary ends an execution. E.g. start=0, end=10,
  per_execution=4, boundaries {5, 10} -> [4, 1, 4, 1].
  """
  sizes, step = [], start
  while step < end:
    n = per_execution
    if step + n > end or any(is_boundary(s) for s in range(step + 1, step + n)):
      n = 1
    sizes.append(n)
    step += n
  return sizes


def forward_in_splits(model, params, batch_stats, images, *, splits: int, shards: int = 1,
                      train: bool, rng=None):
  """`forward` run on `splits` independent slices of the batch, outputs back in batch order.

  Why: XLA:CPU (jaxlib 0.10.2) runs each element-wise and layout fusion on one core, while its
  matmuls use them all. Two slices are two independent chains of ops in one jitted program,
  so the thunk executor runs one slice's single-core fusions while the other's matmuls run:
  the same arithmetic keeps more cores busy (bench/README.md has the measured effect).

  Exact for encoders without batch norm: every op of such an encoder is per example, and the
  loss still sees the whole batch (the slices are re-assembled before it). Batch norm's
  statistics would be per slice, so `resolve_parallel_splits` keeps models that have them at
  one slice (auto) or refuses the explicit value.
  With dropout, slice i draws its masks from `fold_in(rng, i)`: a different draw from the
  same distribution.

  `shards` is the number of devices the batch is sharded over (contiguous blocks of B / shards
  examples). Slice i takes the i-th sub-block of every device's block, so each slice stays
  sharded like the batch and no example moves between devices:
    images [B, ...] -> [shards, splits, m, ...] -> slice i = [:, i] -> [shards * m, ...]
  and every output leaf is put back by the inverse reshape.
  """
  if splits == 1:
    return forward(model, params, batch_stats, images, train=train, rng=rng)
  b = images.shape[0]
  if b % (shards * splits):
    raise ValueError(f"config.train.parallel_splits={splits}: the batch of {b} encoder inputs "
                     f"does not divide into {splits} slices on each of {shards} device(s)")
  m = b // (shards * splits)
  blocks = images.reshape((shards, splits, m) + images.shape[1:])
  outs = []
  for i in range(splits):
    key = None if rng is None else jax.random.fold_in(rng, i)
    x = blocks[:, i].reshape((shards * m,) + images.shape[1:])
    outs.append(forward(model, params, batch_stats, x, train=train, rng=key))

  def merge(*leaves):
    y = jnp.stack([v.reshape((shards, m) + v.shape[1:]) for v in leaves], axis=1)
    return y.reshape((b,) + leaves[0].shape[1:])

  emb = merge(*(o[0] for o in outs))
  aux = jax.tree.map(merge, *(o[1] for o in outs))
  return emb, aux, outs[0][2]  # no batch statistics to merge (see resolve_parallel_splits)


def loss_margin(loss_cfg, params) -> jax.Array | float:
  if "loss" in params and "margin_raw" in params["loss"]:
    return jax.nn.softplus(params["loss"]["margin_raw"])
  return loss_cfg.margin


def loss_temperature(loss_cfg, params) -> jax.Array | float:
  if "loss" in params and "temperature_raw" in params["loss"]:
    return jax.nn.softplus(params["loss"]["temperature_raw"])
  return loss_cfg.temperature


def label_objective(loss_cfg, z, labels, *, params, mesh):
  """Losses over a batch of embeddings with class labels (all pairs / triplets mined)."""
  from sim_jax import losses
  block = loss_cfg.block_size or None
  name = loss_cfg.name
  if name == "nt_xent":
    return losses.nt_xent(z, labels, temperature=loss_temperature(loss_cfg, params),
                          block_size=block,
                          mesh=mesh if block else None)
  if name == "supcon":
    return losses.supcon(z, labels, temperature=loss_temperature(loss_cfg, params),
                         block_size=block,
                         mesh=mesh if block else None)
  if name == "triplet":
    return losses.triplet(z, labels, margin=loss_margin(loss_cfg, params),
                          mining=loss_cfg.mining, distance=loss_cfg.distance, soft=loss_cfg.soft,
                          block_size=block, mesh=mesh if block else None)
  if name == "recall_at_k_surrogate":
    return losses.recall_at_k_surrogate(z, labels)
  if name == "softmax_ce":
    return losses.softmax_ce(classifier_logits(params, z), labels)
  raise ValueError(f"config.loss.name={name!r} needs class labels; use one of {LABEL_LOSSES}")


def classifier_logits(params, z):
  """softmax_ce's class logits z W + b (the classifier lives in params["loss"])."""
  from sim_jax import losses
  return losses.linear_logits(z, params["loss"]["classifier_kernel"],
                              params["loss"]["classifier_bias"])


def pair_objective(loss_cfg, za, zb, same, *, params, pair_head):
  """Losses over explicit (a, b, same) pairs (seeds 000, 002)."""
  from sim_jax import losses
  name = loss_cfg.name
  if name in ("contrastive", "learnable_margin_contrastive"):
    return losses.contrastive(za, zb, same, margin=loss_margin(loss_cfg, params),
                              squared=loss_cfg.squared, distance=loss_cfg.distance
                              if loss_cfg.distance in ("euclidean", "cosine") else "euclidean")
  if name == "pair_bce":
    logits = pair_head.apply({"params": params["pair_head"]}, za, zb)
    return losses.pair_bce(logits, same)
  if name == "snr_contrastive":
    return losses.snr_contrastive(za, zb, same, margin=loss_margin(loss_cfg, params))
  raise ValueError(f"config.loss.name={name!r} needs pairs; use one of {PAIR_LOSSES}")


def prepare_inputs(batch, rng, *, config, augment_fn, train: bool):
  """Global batch -> `(images [M, H, W, C] float32, labels [M])` as the encoder sees them.

  pairs / triplets are flattened (one forward pass, so batch norm sees every image); views are
  two augmentations of each image, labelled by example index (SimCLR) or class (SupCon).
  """
  sampler = config.data.sampler
  k_aug1, k_aug2 = jax.random.split(rng)
  if sampler in ("pairs", "triplets"):
    images = batch["image"]
    b, m = images.shape[:2]
    x = to_float_images(images.reshape(b * m, *images.shape[2:]))
    return (augment_fn(k_aug1, x) if train else x), batch["label"].reshape(b * m)
  x = to_float_images(batch["image"])
  if sampler == "views":
    x = jnp.concatenate([augment_fn(k_aug1, x), augment_fn(k_aug2, x)]) if train else \
        jnp.concatenate([x, x])
    base = batch["index"] if config.train.view_labels == "index" else batch["label"]
    return x, jnp.concatenate([base, base])
  return (augment_fn(k_aug1, x) if train else x), batch["label"]


def objective(params, z, labels, batch, *, config, pair_head, mesh):
  """The configured loss of the vectors `z` the encoder produced for `prepare_inputs`."""
  if config.data.sampler == "pairs":
    z2 = z.reshape(-1, 2, z.shape[-1])
    return pair_objective(config.loss, z2[:, 0], z2[:, 1], batch["same"], params=params,
                          pair_head=pair_head)
  return label_objective(config.loss, z, labels, params=params, mesh=mesh)


def compute_loss(params, batch_stats, batch, rng, *, config, model, pair_head, augment_fn,
                 mesh, train: bool = True, splits: int = 1):
  """Loss of one global batch, with the auxiliary outputs the metrics need.

  Returns `(loss, (new_batch_stats, z, labels))` where `z` are the vectors the loss saw.
  """
  k_inputs, k_drop = jax.random.split(rng)
  x, labels = prepare_inputs(batch, k_inputs, config=config, augment_fn=augment_fn, train=train)
  emb, aux, new_bs = forward_in_splits(
      model, params, batch_stats, x, splits=splits if train else 1,
      shards=mesh.size if mesh is not None else 1, train=train, rng=k_drop)
  z = aux.get("projection", emb) if isinstance(aux, Mapping) else emb
  loss = objective(params, z, labels, batch, config=config, pair_head=pair_head, mesh=mesh)
  return loss, (new_bs, z, labels)


def gradcache_loss_and_grads(params, batch_stats, batch, rng, *, config, model, augment_fn,
                             mesh):
  """Like `value_and_grad(compute_loss)` but with the encoder run in chunks (GradCache).

  The loss still couples the whole global batch (every negative counts); only the encoder's
  activation memory is bounded by a chunk. Batch norm normalises per chunk (see
  `sim_jax.losses.gradcache`). Only the encoder has parameters here (validated in
  `validate_config`).
  """
  from sim_jax.losses import gradcache
  k_inputs, k_drop = jax.random.split(rng)
  x, labels = prepare_inputs(batch, k_inputs, config=config, augment_fn=augment_fn, train=True)
  keys = jax.random.split(k_drop, x.shape[0])  # Per example: a chunk replays its own dropout.

  def embed_fn(enc_params, bs, chunk):
    emb, aux, new_bs = forward(model, {"encoder": enc_params}, bs, chunk["x"], train=True,
                               rng=chunk["key"][0])
    return (aux.get("projection", emb) if isinstance(aux, Mapping) else emb), new_bs

  def loss_fn(z):
    return objective(params, z, labels, batch, config=config, pair_head=None, mesh=mesh)

  loss, enc_grads, new_bs = gradcache.gradcache_value_and_grad(
      embed_fn, loss_fn, params["encoder"], {"x": x, "key": keys},
      num_chunks=config.train.grad_accum_chunks, state=batch_stats)
  return loss, {"encoder": enc_grads}, new_bs


def make_augment_fn(aug_cfg):
  if aug_cfg.name == "none":
    return lambda key, images: images  # Nothing to trace or import.
  from sim_jax.data import augment
  return augment.make_augment_fn(aug_cfg)


# ------------------------------------------------------------------------------------------ steps


# Built with `create` rather than a class body: this module uses postponed annotations, which
# CLU's dataclass-based collections cannot read.
TrainMetrics = metrics.Collection.create(
    loss=metrics.Average.from_output("loss"),
    grad_norm=metrics.Average.from_output("grad_norm"),
    learning_rate=metrics.LastValue.from_output("learning_rate"),
    margin=metrics.LastValue.from_output("margin"),
    nonfinite_skips=metrics.LastValue.from_output("nonfinite_skips"),
    first_nonfinite_step=metrics.LastValue.from_output("first_nonfinite_step"))


def _tree_where(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def train_step(state: TrainState, batch, *, config, model, pair_head, tx, schedule,
               augment_fn, mesh, diagnostics_fn: Callable | None = None, splits: int = 1):
  """One update: `(state, global batch) -> (state, metrics)`. Pure; jit it with donation."""
  rng = jax.random.fold_in(state.rng, state.step)
  if config.train.grad_accum_chunks > 1:
    loss, grads, new_bs = gradcache_loss_and_grads(
        state.params, state.batch_stats, batch, rng, config=config, model=model,
        augment_fn=augment_fn, mesh=mesh)
    z = labels = None
  else:
    loss_fn = functools.partial(compute_loss, config=config, model=model, pair_head=pair_head,
                                augment_fn=augment_fn, mesh=mesh, train=True, splits=splits)
    (loss, (new_bs, z, labels)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, rng)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  skips = state.nonfinite_skips + (~finite).astype(jnp.int32)
  # Once the allowance is spent, every later update is frozen too, so the state the host sees
  # when it halts is the last finite one.
  apply = finite & (skips <= config.train.max_nonfinite_skips)
  first_bad = jnp.where((~finite) & (state.first_nonfinite_step < 0), state.step,
                        state.first_nonfinite_step)
  new_state = state.replace(
      step=state.step + 1,
      params=_tree_where(apply, new_params, state.params),
      batch_stats=_tree_where(apply, new_bs, state.batch_stats),
      opt_state=_tree_where(apply, new_opt_state, state.opt_state),
      nonfinite_skips=skips, first_nonfinite_step=first_bad)
  out = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
             margin=jnp.asarray(loss_margin(config.loss, state.params), jnp.float32),
             nonfinite_skips=skips, first_nonfinite_step=first_bad)
  step_metrics = TrainMetrics.single_from_model_output(**out)
  extra = {}
  if diagnostics_fn is not None and z is not None:
    extra = diagnostics_fn(jax.lax.stop_gradient(z), labels)
  return new_state, step_metrics, extra


def train_steps(state: TrainState, batches, **step_kwargs):
  """`n` updates in one execution: `(state, batches [n, batch, ...]) -> (state, metrics, sums)`.

  A `lax.scan` of `train_step` over the leading axis of `batches`; the per-step metrics are
  merged in the program (averages over the n steps, last values of the n-th) and the
  diagnostics summed, so the host sees what n calls of `train_step` merged would give. The same
  updates as n separate calls (the rng is still `fold_in(state.rng, state.step)` per step).
  Why: XLA allocates a program's scratch buffer per execution and, on CPU, glibc maps a fresh
  one each time (it is larger than malloc's mmap threshold), so every page of it is faulted in
  anew; inside one execution the loop body reuses it. ViT-Ti's step maps 3.4 GiB this way
  (docs/cpu_performance.md).
  """
  def body(carry, batch):
    carry, m, extra = train_step(carry, batch, **step_kwargs)
    return carry, (m, extra)
  # Unrolled: with jaxlib 0.10.2 a rolled while-loop body of this step ran slower on CPU than
  # separate calls (a by-hand check); unrolled, XLA can also overlap one step's tail with the
  # next one's start. Compile time grows with n (ViT-Ti's 4-step program and the one-step one
  # together: 49 s against 9 s, bench/results/train_step.json).
  state, (m, extra) = jax.lax.scan(body, state, batches, unroll=True)
  # Merged step by step (CLU's `reduce` is the across-devices merge: it would average the
  # LastValue metrics such as the learning rate instead of keeping the last step's).
  n = jax.tree.leaves(batches)[0].shape[0]
  per_step = [jax.tree.map(lambda x, i=i: x[i], m) for i in range(n)]
  return (state, functools.reduce(lambda a, b: a.merge(b), per_step),
          jax.tree.map(lambda x: jnp.sum(x, axis=0), extra))


def embed_step(params, batch_stats, images, *, model):
  """Eval-mode embeddings of a uint8 or float image batch."""
  emb, _, _ = forward(model, params, batch_stats, to_float_images(images), train=False)
  return emb


# ------------------------------------------------------------------------------ config handling


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the values that a typo would otherwise turn into a late, confusing failure.

  Unknown keys and wrong types are already refused by the locked ConfigDict when the overrides
  are parsed; this checks combinations, before anything is compiled.
  """
  c = config
  if c.data.sampler not in SAMPLERS:
    raise ValueError(f"config.data.sampler={c.data.sampler!r}; expected one of {SAMPLERS}")
  known = PAIR_LOSSES + LABEL_LOSSES
  if c.loss.name not in known:
    raise ValueError(f"config.loss.name={c.loss.name!r}; expected one of {known}")
  if c.loss.name in PAIR_LOSSES and c.data.sampler != "pairs":
    raise ValueError(f"config.loss.name={c.loss.name!r} trains on pairs: set "
                     f"config.data.sampler='pairs' (got {c.data.sampler!r})")
  if c.loss.name in LABEL_LOSSES and c.data.sampler == "pairs":
    raise ValueError(f"config.loss.name={c.loss.name!r} needs labelled batches, not pairs: set "
                     f"config.data.sampler to one of pk, random, views, triplets")
  if c.loss.name == "softmax_ce":
    if c.data.sampler == "views" and c.train.view_labels != "class":
      raise ValueError("config.loss.name='softmax_ce' classifies classes, but the views sampler "
                       "labels views by example index: set config.train.view_labels='class' or "
                       "config.data.sampler='pk'")
    if c.model.projection_depth:
      raise ValueError(f"config.loss.name='softmax_ce' classifies the embedding itself: set "
                       f"config.model.projection_depth=0 (got {c.model.projection_depth})")
    if c.loss.num_classes is not None and c.loss.num_classes <= 0:
      raise ValueError(f"config.loss.num_classes must be positive (or None: the dataset's), "
                       f"got {c.loss.num_classes}")
  if c.train.steps <= 0:
    raise ValueError(f"config.train.steps must be positive, got {c.train.steps}")
  if c.train.batch_size <= 0:
    raise ValueError(f"config.train.batch_size must be positive, got {c.train.batch_size}")
  for key in ("log_every", "eval_every", "checkpoint_every"):
    if c.train[key] < 0:
      raise ValueError(f"config.train.{key} must be >= 0 (0 = only at the end), got "
                       f"{c.train[key]}")
  if c.train.grad_accum_chunks < 1:
    raise ValueError(f"config.train.grad_accum_chunks must be >= 1, got "
                     f"{c.train.grad_accum_chunks}")
  if c.train.grad_accum_chunks > 1:
    if (c.loss.name not in LABEL_LOSSES or c.loss.name == "softmax_ce" or c.loss.learnable_margin
        or c.loss.learnable_temperature):
      raise ValueError(
          f"config.train.grad_accum_chunks={c.train.grad_accum_chunks} (GradCache) supports the "
          f"label losses {LABEL_LOSSES} without learnable loss parameters; got "
          f"config.loss.name={c.loss.name!r}, learnable_margin={c.loss.learnable_margin}, "
          f"learnable_temperature={c.loss.learnable_temperature}")
  if c.train.parallel_splits < 0:
    raise ValueError(f"config.train.parallel_splits must be >= 1, or 0 for auto; got "
                     f"{c.train.parallel_splits}")
  if c.train.parallel_splits > 1 and c.train.grad_accum_chunks > 1:
    raise ValueError(f"config.train.parallel_splits={c.train.parallel_splits} and "
                     f"config.train.grad_accum_chunks={c.train.grad_accum_chunks}: GradCache "
                     f"already runs the encoder in chunks; set one of them to 1")
  if c.train.steps_per_execution < 0:
    raise ValueError(f"config.train.steps_per_execution must be >= 1, or 0 for auto; got "
                     f"{c.train.steps_per_execution}")
  if c.train.view_labels not in ("index", "class"):
    raise ValueError(f"config.train.view_labels must be 'index' or 'class', got "
                     f"{c.train.view_labels!r}")


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_diff(saved: Mapping, current: Mapping,
                keys: tuple[str, ...] = IMMUTABLE_KEYS) -> list[str]:
  """Readable lines for every field under `keys` that differs between two config dicts."""
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(dict(current), default=list)))
  lines = []
  for key in sorted(set(a) | set(b)):
    if not any(key == p or key.startswith(p + ".") for p in keys):
      continue
    if key not in a and b.get(key) is None:
      continue  # A field added after the checkpoint was written, left unset: same meaning.
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      lines.append(f"  {key}: checkpoint {a.get(key, '<absent>')!r} != now "
                   f"{b.get(key, '<absent>')!r}")
  return lines


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
      json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, "config.json"))


def _saved_config(workdir: str) -> dict | None:
  """The config.json a run wrote in `workdir`, or None before its first save."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# What evaluate / embed / search must share with the checkpoint: the parameter tree's structure.
# Data and eval may differ (another split, another metric).
INFERENCE_KEYS = ("model", "loss")


def check_inference_compatible(config, workdir: str) -> None:
  """Refuses (before any restore is tried) a model / loss config the checkpoint was not written
  with: a failed restore would otherwise count the healthy checkpoint as corrupt."""
  saved = _saved_config(workdir)
  if saved is None:
    return
  diff = config_diff(saved, config_to_dict(config), INFERENCE_KEYS)
  if diff:
    raise ConfigMismatchError(
        f"Refusing to load the checkpoint of {workdir}: it was written with a different model / "
        f"loss config:\n" + "\n".join(diff) + "\nPass the config it was trained with (eval.* "
        "and data.* may differ).")


def check_resume_compatible(config, workdir: str) -> None:
  saved = _saved_config(workdir)
  if saved is None:
    return
  diff = config_diff(saved, config_to_dict(config))
  if diff:
    raise ConfigMismatchError(
        f"Refusing to resume from {workdir}: the config differs from the one the checkpoint was "
        f"written with in fields that change what the checkpoint means:\n" + "\n".join(diff) +
        "\nUse a new --workdir for a new experiment (run length, logging and eval cadence may "
        "change on resume).")


# ----------------------------------------------------------------------------------- preemption


class PreemptionWatcher:
  """SIGTERM -> save at the next step boundary and exit 0.

  With several processes, JAX's preemption sync manager (started by `jax.distributed`) catches
  the signal and `reached_preemption_sync_point` makes every process agree on the same step;
  with one process we install our own handler, since Orbax/JAX only catch SIGTERM after
  `jax.distributed.initialize` (shared/reference/RELIABILITY.md).
  """

  def __init__(self):
    self._requested = False
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will checkpoint at the next step boundary and exit.",
                    signum)
    self._requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------------- evaluation


def embed_arrays(embed_fn, images: np.ndarray, global_batch: int, mesh) -> np.ndarray:
  """Embeds `images` (the same array on every process) in fixed-shape global batches."""
  n = len(images)
  if n == 0:
    raise ValueError("Cannot embed an empty split.")
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch // pc
  out = []
  for start in range(0, n, global_batch):
    chunk = images[start:start + global_batch]
    valid = len(chunk)
    if valid < global_batch:  # Pad so every call has the compiled shape.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], global_batch - valid, axis=0)])
    local_chunk = chunk[pi * local:(pi + 1) * local]
    emb = embed_fn(sharding.host_to_global(local_chunk, mesh))
    out.append(sharding.fetch(emb)[:valid])
  return np.concatenate(out).astype(np.float32)


def load_eval_data(config) -> dict[str, dict[str, np.ndarray]]:
  from sim_jax import data
  splits = {}
  for split in config.data.eval_splits:
    arrays = data.load_split(config.data, split)
    if len(arrays["label"]) == 0:
      raise ValueError(f"Eval split {split!r} of dataset {config.data.name!r} is empty; check "
                       f"config.data.eval_splits and the dataset's split sizes.")
    splits[split] = arrays
  return splits


def run_evaluators(evaluators, embeddings: dict, labels: dict) -> dict[str, float]:
  results = {}
  for ev in evaluators:
    results.update({k: float(v) for k, v in ev(embeddings, labels).items()})
  return results


def chance_levels(evaluators, embeddings: dict, labels: dict, seed: int = 0) -> dict[str, float]:
  """Each metric on random Gaussian embeddings: the baseline a trained model must beat."""
  rng = np.random.default_rng(seed)
  rand = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in embeddings.items()}
  return run_evaluators(evaluators, rand, labels)


# --------------------------------------------------------------------------------------- driver


class Trainer:
  """Holds what `train_and_evaluate` and the evaluate / embed / search modes share."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
    from sim_jax import data
    validate_config(config)
    self.config, self.workdir = config, workdir
    self.mesh = sharding.create_mesh(devices)
    self.local_batch = sharding.check_global_batch(config.train.batch_size, self.mesh)
    self.info = data.get_info(config.data)
    self.image_shape = tuple(self.info.image_shape)
    self.model = create_model(config)
    self.pair_head = create_pair_head(config) if config.loss.name == "pair_bce" else None
    self.num_classes = self._classifier_outputs()
    self.tx, self.schedule = make_optimizer(config.optimizer, config.train.steps)
    self.augment_fn = make_augment_fn(config.data.augment)
    self.replicated = sharding.replicated(self.mesh)

    init = functools.partial(create_train_state, config, self.model, self.pair_head, self.tx,
                             image_shape=self.image_shape, num_classes=self.num_classes)
    self._init = jax.jit(init, out_shardings=self.replicated)
    self.abstract_state = jax.eval_shape(init, jax.random.PRNGKey(0))
    self.abstract_state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
        self.abstract_state)
    inputs = config.train.batch_size * INPUTS_PER_ITEM.get(config.data.sampler, 1)
    self.parallel_splits, self.parallel_splits_why = resolve_parallel_splits(
        config, platform=self.mesh.devices.flat[0].platform,
        has_batch_norm=bool(jax.tree.leaves(self.abstract_state.batch_stats)),
        inputs_per_device=inputs // self.mesh.size)
    self._embed = jax.jit(functools.partial(embed_step, model=self.model),
                          out_shardings=self.replicated)

  def _classifier_outputs(self) -> int:
    """softmax_ce's number of logits: config.loss.num_classes, else the dataset's; 0 otherwise."""
    if self.config.loss.name != "softmax_ce":
      return 0
    known = self.info.num_classes
    wanted = self.config.loss.num_classes
    if wanted is None:
      if known <= 0:
        raise ValueError(f"config.loss.name='softmax_ce': dataset {self.info.name!r} does not "
                         f"declare its number of classes; set config.loss.num_classes")
      return known
    if 0 < wanted < known:
      raise ValueError(f"config.loss.num_classes={wanted} is smaller than the {known} classes of "
                       f"dataset {self.info.name!r}: their labels would have no logit")
    return wanted

  # -- state
  def init_state(self) -> TrainState:
    state = self._init(jax.random.PRNGKey(self.config.seed))
    if self.config.model.init_from:
      state = self._load_pretrained(state)
    return state

  def _load_pretrained(self, state: TrainState) -> TrainState:
    from sim_jax.models import transfer
    source = checkpointing.load_variables(self.config.model.init_from)
    target = {"params": jax.tree.map(np.asarray, state.params),
              "batch_stats": jax.tree.map(np.asarray, state.batch_stats)}
    merged, report = transfer.merge_pretrained(target, source)
    logging.info("init_from %s: %s", self.config.model.init_from, report)
    params = jax.device_put(merged["params"], self.replicated)
    batch_stats = jax.device_put(merged.get("batch_stats", {}), self.replicated)
    return state.replace(params=params, batch_stats=batch_stats,
                         opt_state=jax.jit(self.tx.init, out_shardings=self.replicated)(params))

  def fingerprint(self) -> dict:
    from sim_jax import data
    return data.iterator_fingerprint(self.config.data,
                                     global_batch_size=self.config.train.batch_size,
                                     seed=self.config.seed, process_count=jax.process_count())

  def meta(self) -> dict:
    return {"process_count": jax.process_count(), "device_count": jax.device_count(),
            "data_fingerprint": self.fingerprint()}

  def check_meta(self, meta: dict) -> None:
    """Refuses a checkpoint whose data position means something else in this run."""
    from sim_jax import data
    if meta.get("process_count") != jax.process_count():
      raise ConfigMismatchError(
          f"The checkpoint's data iterator was written by {meta.get('process_count')} "
          f"process(es) but this run has {jax.process_count()}: grain's order depends on the "
          f"process count, so the data position cannot be resumed. Resume with "
          f"--num_processes={meta.get('process_count')} or start a new --workdir.")
    try:
      data.check_fingerprint(meta.get("data_fingerprint", {}), self.fingerprint())
    except ValueError as e:
      raise ConfigMismatchError(str(e)) from e

  def state_to_save(self, state: TrainState) -> dict:
    return flax.serialization.to_state_dict(state)

  def abstract_save_target(self) -> dict:
    return flax.serialization.to_state_dict(self.abstract_state)

  def state_from_restored(self, restored: dict) -> TrainState:
    return flax.serialization.from_state_dict(self.abstract_state, restored)

  def restore_for_inference(self) -> tuple[int, TrainState]:
    """Latest restorable checkpoint of the workdir (for evaluate / embed / search)."""
    check_inference_compatible(self.config, self.workdir)
    manager = checkpointing.create_manager(self.workdir, keep=10**6)
    try:
      found = checkpointing.restore_latest(manager, self.workdir, self.abstract_save_target(),
                                           data_iter=None)
    finally:
      manager.close()
    if found is None:
      raise FileNotFoundError(f"No checkpoint in {checkpointing.checkpoint_dir(self.workdir)}: "
                              f"train first with --mode=train and the same --workdir.")
    step, restored, _ = found
    return step, self.state_from_restored(restored)

  def jit_train_step(self, steps: int = 1):
    """The jitted, state-donating train step bound to this trainer's model and config.

    With `steps` > 1, `train_steps`: that many updates per call, on a batch stacked
    [steps, batch, ...] (`sharding.steps_to_global`).
    """
    from sim_jax import losses
    diag = None
    if self.config.train.log_diagnostics and not self.config.loss.block_size:
      diag = losses.diagnostics  # Dense O(N^2); skipped for streaming losses on purpose.
    fn = train_step if steps == 1 else train_steps
    return jax.jit(
        functools.partial(fn, config=self.config, model=self.model,
                          pair_head=self.pair_head, tx=self.tx, schedule=self.schedule,
                          augment_fn=self.augment_fn, mesh=self.mesh, diagnostics_fn=diag,
                          splits=self.parallel_splits),
        donate_argnums=(0,), compiler_options=compiler_options(self.mesh))

  def compile_train_steps(self, state: TrainState, batch) -> tuple[dict[int, Any], int]:
    """Compiles the train step for `state` and a global `batch`; with
    `config.train.steps_per_execution` (auto: `resolve_steps_per_execution` on the one-step
    program's scratch size) k > 1, also `train_steps` of k (compiled at its first call).
    Returns ({steps per call: function}, k); logs the choice."""
    single = self.jit_train_step().lower(state, batch).compile()
    k, why = resolve_steps_per_execution(
        self.config, platform=self.mesh.devices.flat[0].platform,
        temp_bytes=max(scratch_bytes(single), 0))
    logging.info("Train steps per execution (config.train.steps_per_execution=%d): %d (%s).",
                 self.config.train.steps_per_execution, k, why)
    fns = {1: single}
    if k > 1:
      fns[k] = self.jit_train_step(k)
    return fns, k

  # -- evaluation
  def embed_images(self, state: TrainState, images: np.ndarray) -> np.ndarray:
    """The vectors evaluation compares: embeddings, or softmax_ce's logits for a distribution
    metric (kl / reverse_kl / cross_entropy), as seed 001 compares them."""
    fn = functools.partial(self._embed, state.params, state.batch_stats)
    emb = embed_arrays(fn, images, self.config.train.batch_size, self.mesh)
    from sim_jax.eval import distances
    if (self.config.loss.name == "softmax_ce"
        and self.config.eval.metric in distances.DISTRIBUTION_DISTANCES):
      loss_params = jax.tree.map(np.asarray, state.params["loss"])
      emb = emb @ loss_params["classifier_kernel"] + loss_params["classifier_bias"]
    return emb

  def evaluate(self, state: TrainState, eval_data, evaluators):
    """Every evaluator on `eval_data`; returns `(metrics, embeddings per split)`."""
    embeddings = {s: self.embed_images(state, d["image"]) for s, d in eval_data.items()}
    labels = {s: d["label"] for s, d in eval_data.items()}
    return run_evaluators(evaluators, embeddings, labels), embeddings


def _write_hparams(writer, config):
  flat = _flatten(config_to_dict(config))
  writer.write_hparams({k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                        for k, v in flat.items()})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics."""

  validate_config(config)
  # First, so that a SIGTERM during set-up or the first compile is honoured at the first step
  # boundary instead of killing the process.
  watcher = PreemptionWatcher()
  try:
    return _train_and_evaluate(config, workdir, watcher)
  finally:
    watcher.close()


def _train_and_evaluate(config, workdir, watcher: PreemptionWatcher) -> dict[str, float]:
  from sim_jax import data
  from sim_jax.eval import evaluators as evaluators_lib

  logging.info("Topology: %s", sharding.describe_topology())
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, workdir)
  tcfg = config.train
  best_metric = config.eval.best_metric
  manager = checkpointing.create_manager(
      workdir, keep=tcfg.keep_checkpoints, keep_best=tcfg.keep_best, best_metric=best_metric,
      best_mode=config.eval.best_mode, async_save=tcfg.async_checkpoint)
  if manager.latest_step() is not None:
    check_resume_compatible(config, workdir)  # Before anything is compiled.

  train_iter = data.create_train_iterator(
      config.data, global_batch_size=tcfg.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  found = checkpointing.restore_latest(manager, workdir, trainer.abstract_save_target(),
                                       train_iter, check_meta=trainer.check_meta)
  if found is None:
    state = trainer.init_state()
    logging.info("Starting a new run in %s.", workdir)
  else:
    start_step, restored, _ = found
    state = trainer.state_from_restored(restored)
    logging.info("Resumed from step %d in %s.", start_step, workdir)
  save_config(config, workdir)
  start = int(sharding.fetch(state.step))

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  if start == 0:
    _write_hparams(writer, config)
  _log_model_summary(trainer, state)

  eval_data = load_eval_data(config)
  evaluators = evaluators_lib.get_evaluators(config.eval)
  hooks = []
  report = periodic_actions.ReportProgress(num_train_steps=tcfg.steps, writer=writer,
                                           every_steps=tcfg.log_every or None, every_secs=None)
  if jax.process_index() == 0:
    hooks.append(report)
    if tcfg.profile_steps:
      hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=tcfg.profile_steps,
                                            first_profile=start + 10))
  final_metrics: dict[str, float] = {}
  final_embeddings: dict[str, np.ndarray] = {}
  train_metrics, extra_sums, extra_count = None, {}, 0
  data_wait, t_last = 0.0, time.time()

  def save(step, metrics_=None, force=False):
    skips = int(sharding.fetch(state.nonfinite_skips))
    if skips > tcfg.max_nonfinite_skips:
      return  # Never checkpoint a run that is about to halt on NaN/Inf.
    checkpointing.save(manager, step, trainer.state_to_save(state), train_iter, trainer.meta(),
                       metrics=metrics_, force=force)

  def check_finite(m):
    skips, first = int(m["nonfinite_skips"]), int(m["first_nonfinite_step"])
    if skips > tcfg.max_nonfinite_skips:
      raise NonFiniteError(
          f"Non-finite loss or gradient at step {first + 1} ({skips} non-finite step(s), "
          f"config.train.max_nonfinite_skips={tcfg.max_nonfinite_skips}). The parameters were "
          f"not updated with it; the last checkpoint "
          f"(step {manager.latest_step()}) is intact.")
    if skips:
      logging.warning("%d non-finite step(s) skipped so far (first at step %d).", skips,
                      first + 1)

  def host_work_after(step):
    return (step == tcfg.steps or any(every and step % every == 0 for every in (
        tcfg.log_every, tcfg.eval_every, tcfg.checkpoint_every)))

  step, pending, sizes = start, [], []
  if start < tcfg.steps:
    t0 = time.time()
    pending.append(next(train_iter))
    data_wait += time.time() - t0
    step_fns, per_execution = trainer.compile_train_steps(
        state, sharding.host_to_global(pending[0], trainer.mesh))
    sizes = execution_sizes(start, tcfg.steps, per_execution, host_work_after)
  try:
    for n in sizes:
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        t0 = time.time()
        batches, pending = pending + [next(train_iter) for _ in range(n - len(pending))], []
        data_wait += time.time() - t0
        batch = (sharding.host_to_global(batches[0], trainer.mesh) if n == 1 else
                 sharding.steps_to_global(batches, trainer.mesh))
        state, m, extra = step_fns[n](state, batch)
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      if extra:
        extra_sums = {k: extra_sums.get(k, 0.0) + v for k, v in extra.items()}
        extra_count += n
      for _ in range(n):
        step += 1
        for hook in hooks:  # CLU's periodic actions expect a call after every step
          hook(step)
      last = step == tcfg.steps
      if (tcfg.log_every and step % tcfg.log_every == 0) or last:
        computed = {k: float(v) for k, v in train_metrics.compute().items()}
        check_finite(computed)
        computed.pop("first_nonfinite_step")
        computed.update({f"diagnostics/{k}": float(v) / extra_count
                         for k, v in extra_sums.items()})
        elapsed = time.time() - t_last
        computed["data_wait_fraction"] = data_wait / max(elapsed, 1e-9)
        writer.write_scalars(step, {f"train/{k}": v for k, v in computed.items()})
        train_metrics, extra_sums, extra_count, data_wait, t_last = None, {}, 0, 0.0, time.time()
      eval_now = (tcfg.eval_every and step % tcfg.eval_every == 0) or last
      ckpt_now = (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0) or last
      eval_metrics = None
      if eval_now:
        logging.info("Evaluating at step %d.", step)
        with report.timed("eval"):
          eval_metrics, final_embeddings = trainer.evaluate(state, eval_data, evaluators)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        final_metrics = eval_metrics
      if ckpt_now:
        save(step, eval_metrics)
      if watcher.should_stop(step):
        if not ckpt_now:
          save(step, eval_metrics, force=True)
        logging.warning("Preemption checkpoint written at step %d; exiting.", step)
        raise Preempted()
    if start >= tcfg.steps:
      logging.info("Nothing to train: the checkpoint is at step %d >= config.train.steps=%d.",
                   start, tcfg.steps)
      final_metrics, final_embeddings = trainer.evaluate(state, eval_data, evaluators)
  except Preempted:
    final_metrics = {}
  finally:
    writer.flush()
    writer.close()
    if hasattr(train_iter, "close"):
      train_iter.close()  # Stops grain's prefetch threads and worker processes.
    checkpointing.finalize(manager)  # Re-raises a failed async save.
  if final_metrics:  # The last evaluation ran on the final state (eval is forced at the end).
    embeddings = final_embeddings
    chance = chance_levels(evaluators, embeddings, {s: d["label"] for s, d in eval_data.items()})
    for k in sorted(final_metrics):
      logging.info("eval %-32s %.4f   (chance %.4f)", k, final_metrics[k], chance.get(k, np.nan))
    _write_final(workdir, final_metrics, chance)
    if tcfg.plots and jax.process_index() == 0:
      write_plots(workdir, config, eval_data, embeddings)
  return final_metrics


def _worth_plotting(tag: str, points) -> bool:
  # Counts (num_queries, ...), bookkeeping (uptime) and constant series only add panels.
  values = {round(v, 12) for _, v in points}
  return len(values) > 1 and "/num_" not in tag and tag not in ("uptime",)


def write_plots(workdir: str, config, eval_data: dict, embeddings: dict) -> list[str]:
  """PNGs a person would rather look at: curves, t-SNE, retrieval grid, pair distances."""
  from sim_jax.eval import plots, search
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  series = {k: v for k, v in plots.read_scalars(workdir).items() if _worth_plotting(k, v)}
  if series:
    plots.training_curves(series, os.path.join(out_dir, "training_curves.png"))
    written.append("training_curves.png")
  split = config.eval.query_split if config.eval.query_split in embeddings else \
      next(iter(embeddings))
  emb, labels, images = embeddings[split], eval_data[split]["label"], eval_data[split]["image"]
  # t-SNE of the 20 most frequent classes: more colours than that are unreadable.
  classes, counts = np.unique(labels, return_counts=True)
  shown = classes[np.argsort(-counts, kind="stable")[:20]]
  keep = np.isin(labels, shown)
  plots.tsne_plot(emb[keep], labels[keep], os.path.join(out_dir, f"tsne_{split}.png"),
                  max_points=1500,
                  title=f"t-SNE of {config.data.name}/{split} ({len(shown)} classes)")
  written.append(f"tsne_{split}.png")
  nq = min(8, len(emb) - 1)
  k = min(6, len(emb) - 1)
  _, idx = search.topk(emb[:nq], emb, k + 1, metric=config.eval.metric)
  idx = np.stack([row[row != i][:k] for i, row in enumerate(idx)])  # Drop the query itself.
  plots.save_retrieval_grid(os.path.join(out_dir, f"retrieval_{split}.png"), images[:nq], images,
                            idx, labels[:nq], labels)
  written.append(f"retrieval_{split}.png")
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, len(emb), (2, 20000))
  same, distinct = labels[a] == labels[b], a != b
  d = np.linalg.norm(emb[a] - emb[b], axis=1)
  plots.distance_histogram(d[same & distinct], d[~same], os.path.join(out_dir, "distances.png"),
                           title=f"Euclidean distances, {config.data.name}/{split}")
  written.append("distances.png")
  logging.info("Plots written to %s: %s", out_dir, ", ".join(written))
  return written


def _write_final(workdir, final_metrics, chance):
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
    json.dump({"metrics": final_metrics, "chance": chance}, f, indent=2, sort_keys=True)


def _log_model_summary(trainer: Trainer, state: TrainState) -> None:
  if jax.process_index() != 0:
    return
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  logging.info("Model %s: %s parameters (%.2f M); image shape %s; global batch %d over %d "
               "device(s).", trainer.config.model.name, f"{n:,}", n / 1e6, trainer.image_shape,
               trainer.config.train.batch_size, jax.device_count())
  logging.info("Encoder slices per step (config.train.parallel_splits=%d): %d (%s).",
               trainer.config.train.parallel_splits, trainer.parallel_splits,
               trainer.parallel_splits_why)


# ------------------------------------------------------------------ evaluate / embed / search


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`--mode=evaluate`: every configured protocol on the workdir's latest checkpoint."""
  from sim_jax.eval import evaluators as evaluators_lib
  trainer = Trainer(config, workdir)
  step, state = trainer.restore_for_inference()
  eval_data = load_eval_data(config)
  evaluators = evaluators_lib.get_evaluators(config.eval)
  results, embeddings = trainer.evaluate(state, eval_data, evaluators)
  chance = chance_levels(evaluators, embeddings, {s: d["label"] for s, d in eval_data.items()})
  if jax.process_index() == 0:
    for k in sorted(results):
      print(f"step {step}  {k:<32s} {results[k]:.4f}   (chance {chance.get(k, np.nan):.4f})")
    with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
      json.dump({"step": step, "metrics": results, "chance": chance}, f, indent=2,
                sort_keys=True)
  return results


def export_embeddings(config: ml_collections.ConfigDict, workdir: str, output: str,
                      split: str | None = None) -> str:
  """`--mode=embed`: embeddings, labels and ids of a split (or every eval split) to `.npz`."""
  from sim_jax import data
  trainer = Trainer(config, workdir)
  step, state = trainer.restore_for_inference()
  splits = [split] if split else list(config.data.eval_splits)
  arrays = {}
  for s in splits:
    d = data.load_split(config.data, s)
    if len(d["label"]) == 0:
      raise ValueError(f"Split {s!r} of dataset {config.data.name!r} is empty.")
    prefix = "" if len(splits) == 1 else f"{s}/"
    arrays[prefix + "embeddings"] = trainer.embed_images(state, d["image"])
    arrays[prefix + "labels"] = np.asarray(d["label"])
    arrays[prefix + "ids"] = np.asarray(d["id"])
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(output, step=step, **arrays)
    print(f"Wrote {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} (step {step}) "
          f"to {output}")
  return output


def read_query_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """An image file -> uint8 [H, W, C] in the model's input shape, or a clear error."""
  from PIL import Image, UnidentifiedImageError
  h, w, c = image_shape
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Query image {path!r} does not exist.")
  try:
    with Image.open(path) as img:
      img.load()
      img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"Query image {path!r} cannot be read as an image: {e}") from e
  arr = np.asarray(img, np.uint8)
  return arr[..., None] if c == 1 else arr


def search_gallery(config: ml_collections.ConfigDict, workdir: str, query: str, k: int = 5,
                   gallery_split: str | None = None) -> list[tuple[int, int, float]]:
  """`--mode=search`: the top-k gallery matches of one query image, printed and drawn."""
  from sim_jax import data
  from sim_jax.eval import plots, search
  trainer = Trainer(config, workdir)
  step, state = trainer.restore_for_inference()
  split = gallery_split or config.eval.query_split
  gallery = data.load_split(config.data, split)
  if k > len(gallery["label"]):
    raise ValueError(f"--k={k} is larger than the gallery ({len(gallery['label'])} images in "
                     f"split {split!r}).")
  q_img = read_query_image(query, trainer.image_shape)
  q_emb = trainer.embed_images(state, q_img[None])
  g_emb = trainer.embed_images(state, gallery["image"])
  scores, idx = search.topk(q_emb, g_emb, k, metric=config.eval.metric,
                            block_size=min(config.eval.block_size, len(g_emb)))
  results = [(int(gallery["id"][i]), int(gallery["label"][i]), float(s))
             for i, s in zip(idx[0], scores[0])]
  if jax.process_index() == 0:
    kind = "distance" if config.eval.metric == "euclidean" else "similarity"
    print(f"Top {k} matches for {query} in split {split!r} (checkpoint step {step}):")
    for rank, (ex_id, label, score) in enumerate(results, 1):
      print(f"  {rank}. id {ex_id:>6d}  label {label:>5d}  {kind} {score:.4f}")
    out = os.path.join(workdir, f"search_{os.path.splitext(os.path.basename(query))[0]}.png")
    plots.save_retrieval_grid(out, q_img[None], gallery["image"], idx, scores=scores)
    print(f"Wrote {out}")
  return results
