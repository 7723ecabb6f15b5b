"""Training: the train state, the pure train / embed steps, and `train_and_evaluate` (the loop).

Design (after flax/examples, big_vision and scenic):
- One `jax.jit` over a 1-D `data` mesh of every device of every process; batches are global
  `jax.Array`s assembled from process-local grain batches; parameters are replicated; the state is
  donated. XLA inserts the collectives, so batch-norm statistics and all-pairs losses (negatives)
  use the global batch.
- `train_step(state, batch) -> (state, metrics)` is pure, with its dependencies bound by
  `functools.partial` in `make_setup`; per-step randomness is `fold_in(state.rng, state.step)`,
  so a resumed run draws the same numbers as an uninterrupted one. The embedding diagnostics
  (`config.train.log_diagnostics`) are part of the step's metrics.
- `TrainSetup` is a frozen record of what the loop and the inference modes share (mesh, model,
  optimizer, the bound step), built once by `make_setup(config)`.
- The objective is `sim_jax.losses.objective` (one table of losses); parameters that belong to
  it (a learnable margin) live in `params["loss"]` and are optimised and checkpointed with the
  encoder.
- XLA:CPU tuning (encoder slices, several steps per execution, compiler options) is reached
  through `sim_jax.cpu` only; on GPU / TPU it resolves to the plain step.
- A non-finite loss or gradient never reaches the parameters: the update is skipped and counted
  in the state. Past `config.train.max_nonfinite_skips` every later update is frozen and the host
  halts the run at its next check with the first bad step, without writing a checkpoint.
- Every evaluation reports chance levels and two floors (raw pixels, the untrained encoder) next
  to its metrics (`sim_jax.eval.floors`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
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
from clu import metrics, periodic_actions

from sim_jax import adversarial as adversarial_lib
from sim_jax import checkpointing, cpu, data, losses, models, optim, sharding, summaries, validation
from sim_jax import workdir as workdir_lib
from sim_jax.data import augment, samplers
from sim_jax.eval import distances, head_rules, robust
from sim_jax.eval import evaluators as evaluators_lib
from sim_jax.eval import floors as floors_lib
from sim_jax.losses import gradcache, objective
from sim_jax.losses import memory as xbm
from sim_jax.models import transfer

# Every sampler ("pools" trains loss.name="pool_triplet" on candidate pools, seed 003).
TRAIN_SAMPLERS = tuple(samplers.SAMPLERS)


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN/Inf more often than the config allows."""


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
  memory: Any  # cross-batch memory (sim_jax.losses.memory); {} when config.train.memory is off


def create_model(config: ml_collections.ConfigDict):
  return models.get_model(config.model)


