"""The trainer's objectives: one table from `config.loss.name` to what the loss needs.

`LOSSES[name]` is a `LossSpec`:
  fn       the loss of one batch. inputs "labels": fn(cfg, params, z [M, D], labels [M], mesh);
           inputs "pairs": fn(cfg, params, z_a [B, D], z_b [B, D], same [B], pair_head)
  inputs   "labels": embeddings with class labels (pk, random, views, triplets batches, and the
           pairs sampler's images where `pair_batches`); "pairs": explicit (a, b, same) pairs of
           the pairs sampler
  params   trainable parameters the objective may own in params["loss"] ("margin",
           "temperature", "classifier") or params["pair_head"] ("pair_head")
  fields   the `config.loss` fields it reads (besides `name`)

`validate(config)` refuses an unknown loss, a sampler it cannot train on, a field the config has
that `sim_jax.losses.config.default_config()` does not, and a field set to a non-default value
that the chosen loss does not read: every config section carries a default for every loss
field, so "set" means "differs from the default" (a triplet config's margin=0.2 under nt_xent
would be silently ignored; it is refused with its key instead). `diagnostics_margin` is read by
the train diagnostics whatever the loss.

Learnable scalars are kept positive through softplus of a raw parameter:
  margin = softplus(params["loss"]["margin_raw"]), temperature = softplus(...["temperature_raw"]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sim_jax import losses
from sim_jax.losses.config import default_config

# Read by `losses.diagnostics` (the train diagnostics), whichever loss is trained.
COMMON_FIELDS = ("diagnostics_margin",)
CONTRASTIVE_DISTANCES = ("euclidean", "cosine")
TRIPLET_DISTANCES = ("euclidean", "squared_euclidean", "cosine")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  fn: Callable
  inputs: str  # "labels" | "pairs"
  params: tuple[str, ...]
  fields: tuple[str, ...]
  pair_batches: bool = False  # a "labels" loss that also trains on the pairs sampler's images


def margin(loss_cfg: ml_collections.ConfigDict, params) -> jax.Array | float:
  """The margin in use: softplus of the learnt raw value, else `config.loss.margin`."""
  if "loss" in params and "margin_raw" in params["loss"]:
    return jax.nn.softplus(params["loss"]["margin_raw"])
  return loss_cfg.margin


def temperature(loss_cfg: ml_collections.ConfigDict, params) -> jax.Array | float:
  """The temperature in use: softplus of the learnt raw value, else `config.loss.temperature`."""
  if "loss" in params and "temperature_raw" in params["loss"]:
    return jax.nn.softplus(params["loss"]["temperature_raw"])
  return loss_cfg.temperature


def classifier_logits(params, z: jax.Array) -> jax.Array:
  """softmax_ce's class logits z W + b [M, C] (the classifier lives in params["loss"])."""
  return losses.linear_logits(z, params["loss"]["classifier_kernel"],
                              params["loss"]["classifier_bias"])


def _block(cfg, mesh):
  block = cfg.block_size or None
  return block, (mesh if block else None)


def _nt_xent(cfg, params, z, labels, mesh):
  block, mesh = _block(cfg, mesh)
  return losses.nt_xent(z, labels, temperature=temperature(cfg, params), block_size=block,
                        mesh=mesh)


def _supcon(cfg, params, z, labels, mesh):
  block, mesh = _block(cfg, mesh)
  return losses.supcon(z, labels, temperature=temperature(cfg, params), block_size=block,
                       mesh=mesh)


def _triplet(cfg, params, z, labels, mesh):
  block, mesh = _block(cfg, mesh)
  return losses.triplet(z, labels, margin=margin(cfg, params), mining=cfg.mining,
                        distance=cfg.distance, soft=cfg.soft, block_size=block, mesh=mesh)


def _recall_at_k(cfg, params, z, labels, mesh):
  del params, mesh
  return losses.recall_at_k_surrogate(z, labels, k_values=tuple(cfg.k_values),
                                      rank_temperature=cfg.rank_temperature,
                                      k_temperature=cfg.k_temperature,
                                      max_positives=cfg.max_positives)


def _snr(cfg, params, z, labels, mesh):
  del mesh
  return losses.snr_contrastive(z, labels, pos_margin=cfg.pos_margin,
                                neg_margin=margin(cfg, params),
                                regularization=cfg.snr_regularization)


