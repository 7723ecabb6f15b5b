"""sim_jax.models: pure Flax Linen encoders behind `get_model(config.model)`.

`get_model(model_config).apply(variables, images [B, H, W, C] float32 in [0, 1], train=bool,
rngs={"dropout": key}, mutable=["batch_stats"] when train)` -> `(embeddings [B, E], aux)`.
See `sim_jax/models/encoder.py` for the exact head and `docs/models.md` for sizes and FLOPs.
Every backbone is a plain Flax module; for the CPU, `get_model` swaps in the XLA:CPU forms of a
few layers (same parameters, same function; `sim_jax/models/cpu_ops.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from sim_jax.cpu import kernels
from sim_jax.models import cpu_ops, densenet, lenet, mobilenet, multiscale, resnet, swin, vgg, vit
from sim_jax.models.config import default_config
from sim_jax.models.cpu_ops import MATERIALIZE, resolve_materialize, use_cpu_kernels
from sim_jax.models.encoder import ATTENTIONS, POOLINGS, Encoder, parse_dtype
from sim_jax.models.heads import PAIR_HEAD_MODES, PairHead, l2_normalize

__all__ = ["MODEL_NAMES", "Encoder", "PairHead", "default_config", "get_model", "get_pair_head",
           "l2_normalize"]


# Builders take (config, dtype, platform) and return the backbone. The CPU forms are looked up
# at call time (cpu_ops.FusedBlock, not a default bound at import) so a benchmark can swap them.
def _resnet(name):
  def build(cfg, dtype, platform):
    stages, block = resnet.STAGES[name]
    width = cfg.width or (8 if "tiny" in name else 64)
    return resnet.ResNet(stages, block, width, cfg.stem, dtype, cfg.remat,
                         resolve_materialize(cfg.get("materialize", "auto"), platform))
  return build


def _vit(name):
  def build(cfg, dtype, platform):
    hidden, depth, heads = vit.SIZES[name]
    block = cpu_ops.FusedBlock if use_cpu_kernels(platform) else vit.Block
    return vit.VisionTransformer(cfg.patch_size, hidden, depth, heads, 4, cfg.pooling or "cls",
                                 cfg.dropout_rate, cfg.stochastic_depth, dtype, cfg.remat, block)
  return build


def _lenet5(cfg, dtype, platform):
  del cfg
  stage = cpu_ops.FusedConvReluPool if use_cpu_kernels(platform) else lenet.ConvReluPool
  return lenet.LeNet5(dtype, stage)


def _mbconv(cls):
  def build(cfg, dtype, platform):
    depthwise = cpu_ops.ShiftedDepthwiseConv if use_cpu_kernels(platform) else nn.Conv
    return cls(dtype, cfg.remat, depthwise)
  return build


def _multiscale(default_width):
  def build(cfg, dtype, platform):
    pool = kernels.max_pool_2x2 if use_cpu_kernels(platform) else multiscale.max_pool
    # .get: configs saved before the fields existed (checkpoints' config.json) mean the seed's.
    sizes = tuple(int(k) for k in cfg.get("multiscale_kernels", multiscale.KERNELS))
    if not sizes or any(k < 1 or k % 2 == 0 for k in sizes) or len(set(sizes)) != len(sizes):
      raise ValueError(f"model config multiscale_kernels must be distinct odd sizes >= 1 (a "
                       f"'same'-padded branch); got {sizes}")
    return multiscale.MultiScale(cfg.width or default_width, int(cfg.get("multiscale_stages", 3)),
                                 dtype, cfg.remat, pool, sizes)
  return build


# name -> (builder(config, dtype, platform) -> backbone, default pooling, default attention)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str, str]] = {
    "lenet5": (_lenet5, "avg", "none"),
    "vgg16": (lambda cfg, dtype, _: vgg.VGG(cfg.width or 64, vgg.VGG16_CFG, dtype, cfg.remat),
              "max", "before"),
    "vgg_tiny": (lambda cfg, dtype, _: vgg.VGG(cfg.width or 8, vgg.VGG16_CFG, dtype, cfg.remat),
                 "max", "before"),
    "multiscale": (_multiscale(32), "avg", "before"),
    "multiscale_tiny": (_multiscale(4), "avg", "before"),
    **{n: (_resnet(n), "avg", "none") for n in resnet.STAGES},
    # Second priority (seed 004's backbone comparison); torchvision architectures.
    "mobilenet_v3_small": (_mbconv(mobilenet.MobileNetV3Small), "avg", "none"),
    "efficientnet_b0": (_mbconv(mobilenet.EfficientNetB0), "avg", "none"),
    "densenet121": (lambda cfg, dtype, _: densenet.DenseNet121(dtype, cfg.remat), "avg", "none"),
    "swin_t": (lambda cfg, dtype, _: swin.SwinTransformer(
        96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 4, cfg.stochastic_depth, dtype, cfg.remat),
               "avg", "none"),
    "swin_tiny": (lambda cfg, dtype, _: swin.SwinTransformer(
        16, (2, 2), (2, 2), 2, 4, cfg.stochastic_depth, dtype, cfg.remat), "avg", "none"),
    **{n: (_vit(n), "cls", "none") for n in vit.SIZES},
}
MODEL_NAMES = tuple(sorted(_REGISTRY))
PLATFORMS = ("cpu", "gpu", "tpu")  # jax.default_backend() names


def _check(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"model config {name} must be one of {tuple(allowed)}; got {value!r}")


def get_model(model_config, platform: str | None = None) -> Encoder:
  """Builds the `Encoder` named by `model_config.name` (fields: `sim_jax.models.config`).

  `platform` is where the model will be compiled ("cpu", "gpu", "tpu"; default
  `jax.default_backend()`). On "cpu" some layers are their XLA:CPU forms
  (`sim_jax.models.cpu_ops`): the same parameters and function, so checkpoints are portable.

  Raises a ValueError listing the valid names for an unknown name, and naming the field and value
  for any other invalid setting.
  """
  cfg = model_config
  if platform is not None and platform not in PLATFORMS:
    raise ValueError(f"get_model platform must be one of {PLATFORMS} (or None: "
                     f"jax.default_backend()); got {platform!r}")
  if cfg.name not in _REGISTRY:
    raise ValueError(f"unknown model name {cfg.name!r}; valid names: {', '.join(MODEL_NAMES)}")
  build, default_pooling, default_attention = _REGISTRY[cfg.name]
  dtype = parse_dtype(cfg.dtype)
  pooling = cfg.pooling or default_pooling
  attention = cfg.attention or default_attention
  _check("pooling", pooling, POOLINGS)
  _check("attention", attention, ATTENTIONS)
  _check("stem", cfg.stem, resnet.STEMS)
  _check("input_norm", cfg.input_norm, ("imagenet", "none"))
  _check("pair_head", cfg.pair_head, PAIR_HEAD_MODES)
  # Configs saved before the field existed (checkpoints' config.json) mean its default.
  _check("materialize", cfg.get("materialize", "auto"), MATERIALIZE)
  for field in ("embedding_dim", "projection_depth"):
    if cfg[field] < 0:
      raise ValueError(f"model config {field} must be >= 0; got {cfg[field]}")
  for field in ("dropout_rate", "stochastic_depth"):
    if not 0.0 <= cfg[field] < 1.0:
      raise ValueError(f"model config {field} must be in [0, 1); got {cfg[field]}")
  if cfg.width is not None and cfg.width <= 0:
    raise ValueError(f"model config width must be positive; got {cfg.width}")
  return Encoder(
      backbone=build(cfg, dtype, platform), embedding_dim=cfg.embedding_dim,
      normalize=cfg.normalize, input_norm=cfg.input_norm, in_channels=cfg.in_channels,
      pooling=pooling, attention=attention, attention_tokens=cfg.attention_tokens,
      attention_heads=cfg.attention_heads, attention_reduction=cfg.attention_reduction,
      dropout_rate=cfg.dropout_rate, projection_depth=cfg.projection_depth,
      projection_hidden_dim=cfg.projection_hidden_dim, projection_dim=cfg.projection_dim,
      dtype=dtype)


def get_pair_head(model_config) -> PairHead:
  """The Siamese `PairHead` (params under "pair_head" in the train state)."""
  _check("pair_head", model_config.pair_head, PAIR_HEAD_MODES)
  return PairHead(model_config.pair_head)