def init_variables(config, model, pair_head, rng, image_shape,
                   num_classes: int = 0) -> tuple[dict, dict]:
  """Initial `(params, batch_stats)` for the encoder, the pair head and the objective."""
  k_model, k_drop, k_head = jax.random.split(rng, 3)
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  variables = model.init({"params": k_model, "dropout": k_drop}, dummy, train=False)
  params = {"encoder": variables["params"]}
  embedding_dim = 0
  if num_classes:  # softmax_ce's classifier or the proxy losses' proxies
    embedding_dim = model.apply(variables, dummy, train=False)[0].shape[-1]
  loss_params = objective.init_params(config.loss, embedding_dim=embedding_dim,
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
  z, aux, _ = forward(model, params, batch_stats, jnp.zeros((1, *image_shape)), train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=state_rng, nonfinite_skips=jnp.int32(0),
                    first_nonfinite_step=jnp.full((), -1, jnp.int32),
                    memory=xbm.init(config.train.memory.size, _loss_vectors(z, aux).shape[-1]))


# ------------------------------------------------------------------------------- forward and loss


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


def prepare_inputs(batch, rng, *, config, augment_fn, train: bool):
  """Global batch -> `(images [M, H, W, C] float32, labels [M])` as the encoder sees them.

  pairs / triplets / pools are flattened (one forward pass, so batch norm sees every image); views
  are two augmentations of each image, labelled by example index (SimCLR) or class (SupCon).
  """
  sampler = config.data.sampler
  k_aug1, k_aug2 = jax.random.split(rng)
  if sampler in ("pairs", "triplets", "pools"):
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


def _loss_vectors(emb, aux):
  # The loss sees the projection head's output when there is one (SimCLR), else the embedding.
  return aux.get("projection", emb) if isinstance(aux, Mapping) else emb


def compute_loss(params, batch_stats, batch, rng, memory=None, *, config, model, pair_head,
                 augment_fn, mesh, train: bool = True, splits: int = 1):
  """Loss of one global batch, with the auxiliary outputs the metrics need.

  Returns `(loss, (new_batch_stats, z, labels))`, z the batch's vectors the loss saw (`memory`,
  an `xbm.view`, adds the cross-batch memory's rows to the loss).
  `splits` > 1 runs the encoder on that many slices of the batch (`sim_jax.cpu`).
  """
  k_inputs, k_drop = jax.random.split(rng)
  x, labels = prepare_inputs(batch, k_inputs, config=config, augment_fn=augment_fn, train=train)
  forward_fn = functools.partial(forward, model, params, batch_stats, train=train)
  emb, aux, new_bs = cpu.forward_in_splits(
      lambda images, key: forward_fn(images, rng=key), x, splits=splits if train else 1,
      shards=mesh.size if mesh is not None else 1, rng=k_drop)
  z = _loss_vectors(emb, aux)
  loss = xbm.loss(functools.partial(objective.loss, config, params, batch=batch, rng=k_drop,
                                    pair_head=pair_head, mesh=mesh), z, labels, memory)
  return loss, (new_bs, z, labels)


def gradcache_loss_and_grads(params, batch_stats, batch, rng, *, config, model, augment_fn,
                             mesh):
  """Like `value_and_grad(compute_loss)` but with the encoder run in chunks (GradCache).

  The loss still couples the whole global batch (every negative counts); only the encoder's
  activation memory is bounded by a chunk. Batch norm normalises per chunk (see
  `sim_jax.losses.gradcache`). Only the encoder has parameters here (validated in
  `validate_config`).
  """
  k_inputs, k_drop = jax.random.split(rng)
  x, labels = prepare_inputs(batch, k_inputs, config=config, augment_fn=augment_fn, train=True)
  keys = jax.random.split(k_drop, x.shape[0])  # Per example: a chunk replays its own dropout.

  def embed_fn(enc_params, bs, chunk):
    emb, aux, new_bs = forward(model, {"encoder": enc_params}, bs, chunk["x"], train=True,
                               rng=chunk["key"][0])
    return _loss_vectors(emb, aux), new_bs

  def loss_fn(z):
    return objective.loss(config, params, z, labels, batch, pair_head=None, mesh=mesh, rng=k_drop)

  loss, enc_grads, new_bs = gradcache.gradcache_value_and_grad(
      embed_fn, loss_fn, params["encoder"], {"x": x, "key": keys},
      num_chunks=config.train.grad_accum_chunks, state=batch_stats)
  return loss, {"encoder": enc_grads}, new_bs


def loss_and_grads(params, batch_stats, batch, rng, memory=None, *, config, model, pair_head,
                   augment_fn, mesh, splits: int = 1):
  """`(loss, grads, new_batch_stats, z, labels)` of one batch; z = labels = None with GradCache
  (`config.train.grad_accum_chunks` > 1), which never holds every vector's activations."""
  if config.train.grad_accum_chunks > 1:
    loss, grads, new_bs = gradcache_loss_and_grads(
        params, batch_stats, batch, rng, config=config, model=model, augment_fn=augment_fn,
        mesh=mesh)
    return loss, grads, new_bs, None, None
  loss_fn = functools.partial(compute_loss, config=config, model=model, pair_head=pair_head,
                              augment_fn=augment_fn, mesh=mesh, train=True, splits=splits)
  batch = adversarial_lib.perturb(config, loss_fn, params, batch_stats, batch, rng, memory)
  (loss, (new_bs, z, labels)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats, batch, rng, memory)
  return loss, grads, new_bs, z, labels


def make_augment_fn(aug_cfg):
  if aug_cfg.name == "none":
    return lambda key, images: images  # Nothing to trace.
  return augment.make_augment_fn(aug_cfg)


# ------------------------------------------------------------------------------------------ steps


DIAGNOSTICS_PREFIX = "diagnostics_"  # CLU metric names must be identifiers: "diagnostics/x" logged


@functools.cache
def train_metrics_collection(diagnostics: tuple[str, ...] = ()) -> type[metrics.Collection]:
  """The CLU collection of a step's metrics: loss, grad norm and the diagnostics averaged over
  the steps merged; the learning rate, margin and non-finite counters as their last value."""
  fields = dict(
      loss=metrics.Average.from_output("loss"),
      grad_norm=metrics.Average.from_output("grad_norm"),
      learning_rate=metrics.LastValue.from_output("learning_rate"),
      **{k: metrics.LastValue.from_output(k) for k in objective.MARGIN_METRICS},
      nonfinite_skips=metrics.LastValue.from_output("nonfinite_skips"),
      first_nonfinite_step=metrics.LastValue.from_output("first_nonfinite_step"))
  for k in diagnostics:
    fields[DIAGNOSTICS_PREFIX + k] = metrics.Average.from_output(DIAGNOSTICS_PREFIX + k)
  # Built with `create` rather than a class body: this module uses postponed annotations,
  # which CLU's dataclass-based collections cannot read.
  return metrics.Collection.create(**fields)


def _tree_where(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def train_step(state: TrainState, batch, *, grads_fn: Callable, tx, schedule,
               margin_fn: Callable, max_nonfinite_skips: int,
               diagnostics_fn: Callable | None = None, memory_start: int = 0, mesh=None):
  """One update: `(state, global batch) -> (state, metrics)`. Pure; jit it with donation.

  `grads_fn(params, batch_stats, batch, rng) -> (loss, grads, new_batch_stats, z, labels)`
  (`loss_and_grads` bound to a config); `diagnostics_fn(z, labels) -> {name: scalar}` adds the
  embedding diagnostics of the vectors the loss saw to the metrics; `state.memory` (XBM) joins
  the loss from step `memory_start` (`sim_jax.losses.memory`)."""
  rng = jax.random.fold_in(state.rng, state.step)
  loss, grads, new_bs, z, labels = grads_fn(state.params, state.batch_stats, batch, rng,
                                            xbm.view(state.memory, state.step, memory_start))
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  skips = state.nonfinite_skips + (~finite).astype(jnp.int32)
  # Once the allowance is spent, every later update is frozen too, so the state the host sees
  # when it halts is the last finite one.
  apply = finite & (skips <= max_nonfinite_skips)
  first_bad = jnp.where((~finite) & (state.first_nonfinite_step < 0), state.step,
                        state.first_nonfinite_step)
  new_state = state.replace(
      step=state.step + 1,
      params=_tree_where(apply, new_params, state.params),
      batch_stats=_tree_where(apply, new_bs, state.batch_stats),
      opt_state=_tree_where(apply, new_opt_state, state.opt_state),
      memory=xbm.enqueue(state.memory, z, labels, mesh, apply=apply),
      nonfinite_skips=skips, first_nonfinite_step=first_bad)
  out = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
             **{k: jnp.asarray(v, jnp.float32) for k, v in margin_fn(state.params).items()},
             nonfinite_skips=skips, first_nonfinite_step=first_bad)
  names: tuple[str, ...] = ()
  if diagnostics_fn is not None and z is not None:
    diag = diagnostics_fn(jax.lax.stop_gradient(z), labels)
    names = tuple(sorted(diag))
    out.update({DIAGNOSTICS_PREFIX + k: v for k, v in diag.items()})
  return new_state, train_metrics_collection(names).single_from_model_output(**out)


def embed_step(params, batch_stats, images, *, model):
  """Eval-mode embeddings of a uint8 or float image batch."""
  emb, _, _ = forward(model, params, batch_stats, to_float_images(images), train=False)
  return emb


# ------------------------------------------------------------------------------ config handling


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the values that a typo would otherwise turn into a late, confusing failure.

  Unknown keys and wrong types are already refused by the locked ConfigDict when the overrides
  are parsed; the loss section is checked against the loss table (`objective.validate`); this
  checks the combinations, before anything is compiled.
  """
  c = config
  if c.data.sampler not in TRAIN_SAMPLERS:
    raise ValueError(f"config.data.sampler={c.data.sampler!r}; expected one of "
                     f"{TRAIN_SAMPLERS}")
  objective.validate(c)
  # Plain ranges (steps >= 1, batch_size >= 1, ...) are `validation.RANGES`, checked last.
  if c.train.grad_accum_chunks > 1:
    spec = objective.spec(c.loss.name)
    if (spec.inputs != "labels" or "classifier" in spec.params or c.loss.learnable_margin
        or c.loss.learnable_temperature):
      raise ValueError(
          f"config.train.grad_accum_chunks={c.train.grad_accum_chunks} (GradCache) supports the "
          f"label losses {objective.LABEL_LOSSES} without learnable loss parameters; got "
          f"config.loss.name={c.loss.name!r}, learnable_margin={c.loss.learnable_margin}, "
          f"learnable_temperature={c.loss.learnable_temperature}")
  if c.train.parallel_splits < 0:
    raise ValueError(f"config.train.parallel_splits must be >= 1, or 0 for auto; got "
                     f"{c.train.parallel_splits}")
  if c.train.parallel_splits > 1 and c.train.grad_accum_chunks > 1:
    raise ValueError(f"config.train.parallel_splits={c.train.parallel_splits} and "
                     f"config.train.grad_accum_chunks={c.train.grad_accum_chunks}: GradCache "
                     f"already runs the encoder in chunks; set one of them to 1")
  xbm.check_config(c)
  adversarial_lib.check_config(c)
  if c.train.view_labels not in ("index", "class"):
    raise ValueError(f"config.train.view_labels must be 'index' or 'class', got "
                     f"{c.train.view_labels!r}")
  # Last, so the specific messages above come first: every numeric field finite and in range.
  validation.check_ranges(c)


# ------------------------------------------------------------------------------------ the setup


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What the loop and the inference modes share, built once by `make_setup(config)`."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  replicated: jax.sharding.NamedSharding
  info: Any  # data.get_info(config.data)
  image_shape: tuple[int, int, int]
  model: Any
  pair_head: Any  # the pair head of pair_bce / sigmoid_contrastive, else None
  num_classes: int  # softmax_ce's logits or the proxy losses' classes, else 0
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  init_fn: Callable  # jitted rng -> TrainState (the untrained state of a seed)
  abstract_state: TrainState  # shapes, dtypes and shardings of the state
  parallel_splits: int
  parallel_splits_why: str
  train_step: Callable  # pure (state, batch) -> (state, metrics), not jitted
  embed_fn: Callable  # jitted (params, batch_stats, images) -> embeddings


def make_setup(config: ml_collections.ConfigDict, devices=None, info=None) -> TrainSetup:
  """Validates `config` and builds the mesh, model, optimizer and the bound train step.

  `info` (a `data.DatasetInfo`) defaults to the config's dataset, prepared if need be; passing
  one builds the setup without touching any data (tests trace every experiment this way).
  """
  validate_config(config)
  mesh = sharding.create_mesh(devices)
  sharding.check_global_batch(config.train.batch_size, mesh)
  info = info or data.get_info(config.data)
  image_shape = tuple(info.image_shape)
  model = create_model(config)
  uses_head = "pair_head" in objective.spec(config.loss.name).params
  pair_head = models.get_pair_head(config.model) if uses_head else None
  num_classes = objective.num_logits(config.loss, info.num_classes, info.name)
  tx, schedule = optim.make_optimizer(config.optimizer, config.train.steps)
  replicated = sharding.replicated(mesh)
  init = functools.partial(create_train_state, config, model, pair_head, tx,
                           image_shape=image_shape, num_classes=num_classes)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  state_shardings = xbm.state_shardings(shapes, mesh)
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                shapes, state_shardings)
  splits, why = cpu.resolve_parallel_splits(
      config, platform=cpu.platform_of(mesh),
      has_batch_norm=bool(jax.tree.leaves(abstract_state.batch_stats)),
      inputs_per_device=cpu.encoder_inputs_per_device(config, mesh))
  diagnostics_fn = None
  if config.train.log_diagnostics and not config.loss.block_size:
    # Dense O(N^2); skipped for streaming losses on purpose.
    diagnostics_fn = functools.partial(losses.diagnostics, margin=config.loss.diagnostics_margin)
  grads_fn = functools.partial(loss_and_grads, config=config, model=model, pair_head=pair_head,
                               augment_fn=make_augment_fn(config.data.augment), mesh=mesh,
                               splits=splits)
  step = functools.partial(train_step, grads_fn=grads_fn, tx=tx, schedule=schedule,
                           margin_fn=functools.partial(objective.margin_metrics, config.loss),
                           max_nonfinite_skips=config.train.max_nonfinite_skips,
                           diagnostics_fn=diagnostics_fn,
                           memory_start=config.train.memory.start_step, mesh=mesh)
  return TrainSetup(
      config=config, mesh=mesh, replicated=replicated, info=info, image_shape=image_shape,
      model=model, pair_head=pair_head, num_classes=num_classes, tx=tx, schedule=schedule,
      init_fn=jax.jit(init, out_shardings=state_shardings), abstract_state=abstract_state,
      parallel_splits=splits, parallel_splits_why=why, train_step=step,
      embed_fn=jax.jit(functools.partial(embed_step, model=model), out_shardings=replicated))


def init_state(setup: TrainSetup, *, pretrained: bool = True) -> TrainState:
  """The state of step 0 from `config.seed`; with `config.model.init_from` (and `pretrained`)
  the encoder's matching weights are loaded from that run."""
  state = setup.init_fn(jax.random.PRNGKey(setup.config.seed))
  if pretrained and setup.config.model.init_from:
    state = _load_pretrained(setup, state)
  return state


def _load_pretrained(setup: TrainSetup, state: TrainState) -> TrainState:
  source = checkpointing.load_variables(setup.config.model.init_from)
  target = {"params": jax.tree.map(np.asarray, state.params),
            "batch_stats": jax.tree.map(np.asarray, state.batch_stats)}
  merged, report = transfer.merge_pretrained(target, source)
  logging.info("init_from %s: %s", setup.config.model.init_from, report)
  params = jax.device_put(merged["params"], setup.replicated)
  batch_stats = jax.device_put(merged.get("batch_stats", {}), setup.replicated)
  return state.replace(params=params, batch_stats=batch_stats,
                       opt_state=jax.jit(setup.tx.init, out_shardings=setup.replicated)(params))


def state_to_save(state: TrainState) -> dict:
  return flax.serialization.to_state_dict(state)


def abstract_save_target(setup: TrainSetup) -> dict:
  return flax.serialization.to_state_dict(setup.abstract_state)


def state_from_restored(setup: TrainSetup, restored: dict) -> TrainState:
  return flax.serialization.from_state_dict(setup.abstract_state, restored)


def jit_train_step(setup: TrainSetup, steps: int = 1) -> Callable:
  """The jitted, state-donating train step; with `steps` > 1, that many updates per call on a
  batch stacked [steps, batch, ...] (`sharding.steps_to_global`)."""
  return cpu.jit_steps(setup.train_step, setup.mesh, steps)


# ----------------------------------------------------------------------------------- evaluation


def embed_images(setup: TrainSetup, state: TrainState, images: np.ndarray) -> np.ndarray:
  """The vectors evaluation compares: embeddings, or softmax_ce's logits for a distribution
  metric (kl / reverse_kl / cross_entropy), as seed 001 compares them."""
  fn = functools.partial(setup.embed_fn, state.params, state.batch_stats)
  emb = sharding.map_global_batches(fn, images, setup.config.train.batch_size, setup.mesh)
  if (setup.config.loss.name == "softmax_ce"
      and setup.config.eval.metric in distances.DISTRIBUTION_DISTANCES):
    loss_params = jax.tree.map(np.asarray, state.params["loss"])
    emb = emb @ loss_params["classifier_kernel"] + loss_params["classifier_bias"]
  return emb


def load_eval_data(config) -> dict[str, dict[str, np.ndarray]]:
  """Every split of `config.data.eval_splits`, whole (an empty split is refused by load_split)."""
  return {split: data.load_split(config.data, split) for split in config.data.eval_splits}


def _labels(eval_data) -> dict[str, np.ndarray]:
  return {s: d["label"] for s, d in eval_data.items()}


def evaluate(setup: TrainSetup, state: TrainState, eval_data, evaluators):
  """Every evaluator on `eval_data`, plus the heads' own decision rules (`eval.head_rules`);
  returns `(metrics, embeddings per split)`."""
  embeddings = {s: embed_images(setup, state, d["image"]) for s, d in eval_data.items()}
  out = evaluators_lib.run_evaluators(evaluators, embeddings, _labels(eval_data))
  pair_logits, class_logits = head_rules.head_fns(jax.tree.map(np.asarray, state.params),
                                                  setup.pair_head, setup.config.eval.metric)
  out.update(head_rules.head_metrics(setup.config.eval, embeddings, _labels(eval_data),
                                     pair_logits=pair_logits, class_logits=class_logits))
  out.update(robust.state_metrics(setup, state, eval_data, embeddings))
  return out, embeddings


def compute_floors(setup: TrainSetup, eval_data, evaluators) -> dict[str, dict[str, float]]:
  """`floors.floors` of this config: raw pixels, and the encoder at its initial parameters
  from `config.seed` (never `init_from`: untrained). Independent of training; memoised when the
  opt-in cache (floors_lib.CACHE_ENV) is on."""
  def random_init():
    untrained = init_state(setup, pretrained=False)
    return {s: embed_images(setup, untrained, d["image"]) for s, d in eval_data.items()}

  return floors_lib.cached_run_floors(setup.config, evaluators, eval_data, random_init)


def _write_json(path: str, obj) -> None:
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)