def _softmax_ce(cfg, params, z, labels, mesh):
  del cfg, mesh
  return losses.softmax_ce(classifier_logits(params, z), labels)


def _contrastive(cfg, params, za, zb, same, pair_head):
  del pair_head
  return losses.contrastive(za, zb, same, margin=margin(cfg, params), squared=cfg.squared,
                            distance=cfg.distance)


def _pair_bce(cfg, params, za, zb, same, pair_head):
  del cfg
  return losses.pair_bce(pair_head.apply({"params": params["pair_head"]}, za, zb), same)


LOSSES: dict[str, LossSpec] = {
    "contrastive": LossSpec(_contrastive, "pairs", ("margin",),
                            ("margin", "learnable_margin", "squared", "distance")),
    # The contrastive loss with its margin always learnt (seed 000, section 3.4.4).
    "learnable_margin_contrastive": LossSpec(
        _contrastive, "pairs", ("margin",), ("margin", "learnable_margin", "squared", "distance")),
    "pair_bce": LossSpec(_pair_bce, "pairs", ("pair_head",), ()),
    "snr_contrastive": LossSpec(
        _snr, "labels", ("margin",),
        ("margin", "learnable_margin", "pos_margin", "snr_regularization"), pair_batches=True),
    "nt_xent": LossSpec(_nt_xent, "labels", ("temperature",),
                        ("temperature", "learnable_temperature", "block_size")),
    "supcon": LossSpec(_supcon, "labels", ("temperature",),
                       ("temperature", "learnable_temperature", "block_size")),
    "triplet": LossSpec(_triplet, "labels", ("margin",),
                        ("margin", "learnable_margin", "mining", "distance", "soft",
                         "block_size")),
    "recall_at_k_surrogate": LossSpec(_recall_at_k, "labels", (),
                                      ("k_values", "rank_temperature", "k_temperature",
                                       "max_positives")),
    "softmax_ce": LossSpec(_softmax_ce, "labels", ("classifier",), ("num_classes",)),
}
NAMES = tuple(LOSSES)
PAIR_LOSSES = tuple(n for n, s in LOSSES.items() if s.inputs == "pairs")
LABEL_LOSSES = tuple(n for n, s in LOSSES.items() if s.inputs == "labels")


def spec(name: str) -> LossSpec:
  if name not in LOSSES:
    raise ValueError(f"config.loss.name={name!r}; the trainer trains one of {NAMES}")
  return LOSSES[name]


def num_logits(loss_cfg: ml_collections.ConfigDict, dataset_classes: int, dataset: str) -> int:
  """softmax_ce's number of logits: `loss_cfg.num_classes`, else the dataset's; 0 for any other
  loss. ValueError when neither is known, or when fewer logits than classes are asked for."""
  if loss_cfg.name != "softmax_ce":
    return 0
  wanted = loss_cfg.num_classes
  if wanted is None:
    if dataset_classes <= 0:
      raise ValueError(f"config.loss.name='softmax_ce': dataset {dataset!r} does not "
                       f"declare its number of classes; set config.loss.num_classes")
    return dataset_classes
  if 0 < wanted < dataset_classes:
    raise ValueError(f"config.loss.num_classes={wanted} is smaller than the {dataset_classes} "
                     f"classes of dataset {dataset!r}: their labels would have no logit")
  return wanted


def learns_margin(loss_cfg) -> bool:
  return loss_cfg.name == "learnable_margin_contrastive" or bool(loss_cfg.learnable_margin)


def _softplus_inverse(x: float) -> float:
  return float(np.log(np.expm1(x)))


