"""The trainer's objectives: one table from `config.loss.name` to what the loss needs.

`LOSSES[name]` is a `LossSpec`:
  fn       the loss of one batch. inputs "labels": fn(cfg, params, z [M, D], labels [M], mesh);
           inputs "pairs": fn(cfg, params, z_a [B, D], z_b [B, D], same [B], pair_head), plus
           labels=[B, 2] (the two sides' classes) where `pair_labels`
  inputs   "pools": fn(cfg, params, z [B, 2 + k, D], labels, mesh), the pools sampler's rows;
           "labels": embeddings with class labels (pk, random, views, triplets batches, and the
           pairs sampler's images where `pair_batches`); "pairs": explicit (a, b, same) pairs of
           the pairs sampler
  params   trainable parameters the objective may own in params["loss"] ("margin",
           "temperature", "classifier": softmax_ce's kernel and bias, or the class proxies
           params["loss"]["proxies"] [C, D] / [C, K, D] of the proxy and margin losses,
           "class_margins": params["loss"]["class_margin_raw"] [C]) or params["pair_head"]
           ("pair_head")
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
from sim_jax.losses import adaptive_margin, miners
from sim_jax.losses.config import default_config
from sim_jax.losses.pools import POOL_DISTANCES

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
  pair_labels: bool = False  # a "pairs" loss that also reads labels=[B, 2] (the pairs' classes)
  needs_rng: bool = False  # draws from the step's key (`fn(..., rng=key)`): manifold


def margin(loss_cfg: ml_collections.ConfigDict, params) -> jax.Array | float:
  """The margin in use: softplus of the learnt raw value, the mean of the per-class margins
  (adaptive_margin_contrastive), else `config.loss.margin`."""
  if "loss" in params and "class_margin_raw" in params["loss"]:
    return adaptive_margin.margin_stats(params["loss"]["class_margin_raw"],
                                        loss_cfg.adaptive_margin_min)["margin"]
  if "loss" in params and "margin_raw" in params["loss"]:
    return jax.nn.softplus(params["loss"]["margin_raw"])
  return loss_cfg.margin


# What the trainer logs of the margin (train/margin, ...): `margin_metrics`.
MARGIN_METRICS = ("margin", "margin_min", "margin_max")


def margin_metrics(loss_cfg: ml_collections.ConfigDict, params) -> dict[str, jax.Array]:
  """{"margin", "margin_min", "margin_max"}: the mean, smallest and largest per-class margin
  (adaptive_margin_contrastive), else the one margin in use (`margin`) three times."""
  if "loss" in params and "class_margin_raw" in params["loss"]:
    return adaptive_margin.margin_stats(params["loss"]["class_margin_raw"],
                                        loss_cfg.adaptive_margin_min)
  m = margin(loss_cfg, params)
  return dict.fromkeys(MARGIN_METRICS, m)


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


def _triplet(cfg, params, z, labels, mesh, mask=None):
  block, mesh = _block(cfg, mesh)
  return losses.triplet(z, labels, margin=margin(cfg, params), mining=cfg.mining,
                        distance=cfg.distance, soft=cfg.soft, block_size=block, mesh=mesh,
                        mask=mask)


def _pool_triplet(cfg, params, z, labels, mesh):
  del labels, mesh  # z [B, 2 + k, D]: the pools' own layout says which rows are negatives
  return losses.pool_triplet(z, margin=margin(cfg, params), distance=cfg.distance)


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


# Proxy and classification-margin losses: config.loss.class_margin / class_scale /
# centers_per_class left at None take these (the papers' and pytorch-metric-learning's values).
CLASS_DEFAULTS = {
    "arcface": {"margin": 0.5, "scale": 64.0},
    "subcenter_arcface": {"margin": 0.5, "scale": 64.0, "centers": 3},
    "cosface": {"margin": 0.35, "scale": 64.0},
    "large_margin_softmax": {"scale": 1.0},
    "sphereface": {"scale": 1.0},
    "normalized_softmax": {},
    "proxy_nca": {"scale": 1.0},
    "proxy_anchor": {"margin": 0.1, "scale": 32.0},
    "soft_triple": {"margin": 0.01, "scale": 20.0, "centers": 10},
    "p2sgrad": {},
    "manifold": {"margin": 5e-4},
}
PROXY_LOSSES = tuple(CLASS_DEFAULTS)


def class_option(cfg, name: str, key: str):
  """config.loss.class_margin / class_scale / centers_per_class, else loss `name`'s default."""
  field = {"margin": "class_margin", "scale": "class_scale", "centers": "centers_per_class"}[key]
  value = getattr(cfg, field)
  return CLASS_DEFAULTS[name][key] if value is None else value


