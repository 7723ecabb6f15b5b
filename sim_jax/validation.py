"""Range validation of every numeric config field, before anything is built or compiled.

  check_ranges(config)   raises ValueError("config.<key>=<value>: must be <range>")

`RANGES` maps each numeric field ("section.field") to an interval in the usual notation:
`[a, b]` closed, `(a, b)` open, `inf` unbounded; a tuple field (e.g. `eval.ks`) has every element
checked. `None` passes for the fields whose default is a typed placeholder ("None: the family
default"). Every float anywhere in the config must be finite (NaN compares false with every
bound, so a NaN learning rate would otherwise train to a NaN halt without naming its key).
`tests/reliability_test.py` fails when a numeric field of any config in `configs/` has no entry
here, so a new field cannot go unchecked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections

INF = math.inf

# key -> (low, high, low_closed, high_closed). Written with `_r` below from interval notation.
RANGES: dict[str, tuple[float, float, bool, bool]] = {}


def _r(spec: str, *keys: str) -> None:
  """Registers `keys` with the interval `spec`, e.g. "[0, 1)", "(0, inf)"."""
  low, high = (part.strip() for part in spec[1:-1].split(","))
  for key in keys:
    RANGES[key] = (float(low), float(high), spec[0] == "[", spec[-1] == "]")


_r("[0, 4294967295]", "seed", "data.subset_seed", "eval.pool_seed", "eval.verification_seed",
   "eval.fewshot_seed")
# data
_r("[1, inf)", "data.image_size", "data.examples_per_class", "data.num_foils",
   "data.samples_per_class", "data.augmentation_factor", "data.worker_buffer_size",
   "data.prefetch_batches", "data.renders_per_font", "data.min_families")
_r("[1, 3]", "data.channels")
_r("[0, inf)", "data.validation_size", "data.worker_count", "data.cache_mb",
   "data.prefetch_threads", "data.max_bad_images", "data.augment.strength", "data.augment.num_ops",
   "data.offline_augment.strength", "data.offline_augment.num_ops")
# 0: off; else also < data.min_families (checked by the icon_themes builder, which knows it).
_r("[0, inf)", "data.unlabelled_min_families")
_r("[2, inf)", "data.max_classes")
_r("[0, 1]", "data.pos_fraction")
_r("[0, 1)", "data.heldout_class_fraction", "data.test_fraction",
   "data.validation_class_fraction")
_r("[0, 30]", "data.augment.magnitude", "data.offline_augment.magnitude")
_r("(0, 1]", "data.augment.min_scale", "data.offline_augment.min_scale")
# model
_r("[1, inf)", "model.in_channels", "model.width", "model.attention_tokens",
   "model.attention_heads", "model.attention_reduction", "model.patch_size",
   "model.projection_hidden_dim", "model.projection_dim")
_r("[0, inf)", "model.embedding_dim", "model.projection_depth")
_r("[1, inf)", "model.multiscale_kernels", "model.multiscale_stages")
_r("[0, 1)", "model.dropout_rate", "model.stochastic_depth")
# loss
_r("(0, inf)", "loss.temperature", "loss.rank_temperature", "loss.k_temperature")
_r("[0, inf)", "loss.margin", "loss.pos_margin", "loss.snr_regularization",
   "loss.diagnostics_margin", "loss.margin_reward")
_r("[1, inf)", "loss.block_size", "loss.k_values")
_r("[1, inf)", "loss.num_classes")
_r("(0, inf)", "loss.adaptive_margin_min")
_r("[0, inf)", "loss.adaptive_margin_reward")
_r("(-inf, inf)", "loss.siglip_bias", "loss.siglip_log_temperature")
# proxy / margin-softmax losses (None: the paper's value)
_r("[0, inf)", "loss.class_margin", "loss.soft_triple_tau")
_r("(0, inf)", "loss.class_scale", "loss.soft_triple_gamma")
_r("[1, inf)", "loss.manifold_proxies")
_r("[0, inf)", "loss.manifold_lambda_c")
_r("(0, 1)", "loss.manifold_alpha")
_r("[1, inf)", "loss.centers_per_class", "loss.angle_multiplier")
# pair and tuple losses, self-supervised regularisers
_r("(0, inf)", "loss.ms_alpha", "loss.ms_beta", "loss.circle_gamma", "loss.tuplet_scale",
   "loss.nca_scale", "loss.instance_gamma", "loss.rll_t_neg", "loss.pnp_anneal")
_r("[-1, 1]", "loss.ms_base", "loss.tcm_margin_plus", "loss.tcm_margin_minus")
_r("[0, inf)", "loss.circle_m", "loss.lifted_neg_margin", "loss.lifted_pos_margin",
   "loss.margin_beta", "loss.ipv_eps", "loss.rll_margin", "loss.barlow_lambda",
   "loss.vicreg_weights")
_r("[1, inf)", "loss.fast_ap_bins", "loss.histogram_bins")
_r("[0, 1]", "loss.rll_imbalance")
_r("(0, 90)", "loss.angular_alpha", "loss.miner.angle")
_r("[0, 180)", "loss.tuplet_margin_degrees")
# miners (distances: euclidean >= 0, cosine distance 1 - s in [0, 2])
_r("[0, inf)", "loss.miner.epsilon", "loss.miner.margin", "loss.miner.pos_margin",
   "loss.miner.neg_margin")
_r("(0, 1]", "loss.miner.filter_percentage")
_r("[0, inf)", "loss.miner.cutoff")
_r("(0, inf)", "loss.miner.nonzero_loss_cutoff")
_r("[1, inf)", "loss.miner.num_bins", "loss.miner.pos_per_bin", "loss.miner.neg_per_bin",
   "loss.miner.output_batch_size", "loss.miner.num_trials", "loss.dsm_num_bins")
_r("(-inf, 0)", "loss.dsm_min_val")
# optimizer
_r("(0, inf)", "optimizer.learning_rate", "optimizer.lars_trust_coefficient")
_r("[0, inf)", "optimizer.warmup_steps", "optimizer.weight_decay", "optimizer.grad_clip_norm")
_r("[0, 1]", "optimizer.end_lr_fraction")
_r("[0, 1)", "optimizer.b1", "optimizer.b2", "optimizer.momentum")
# train
_r("[1, inf)", "train.steps", "train.batch_size", "train.keep_checkpoints",
   "train.grad_accum_chunks")
_r("[0, inf)", "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_best",
   "train.max_nonfinite_skips", "train.parallel_splits", "train.steps_per_execution",
   "train.profile_steps", "train.memory.size", "train.memory.start_step")
_r("[0, 255]", "train.adversarial.epsilon")
_r("(0, 255]", "train.adversarial.step_size")
_r("[1, inf)", "train.adversarial.steps")
_r("[0, 1]", "train.adversarial.ratio")
_r("[2, inf)", "eval.robust_num_pairs")  # one same and one different pair at least
# eval
_r("[1, inf)", "eval.block_size", "eval.query_block_size", "eval.ks", "eval.knn_k",
   "eval.pool_num_foils", "eval.pool_top", "eval.verification_num_pairs", "eval.fewshot_k_shots",
   "eval.fewshot_n_query", "eval.fewshot_num_episodes")
_r("[2, inf)", "eval.fewshot_n_way")
_r("[1, inf)", "eval.graph.k", "eval.graph.hidden")
_r("[0, inf)", "eval.graph.steps")
_r("(0, inf)", "eval.graph.learning_rate", "eval.graph.temperature")
_r("[0, 4294967295]", "eval.graph.seed")
_r("[0, inf)", "eval.fewshot_finetune_steps")
_r("(0, inf)", "eval.fewshot_finetune_lr")
_r("[0, inf)", "eval.zeroshot_knn_k")
_r("[0, inf)", "eval.zeroshot_max_per_class")
_r("[0, inf)", "eval.batch_norm_recalibration_batches")


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, (Mapping, ml_collections.ConfigDict)):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def numeric_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"section.field": value} of every field holding a number or a tuple of numbers."""
  return {k: v for k, v in _flatten(config).items()
          if _is_number(v) or (isinstance(v, (tuple, list)) and v and all(map(_is_number, v)))}


def describe(low: float, high: float, low_closed: bool, high_closed: bool) -> str:
  fmt = lambda x: "inf" if math.isinf(x) else f"{x:g}"  # noqa: E731
  return f"in {'[' if low_closed else '('}{fmt(low)}, {fmt(high)}{']' if high_closed else ')'}"


def _in_range(x: float, low: float, high: float, low_closed: bool, high_closed: bool) -> bool:
  above = x >= low if low_closed else x > low
  below = x <= high if high_closed else x < high
  return above and below


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first numeric field that is not finite or out of its range."""
  for key, value in numeric_fields(config).items():
    for x in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"config.{key}={value!r}: must be finite")
      if key in RANGES and not _in_range(x, *RANGES[key]):
        raise ValueError(f"config.{key}={value!r}: must be {describe(*RANGES[key])}")