def init_params(loss_cfg: ml_collections.ConfigDict, *, embedding_dim: int = 0,
                num_classes: int = 0, rng=None) -> dict:
  """Trainable parameters of the objective (params["loss"]); {} when it has none.

  Margin and temperature are stored as softplus^-1 of their configured start values.
  softmax_ce's linear classifier [embedding_dim, num_classes] starts like `flax.linen.Dense`
  (LeCun normal kernel, zero bias).
  """
  out = {}
  if loss_cfg.name == "softmax_ce":
    if embedding_dim <= 0 or num_classes <= 0 or rng is None:
      raise ValueError(f"softmax_ce needs embedding_dim, num_classes > 0 and an rng; got "
                       f"embedding_dim={embedding_dim}, num_classes={num_classes}")
    init = jax.nn.initializers.lecun_normal()
    out["classifier_kernel"] = init(rng, (embedding_dim, num_classes), jnp.float32)
    out["classifier_bias"] = jnp.zeros((num_classes,), jnp.float32)
  if learns_margin(loss_cfg):
    out["margin_raw"] = jnp.asarray(_softplus_inverse(loss_cfg.margin), jnp.float32)
  if loss_cfg.learnable_temperature:
    out["temperature_raw"] = jnp.asarray(_softplus_inverse(loss_cfg.temperature), jnp.float32)
  return out


def loss(config: ml_collections.ConfigDict, params, z: jax.Array, labels: jax.Array, batch, *,
         pair_head=None, mesh=None) -> jax.Array:
  """The configured loss of the vectors `z` [M, D] the encoder produced for a batch.

  Pair losses read z as consecutive (a, b) rows, [B, 2, D], with `batch["same"]` [B].
  """
  s = spec(config.loss.name)
  if s.inputs == "pairs":
    z2 = z.reshape(-1, 2, z.shape[-1])
    return s.fn(config.loss, params, z2[:, 0], z2[:, 1], batch["same"], pair_head)
  return s.fn(config.loss, params, z, labels, mesh)


def unused_fields(loss_cfg: ml_collections.ConfigDict) -> list[str]:
  """Fields of `loss_cfg` the chosen loss does not read and that differ from their default."""
  defaults = default_config()
  read = set(spec(loss_cfg.name).fields) | set(COMMON_FIELDS) | {"name"}
  out = []
  for key in loss_cfg.keys():
    if key not in defaults:
      out.append(f"config.loss.{key}={loss_cfg[key]!r} is not a loss field (known: "
                 f"{sorted(defaults.keys())})")
    elif key not in read and _differs(loss_cfg[key], defaults[key]):
      out.append(f"config.loss.{key}={loss_cfg[key]!r} is not read by config.loss.name="
                 f"{loss_cfg.name!r} (it reads {sorted(spec(loss_cfg.name).fields)}); "
                 f"remove it or set it back to its default {defaults[key]!r}")
  return out


def _differs(a, b) -> bool:
  if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
    return a is None or b is None or list(a) != list(b)
  return a != b


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses a loss config the trainer would otherwise misread (see the module docstring)."""
  c, sampler = config.loss, config.data.sampler
  s = spec(c.name)
  if s.inputs == "pairs" and sampler != "pairs":
    raise ValueError(f"config.loss.name={c.name!r} trains on pairs: set "
                     f"config.data.sampler='pairs' (got {sampler!r})")
  if s.inputs == "labels" and sampler == "pairs" and not s.pair_batches:
    raise ValueError(f"config.loss.name={c.name!r} needs labelled batches, not pairs: set "
                     f"config.data.sampler to one of pk, random, views, triplets")
  problems = unused_fields(c)
  if problems:
    raise ValueError("; ".join(problems))
  if c.name in ("contrastive", "learnable_margin_contrastive") and \
      c.distance not in CONTRASTIVE_DISTANCES:
    raise ValueError(f"config.loss.distance={c.distance!r}: config.loss.name={c.name!r} takes "
                     f"{CONTRASTIVE_DISTANCES} (squared=True already squares the distance)")
  if c.name == "triplet" and c.distance not in TRIPLET_DISTANCES:
    raise ValueError(f"config.loss.distance={c.distance!r}: the triplet loss takes "
                     f"{TRIPLET_DISTANCES}")
  if c.name == "softmax_ce":
    if sampler == "views" and config.train.view_labels != "class":
      raise ValueError("config.loss.name='softmax_ce' classifies classes, but the views sampler "
                       "labels views by example index: set config.train.view_labels='class' or "
                       "config.data.sampler='pk'")
    if config.model.projection_depth:
      raise ValueError(f"config.loss.name='softmax_ce' classifies the embedding itself: set "
                       f"config.model.projection_depth=0 (got {config.model.projection_depth})")
    if c.num_classes is not None and c.num_classes <= 0:
      raise ValueError(f"config.loss.num_classes must be positive (or None: the dataset's), "
                       f"got {c.num_classes}")