def proxy_shape(loss_cfg, embedding_dim: int, num_classes: int) -> tuple[int, ...]:
  """params["loss"]["proxies"]: [C, K, D] for the losses with K centres per class, else [C, D]."""
  if loss_cfg.name == "manifold":  # K proxies shared by all classes (labels are not read)
    return (loss_cfg.manifold_proxies, embedding_dim)
  if "centers" in CLASS_DEFAULTS[loss_cfg.name]:
    return (num_classes, class_option(loss_cfg, loss_cfg.name, "centers"), embedding_dim)
  return (num_classes, embedding_dim)


def _margin_softmax(name: str):
  fn = getattr(losses, name)

  def bound(cfg, params, z, labels, mesh):
    del mesh
    return fn(z, labels, params["loss"]["proxies"], margin=class_option(cfg, name, "margin"),
              scale=class_option(cfg, name, "scale"))
  return bound


def _large_margin(name: str):
  fn = getattr(losses, name)

  def bound(cfg, params, z, labels, mesh):
    del mesh
    return fn(z, labels, params["loss"]["proxies"], margin=cfg.angle_multiplier,
              scale=class_option(cfg, name, "scale"))
  return bound


def _normalized_softmax(cfg, params, z, labels, mesh):
  del mesh
  return losses.normalized_softmax(z, labels, params["loss"]["proxies"],
                                   temperature=temperature(cfg, params))


def _proxy_nca(cfg, params, z, labels, mesh):
  del mesh
  return losses.proxy_nca(z, labels, params["loss"]["proxies"],
                          scale=class_option(cfg, "proxy_nca", "scale"),
                          block_size=cfg.block_size or None)


def _manifold(cfg, params, z, labels, mesh, rng=None):
  """pml's ManifoldLoss as the trainer runs it: each step assigns the M samples to the K proxies
  by `random_meta_classes` (every proxy once, the rest uniform) from the step's key."""
  del labels, mesh
  if rng is None:
    raise ValueError("config.loss.name='manifold' draws its meta classes from the step's key: "
                     "objective.loss needs rng")
  meta = losses.random_meta_classes(rng, z.shape[0], cfg.manifold_proxies)
  return losses.manifold(z, params["loss"]["proxies"], meta, lambda_c=cfg.manifold_lambda_c,
                         alpha=cfg.manifold_alpha, margin=class_option(cfg, "manifold", "margin"))


def _proxy_anchor(cfg, params, z, labels, mesh):
  del mesh
  return losses.proxy_anchor(z, labels, params["loss"]["proxies"],
                             margin=class_option(cfg, "proxy_anchor", "margin"),
                             alpha=class_option(cfg, "proxy_anchor", "scale"),
                             block_size=cfg.block_size or None)


def _soft_triple(cfg, params, z, labels, mesh):
  del mesh
  return losses.soft_triple(z, labels, params["loss"]["proxies"],
                            la=class_option(cfg, "soft_triple", "scale"),
                            gamma=cfg.soft_triple_gamma,
                            margin=class_option(cfg, "soft_triple", "margin"),
                            tau=cfg.soft_triple_tau)