def _log_model_summary(setup: TrainSetup, state: TrainState) -> None:
  if jax.process_index() != 0:
    return
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  logging.info("Model %s: %s parameters (%.2f M); image shape %s; global batch %d over %d "
               "device(s).", setup.config.model.name, f"{n:,}", n / 1e6, setup.image_shape,
               setup.config.train.batch_size, jax.device_count())
  logging.info("Encoder slices per step (config.train.parallel_splits=%d): %d (%s).",
               setup.config.train.parallel_splits, setup.parallel_splits,
               setup.parallel_splits_why)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics."""
  validate_config(config)
  # First, so that a SIGTERM during set-up or the first compile is honoured at the first step
  # boundary instead of killing the process.
  watcher = checkpointing.PreemptionWatcher()
  try:
    # One run per workdir, for the whole run: a second launch exits 2 at once (`sim_jax.workdir`).
    with workdir_lib.lock(workdir, jax.process_index()):
      return _train_and_evaluate(config, workdir, watcher)
  finally:
    watcher.close()


def _train_and_evaluate(config, workdir, watcher) -> dict[str, float]:
  logging.info("Topology: %s", sharding.describe_topology())
  os.makedirs(workdir, exist_ok=True)
  setup = make_setup(config)
  tcfg = config.train
  manager = checkpointing.create_manager(
      workdir, keep=tcfg.keep_checkpoints, keep_best=tcfg.keep_best,
      best_metric=config.eval.best_metric, best_mode=config.eval.best_mode,
      async_save=tcfg.async_checkpoint)
  check_meta = functools.partial(checkpointing.check_resume, config=config, workdir=workdir)
  record = checkpointing.latest_record(manager)
  if record is not None:
    check_meta(record)  # Before the data pipeline is built or anything is compiled.

  train_iter = data.create_train_iterator(
      config.data, global_batch_size=tcfg.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  found = checkpointing.restore_latest(manager, workdir, abstract_save_target(setup), train_iter,
                                       check_meta=check_meta)
  if found is None:
    state = init_state(setup)
    logging.info("Starting a new run in %s.", workdir)
  else:
    start_step, restored, _ = found
    state = state_from_restored(setup, restored)
    logging.info("Resumed from step %d in %s.", start_step, workdir)
  checkpointing.save_config(config, workdir)
  start = int(sharding.fetch(state.step))

  writer, media = summaries.create_writers(workdir, just_logging=jax.process_index() > 0)
  summaries.write_run_start(writer, media, config, start)
  _log_model_summary(setup, state)

  eval_data = load_eval_data(config)
  evaluators = evaluators_lib.get_evaluators(config.eval)
  hooks = []
  progress = periodic_actions.ReportProgress(num_train_steps=tcfg.steps, writer=writer,
                                             every_steps=tcfg.log_every or None, every_secs=None)
  if jax.process_index() == 0:
    hooks.append(progress)
    if tcfg.profile_steps:
      hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=tcfg.profile_steps,
                                            first_profile=start + 10))
  final_metrics: dict[str, float] = {}
  final_embeddings: dict[str, np.ndarray] = {}
  floor_values: dict[str, dict[str, float]] | None = None
  train_metrics = None
  data_wait, t_last = 0.0, time.time()

  def save(step, metrics_=None, force=False):
    if int(sharding.fetch(state.nonfinite_skips)) > tcfg.max_nonfinite_skips:
      return  # Never checkpoint a run that is about to halt on NaN/Inf.
    checkpointing.save(manager, step, state_to_save(state), train_iter,
                       checkpointing.written_with(config), metrics=metrics_, force=force)

  def check_finite(m):
    skips, first = int(m["nonfinite_skips"]), int(m["first_nonfinite_step"])
    if skips > tcfg.max_nonfinite_skips:
      raise NonFiniteError(
          f"Non-finite loss or gradient at step {first + 1} ({skips} non-finite step(s), "
          f"config.train.max_nonfinite_skips={tcfg.max_nonfinite_skips}). The parameters were "
          f"not updated with it; " + (
              f"the last checkpoint (step {manager.latest_step()}) is intact."
              if manager.latest_step() is not None else "no checkpoint was written."))
    if skips:
      logging.warning("%d non-finite step(s) skipped so far (first at step %d).", skips,
                      first + 1)

  def evaluate_now(step):
    nonlocal floor_values
    results, embeddings = evaluate(setup, state, eval_data, evaluators)
    writer.write_scalars(step, summaries.metric_scalars("eval", results,
                                                        first=floor_values is None))
    if floor_values is None:  # Once per run: they do not depend on training.
      floor_values = compute_floors(setup, eval_data, evaluators)
      for name, values in floor_values.items():
        writer.write_scalars(step, summaries.metric_scalars(f"floors/{name}", values, first=True))
    return results, embeddings

  def host_work_after(step):
    return (step == tcfg.steps or any(every and step % every == 0 for every in (
        tcfg.log_every, tcfg.eval_every, tcfg.checkpoint_every)))

  step, pending, executor = start, [], None
  if start < tcfg.steps:
    t0 = time.time()
    pending.append(next(train_iter))
    data_wait += time.time() - t0
    executor = cpu.compile_executor(setup.train_step, state,
                                    sharding.host_to_global(pending[0], setup.mesh),
                                    config=config, mesh=setup.mesh)
    logging.info("Train steps per execution (config.train.steps_per_execution=%d): %d (%s).",
                 tcfg.steps_per_execution, executor.per_execution, executor.why)
  try:
    while step < tcfg.steps:
      n = executor.next_size(step, tcfg.steps, host_work_after)
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        t0 = time.time()
        batches, pending = pending + [next(train_iter) for _ in range(n - len(pending))], []
        data_wait += time.time() - t0
        state, m = executor.run(state, batches)
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      for _ in range(n):
        step += 1
        for hook in hooks:  # CLU's periodic actions expect a call after every step
          hook(step)
      last = step == tcfg.steps
      if (tcfg.log_every and step % tcfg.log_every == 0) or last:
        computed = {k.replace(DIAGNOSTICS_PREFIX, "diagnostics/", 1): float(v)
                    for k, v in train_metrics.compute().items()}
        check_finite(computed)
        computed.pop("first_nonfinite_step")
        computed["data_wait_fraction"] = data_wait / max(time.time() - t_last, 1e-9)
        writer.write_scalars(step, {f"train/{k}": v for k, v in computed.items()})
        train_metrics, data_wait, t_last = None, 0.0, time.time()
      eval_now = (tcfg.eval_every and step % tcfg.eval_every == 0) or last
      ckpt_now = (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0) or last
      eval_metrics = None
      if eval_now:
        logging.info("Evaluating at step %d.", step)
        with progress.timed("eval"):
          eval_metrics, final_embeddings = evaluate_now(step)
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
      final_metrics, final_embeddings = evaluate_now(start)
  except Preempted:
    final_metrics = {}
  except BaseException:
    writer.close()
    raise
  finally:
    writer.flush()
    if hasattr(train_iter, "close"):
      train_iter.close()  # Stops grain's prefetch threads and worker processes.
    checkpointing.finalize(manager)  # Re-raises a failed async save.
  if final_metrics:  # The last evaluation ran on the final state (eval is forced at the end).
    rep = {"metrics": final_metrics, "floors": floor_values,
           "chance": floors_lib.cached_floors(
               floors_lib.floors_key(config, "chance"),
               lambda: floors_lib.chance_levels(evaluators, final_embeddings, _labels(eval_data)))}
    for line in floors_lib.report_lines(rep):
      logging.info("eval %s", line)
    _write_json(os.path.join(workdir, "final_metrics.json"), rep)
    if tcfg.plots and media is not None:
      summaries.write_run_end(media, workdir, config, max(step, start), setup.info.class_names,
                              eval_data, final_embeddings)
  writer.close()
  return final_metrics