def _contrastive(cfg, params, za, zb, same, pair_head, weights=None):
  del pair_head
  if "margin_raw" in params.get("loss", {}):  # a learnt margin (`learns_margin` made it)
    return losses.learnable_margin_contrastive(
        za, zb, same, margin(cfg, params), squared=cfg.squared, distance=cfg.distance,
        margin_reward=cfg.margin_reward, weights=weights)
  return losses.contrastive(za, zb, same, margin=margin(cfg, params), squared=cfg.squared,
                            distance=cfg.distance, weights=weights)


def _pair_bce(cfg, params, za, zb, same, pair_head):
  del cfg
  return losses.pair_bce(pair_head.apply({"params": params["pair_head"]}, za, zb), same)


# Pair and tuple losses (sim_jax.losses.tuple_losses / ranked): fn(cfg, params, z, labels, mesh).
# The all-pairs ones with a row core run the row-blocked form whenever `block_size` is set, and
# under a mesh their sharded form (`sim_jax.losses.sharded`: each device's rows against the
# all-gathered columns), the same value and gradient.


def _ms(cfg, params, z, labels, mesh, mask=None):
  return losses.multi_similarity(z, labels, alpha=cfg.ms_alpha, beta=cfg.ms_beta,
                                 base=cfg.ms_base, block_size=cfg.block_size or None, mesh=mesh,
                                 mask=mask)


def _circle(cfg, params, z, labels, mesh, mask=None):
  return losses.circle(z, labels, m=cfg.circle_m, gamma=cfg.circle_gamma,
                       block_size=cfg.block_size or None, mesh=mesh, mask=mask)


def _lifted(cfg, params, z, labels, mesh, mask=None):
  return losses.lifted_structure(z, labels, neg_margin=cfg.lifted_neg_margin,
                                 pos_margin=cfg.lifted_pos_margin,
                                 block_size=cfg.block_size or None, mesh=mesh, mask=mask)


def _generalized_lifted(cfg, params, z, labels, mesh, mask=None):
  return losses.generalized_lifted_structure(z, labels, neg_margin=cfg.lifted_neg_margin,
                                             pos_margin=cfg.lifted_pos_margin,
                                             block_size=cfg.block_size or None, mesh=mesh,
                                             mask=mask)


def _nca(cfg, params, z, labels, mesh, mask=None):
  return losses.nca(z, labels, scale=cfg.nca_scale, block_size=cfg.block_size or None,
                    mesh=mesh, mask=mask)


def _dynamic_soft_margin(cfg, params, z, labels, mesh, mask=None):
  # The histogram starts empty every step (momentum 1: the batch's own histogram): the train
  # state holds no loss state besides the cross-batch memory (docs/losses.md, pinned).
  hist = jnp.zeros((cfg.dsm_num_bins,), jnp.float32)
  return losses.dynamic_soft_margin(z, labels, hist, min_val=cfg.dsm_min_val, mask=mask)[0]


def _p2sgrad(cfg, params, z, labels, mesh):
  del cfg, mesh
  # The class weights are the proxies [C, D]; p2sgrad takes them as columns [D, C].
  return losses.p2sgrad(z, labels, params["loss"]["proxies"].T)


def _views(z):
  """The views sampler's (z1, z2): its batch is [view 1 of every image; view 2 of every image]."""
  half = z.shape[0] // 2
  return z[:half], z[half:]


TUPLE_LOSSES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "multi_similarity": (_ms, ("ms_alpha", "ms_beta", "ms_base", "block_size")),
    "circle": (_circle, ("circle_m", "circle_gamma", "block_size")),
    "lifted_structure": (_lifted, ("lifted_neg_margin", "lifted_pos_margin", "block_size")),
    "generalized_lifted_structure": (
        _generalized_lifted, ("lifted_neg_margin", "lifted_pos_margin", "block_size")),
    "nca": (_nca, ("nca_scale", "block_size")),
    "npairs": (lambda cfg, params, z, labels, mesh, mask=None: losses.npairs(
        z, labels, mask=mask), ()),
    "tuplet_margin": (lambda cfg, params, z, labels, mesh, mask=None: losses.tuplet_margin(
        z, labels, margin_degrees=cfg.tuplet_margin_degrees, scale=cfg.tuplet_scale, mask=mask),
        ("tuplet_margin_degrees", "tuplet_scale")),
    "margin_loss": (lambda cfg, params, z, labels, mesh, mask=None: losses.margin_loss(
        z, labels, margin=cfg.margin, beta=cfg.margin_beta, mask=mask),
        ("margin", "margin_beta")),
    "angular": (lambda cfg, params, z, labels, mesh, mask=None: losses.angular(
        z, labels, alpha_degrees=cfg.angular_alpha, mask=mask), ("angular_alpha",)),
    "instance_loss": (lambda cfg, params, z, labels, mesh: losses.instance_loss(
        z, labels, gamma=cfg.instance_gamma), ("instance_gamma",)),
    "intra_pair_variance": (
        lambda cfg, params, z, labels, mesh, mask=None: losses.intra_pair_variance(
            z, labels, pos_eps=cfg.ipv_eps, neg_eps=cfg.ipv_eps, mask=mask), ("ipv_eps",)),
    "threshold_consistent_margin": (
        lambda cfg, params, z, labels, mesh, mask=None: losses.threshold_consistent_margin(
            z, labels, margin_plus=cfg.tcm_margin_plus, margin_minus=cfg.tcm_margin_minus,
            mask=mask),
        ("tcm_margin_plus", "tcm_margin_minus")),
    "centroid_triplet": (lambda cfg, params, z, labels, mesh, mask=None: losses.centroid_triplet(
        z, labels, margin=cfg.margin, mask=mask), ("margin",)),
    "fast_ap": (lambda cfg, params, z, labels, mesh, mask=None: losses.fast_ap(
        z, labels, num_bins=cfg.fast_ap_bins, mask=mask), ("fast_ap_bins",)),
    "histogram": (lambda cfg, params, z, labels, mesh, mask=None: losses.histogram(
        z, labels, num_bins=cfg.histogram_bins, mask=mask), ("histogram_bins",)),
    "ranked_list": (lambda cfg, params, z, labels, mesh, mask=None: losses.ranked_list(
        z, labels, margin=cfg.rll_margin, t_neg=cfg.rll_t_neg, imbalance=cfg.rll_imbalance,
        mask=mask), ("rll_margin", "rll_t_neg", "rll_imbalance")),
    "pnp": (lambda cfg, params, z, labels, mesh, mask=None: losses.pnp(
        z, labels, variant=cfg.pnp_variant, anneal=cfg.pnp_anneal, mask=mask),
        ("pnp_variant", "pnp_anneal")),
    "dynamic_soft_margin": (_dynamic_soft_margin, ("dsm_num_bins", "dsm_min_val")),
    # Two-view regularisers: train with config.data.sampler = "views".
    "vicreg": (lambda cfg, params, z, labels, mesh: losses.vicreg(
        *_views(z), *tuple(cfg.vicreg_weights)), ("vicreg_weights",)),
    "barlow_twins": (lambda cfg, params, z, labels, mesh: losses.barlow_twins(
        *_views(z), lambd=cfg.barlow_lambda), ("barlow_lambda",)),
}
VIEW_LOSSES = ("vicreg", "barlow_twins")
# The label losses that take a miner's mask: their fields read config.loss.miner.
MINED_LOSSES = ("triplet",) + tuple(n for n in TUPLE_LOSSES
                                    if n not in VIEW_LOSSES + ("instance_loss",))

def _sigmoid_contrastive(cfg, params, za, zb, same, pair_head):
  logits = pair_head.apply({"params": params["pair_head"]}, za, zb)
  return losses.sigmoid_contrastive(logits, same, margin=cfg.margin)


LOSSES: dict[str, LossSpec] = {
    "contrastive": LossSpec(_contrastive, "pairs", ("margin",),
                            ("margin", "learnable_margin", "squared", "distance", "miner",
                             "margin_reward")),
    # The contrastive loss with its margin always learnt (seed 000, section 3.4.4).
    "learnable_margin_contrastive": LossSpec(
        _contrastive, "pairs", ("margin",),
        ("margin", "learnable_margin", "squared", "distance", "miner", "margin_reward")),
    "pair_bce": LossSpec(_pair_bce, "pairs", ("pair_head",), ()),
    # Seed 002: the contrastive loss on the pair head's sigmoid similarity (not a distance).
    "sigmoid_contrastive": LossSpec(_sigmoid_contrastive, "pairs", ("pair_head",), ("margin",)),
    "snr_contrastive": LossSpec(
        _snr, "labels", ("margin",),
        ("margin", "learnable_margin", "pos_margin", "snr_regularization"), pair_batches=True),
    "nt_xent": LossSpec(_nt_xent, "labels", ("temperature",),
                        ("temperature", "learnable_temperature", "block_size")),
    "supcon": LossSpec(_supcon, "labels", ("temperature",),
                       ("temperature", "learnable_temperature", "block_size")),
    "triplet": LossSpec(_triplet, "labels", ("margin",),
                        ("margin", "learnable_margin", "mining", "distance", "soft",
                         "block_size", "miner")),
    "recall_at_k_surrogate": LossSpec(_recall_at_k, "labels", (),
                                      ("k_values", "rank_temperature", "k_temperature",
                                       "max_positives")),
    "softmax_ce": LossSpec(_softmax_ce, "labels", ("classifier",), ("num_classes",)),
    "arcface": LossSpec(_margin_softmax("arcface"), "labels", ("classifier",),
                        ("num_classes", "class_margin", "class_scale")),
    "subcenter_arcface": LossSpec(_margin_softmax("subcenter_arcface"), "labels",
                                  ("classifier",),
                                  ("num_classes", "class_margin", "class_scale",
                                   "centers_per_class")),
    "cosface": LossSpec(_margin_softmax("cosface"), "labels", ("classifier",),
                        ("num_classes", "class_margin", "class_scale")),
    "large_margin_softmax": LossSpec(_large_margin("large_margin_softmax"), "labels",
                                     ("classifier",),
                                     ("num_classes", "angle_multiplier", "class_scale")),
    "sphereface": LossSpec(_large_margin("sphereface"), "labels", ("classifier",),
                           ("num_classes", "angle_multiplier", "class_scale")),
    "normalized_softmax": LossSpec(_normalized_softmax, "labels", ("classifier", "temperature"),
                                   ("num_classes", "temperature", "learnable_temperature")),
    "proxy_nca": LossSpec(_proxy_nca, "labels", ("classifier",),
                          ("num_classes", "class_scale", "block_size")),
    "proxy_anchor": LossSpec(_proxy_anchor, "labels", ("classifier",),
                             ("num_classes", "class_margin", "class_scale", "block_size")),
    "soft_triple": LossSpec(_soft_triple, "labels", ("classifier",),
                            ("num_classes", "class_margin", "class_scale", "centers_per_class",
                             "soft_triple_gamma", "soft_triple_tau")),
    "p2sgrad": LossSpec(_p2sgrad, "labels", ("classifier",), ("num_classes",)),
    "manifold": LossSpec(_manifold, "labels", ("classifier",),
                         ("manifold_proxies", "manifold_lambda_c", "manifold_alpha",
                          "class_margin"), needs_rng=True),
}
LOSSES.update({name: LossSpec(fn, "labels", (),
                              fields + (("miner",) if name in MINED_LOSSES else ()))
               for name, (fn, fields) in TUPLE_LOSSES.items()})
# Per-class adaptive margins (sim_jax.losses.adaptive_margin): params["loss"]["class_margin_raw"]
# [C], one per class of the dataset; the pairs' labels pick them.
LOSSES["adaptive_margin_contrastive"] = LossSpec(
    lambda cfg, params, za, zb, same, pair_head, weights=None, labels=None:
    adaptive_margin.adaptive_margin_contrastive(
        za, zb, same, labels[:, 0], labels[:, 1], params["loss"]["class_margin_raw"],
        min_margin=cfg.adaptive_margin_min, reward=cfg.adaptive_margin_reward,
        squared=cfg.squared, distance=cfg.distance, weights=weights),
    "pairs", ("class_margins",), ("margin", "adaptive_margin_min", "adaptive_margin_reward",
                                  "squared", "distance", "miner", "num_classes"),
    pair_labels=True)
# Seed 003: a triplet over each candidate pool's own foils (inputs "pools": z [B, 2 + k, D]).
LOSSES["pool_triplet"] = LossSpec(_pool_triplet, "pools", ("margin",),
                                  ("margin", "learnable_margin", "distance"))
NAMES = tuple(LOSSES)
PAIR_LOSSES = tuple(n for n, s in LOSSES.items() if s.inputs == "pairs")
LABEL_LOSSES = tuple(n for n, s in LOSSES.items() if s.inputs == "labels")


def spec(name: str) -> LossSpec:
  if name not in LOSSES:
    raise ValueError(f"config.loss.name={name!r}; the trainer trains one of {NAMES}")
  return LOSSES[name]


def num_logits(loss_cfg: ml_collections.ConfigDict, dataset_classes: int, dataset: str) -> int:
  """softmax_ce's number of logits, or the proxy losses' number of classes C:
  `loss_cfg.num_classes`, else the dataset's; 0 for any other loss. ValueError when neither is
  known, or when fewer logits than classes are asked for."""
  if not {"classifier", "class_margins"} & set(spec(loss_cfg.name).params):
    return 0
  wanted = loss_cfg.num_classes
  if wanted is None:
    if dataset_classes <= 0:
      raise ValueError(f"config.loss.name={loss_cfg.name!r}: dataset {dataset!r} does not "
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
  (LeCun normal kernel, zero bias). The proxy and margin losses' proxies [C, D] (or [C, K, D])
  start N(0, 1/D): rows of about unit norm, in the range of the normalised embeddings.
  """
  out = {}
  if loss_cfg.name == "softmax_ce":
    if embedding_dim <= 0 or num_classes <= 0 or rng is None:
      raise ValueError(f"softmax_ce needs embedding_dim, num_classes > 0 and an rng; got "
                       f"embedding_dim={embedding_dim}, num_classes={num_classes}")
    init = jax.nn.initializers.lecun_normal()
    out["classifier_kernel"] = init(rng, (embedding_dim, num_classes), jnp.float32)
    out["classifier_bias"] = jnp.zeros((num_classes,), jnp.float32)
  if loss_cfg.name in PROXY_LOSSES:
    if embedding_dim <= 0 or num_classes <= 0 or rng is None:
      raise ValueError(f"{loss_cfg.name} needs embedding_dim, num_classes > 0 and an rng; got "
                       f"embedding_dim={embedding_dim}, num_classes={num_classes}")
    shape = proxy_shape(loss_cfg, embedding_dim, num_classes)
    out["proxies"] = jax.random.normal(rng, shape, jnp.float32) / np.sqrt(embedding_dim)
  if "class_margins" in spec(loss_cfg.name).params:
    out["class_margin_raw"] = adaptive_margin.raw_from_class_margin(
        loss_cfg.margin, loss_cfg.adaptive_margin_min, num_classes)
  if learns_margin(loss_cfg):
    out["margin_raw"] = jnp.asarray(_softplus_inverse(loss_cfg.margin), jnp.float32)
  if loss_cfg.learnable_temperature:
    out["temperature_raw"] = jnp.asarray(_softplus_inverse(loss_cfg.temperature), jnp.float32)
  return out


# fold_in constant of the miner's key: the step key `rng` the trainer passes also drives dropout
# (through `jax.random.split`), so the miner draws from a stream of its own.
_MINER_STREAM = 0x6D696E
# fold_in constant of the key a `needs_rng` loss draws from (manifold's meta classes).
_LOSS_STREAM = 0x6C6F73


def loss(config: ml_collections.ConfigDict, params, z: jax.Array, labels: jax.Array, batch, *,
         pair_head=None, mesh=None, rng=None) -> jax.Array:
  """The configured loss of the vectors `z` [M, D] the encoder produced for a batch.

  Pair losses read z as consecutive (a, b) rows, [B, 2, D], with `batch["same"]` [B]; a
  `config.loss.miner` runs on all of z (with `labels`) and weighs the pairs
  (`miners.pair_weights`). The label losses of `MINED_LOSSES` take the miner's mask (the triplet
  loss a TripletMask as it is, the others its pairs, `miners.as_pairs`) and then run dense on the
  global batch (no `block_size`, no sharded form). `rng`: the step's key; the random miners draw
  from `fold_in(rng, _MINER_STREAM)`.
  """
  s = spec(config.loss.name)
  key = None if rng is None else jax.random.fold_in(rng, _MINER_STREAM)
  if s.inputs == "pairs":
    z2 = z.reshape(-1, 2, z.shape[-1])
    extra = {"labels": labels.reshape(-1, 2)} if s.pair_labels else {}
    mined = miners.from_config(config.loss.miner, z, labels, key)
    if mined is not None:
      return s.fn(config.loss, params, z2[:, 0], z2[:, 1], batch["same"], pair_head,
                  weights=miners.pair_weights(mined, batch["same"]), **extra)
    return s.fn(config.loss, params, z2[:, 0], z2[:, 1], batch["same"], pair_head, **extra)
  if "miner" in s.fields and config.loss.miner.name != "none":
    def masked(x, y, mask):
      return s.fn(config.loss, params, x, y, None, mask=mask)
    mined = miners.from_config(config.loss.miner, z, labels, key, loss_fn=masked)
    return masked(z, labels, mined if config.loss.name == "triplet" else miners.as_pairs(mined))
  if s.inputs == "pools":  # rows [query, true match, foils] of the pools sampler
    return s.fn(config.loss, params, z.reshape(-1, 2 + config.data.num_foils, z.shape[-1]),
                labels, mesh)
  if s.needs_rng:
    return s.fn(config.loss, params, z, labels, mesh,
                rng=None if rng is None else jax.random.fold_in(rng, _LOSS_STREAM))
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
    elif key not in read:
      for name, value, default in _changed(key, loss_cfg[key], defaults[key]):
        out.append(f"config.loss.{name}={value!r} is not read by config.loss.name="
                   f"{loss_cfg.name!r} (it reads {sorted(spec(loss_cfg.name).fields)}); "
                   f"remove it or set it back to its default {default!r}")
  return out


def _changed(key, value, default) -> list[tuple[str, object, object]]:
  """(dotted name, value, default) of what differs; a section (config.loss.miner) per field."""
  if isinstance(value, ml_collections.ConfigDict):
    return [(f"{key}.{k}", value[k], default[k]) for k in value.keys()
            if _differs(value[k], default[k])]
  return [(key, value, default)] if _differs(value, default) else []


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
  if (s.inputs == "pools") != (sampler == "pools"):
    raise ValueError(f"config.loss.name={c.name!r} with config.data.sampler={sampler!r}: the "
                     "pools sampler and the pool_triplet loss go together (its rows are "
                     "[query, true match, foils])")
  if c.name == "pool_triplet" and c.distance not in POOL_DISTANCES:
    raise ValueError(f"config.loss.distance={c.distance!r}: pool_triplet takes {POOL_DISTANCES}")
  if s.inputs == "labels" and sampler == "pairs" and not s.pair_batches:
    raise ValueError(f"config.loss.name={c.name!r} needs labelled batches, not pairs: set "
                     f"config.data.sampler to one of pk, random, views, triplets")
  problems = unused_fields(c)
  if problems:
    raise ValueError("; ".join(problems))
  if c.name == "adaptive_margin_contrastive" and not c.margin > c.adaptive_margin_min:
    raise ValueError(f"config.loss.margin={c.margin} must be larger than "
                     f"config.loss.adaptive_margin_min={c.adaptive_margin_min}: the per-class "
                     "margins start at margin and stay above adaptive_margin_min")
  if c.name in ("contrastive", "learnable_margin_contrastive", "adaptive_margin_contrastive") and \
      c.distance not in CONTRASTIVE_DISTANCES:
    raise ValueError(f"config.loss.distance={c.distance!r}: config.loss.name={c.name!r} takes "
                     f"{CONTRASTIVE_DISTANCES} (squared=True already squares the distance)")
  if c.margin_reward and not learns_margin(c):
    raise ValueError(f"config.loss.margin_reward={c.margin_reward} rewards a learnt margin: set "
                     "config.loss.learnable_margin=True or "
                     "config.loss.name='learnable_margin_contrastive'")
  miners.check_config(c.miner, pairs=s.inputs == "pairs")
  if c.miner.name != "none" and "miner" in s.fields and c.block_size and "block_size" in s.fields:
    raise ValueError(f"config.loss.miner.name={c.miner.name!r} selects pairs in the dense "
                     f"[M, M] matrix and config.loss.block_size={c.block_size} streams it: set "
                     f"one of them (block_size=None or miner.name='none')")
  if c.name == "triplet" and c.distance not in TRIPLET_DISTANCES:
    raise ValueError(f"config.loss.distance={c.distance!r}: the triplet loss takes "
                     f"{TRIPLET_DISTANCES}")
  if c.name in VIEW_LOSSES and sampler != "views":
    raise ValueError(f"config.loss.name={c.name!r} compares two views of each image: set "
                     f"config.data.sampler='views' (got {sampler!r})")
  if c.name in PROXY_LOSSES:
    _validate_class_options(c)
  if "classifier" in s.params:
    if sampler == "views" and config.train.view_labels != "class":
      raise ValueError(f"config.loss.name={c.name!r} classifies classes, but the views sampler "
                       "labels views by example index: set config.train.view_labels='class' or "
                       "config.data.sampler='pk'")
    if c.num_classes is not None and c.num_classes <= 0:
      raise ValueError(f"config.loss.num_classes must be positive (or None: the dataset's), "
                       f"got {c.num_classes}")
  if c.name == "softmax_ce":
    if config.model.projection_depth:
      raise ValueError(f"config.loss.name='softmax_ce' classifies the embedding itself: set "
                       f"config.model.projection_depth=0 (got {config.model.projection_depth})")


def _validate_class_options(c: ml_collections.ConfigDict) -> None:
  """The proxy and margin losses' fields, refused with their key before anything is traced."""
  checks = (("class_margin", lambda v: v >= 0, ">= 0"), ("class_scale", lambda v: v > 0, "> 0"),
            ("centers_per_class", lambda v: v >= 1, ">= 1"),
            ("angle_multiplier", lambda v: v >= 1, ">= 1 (an int)"),
            ("soft_triple_gamma", lambda v: v > 0, "> 0"),
            ("soft_triple_tau", lambda v: v >= 0, ">= 0"))
  read = spec(c.name).fields
  for key, ok, want in checks:
    if key in read and c[key] is not None and not ok(c[key]):
      raise ValueError(f"config.loss.{key}={c[key]!r} for config.loss.name={c.name!r}: must be "
                       f"{want}")
