"""Default `config.model` section: every field `sim_jax.models` reads (imports nothing heavy)."""

import ml_collections
from ml_collections import config_dict


def default_config() -> ml_collections.ConfigDict:
  """The model sub-config; `configs/default.py` embeds it as `config.model` and overrides fields.

  Fields left as typed placeholders (`None`) mean "the family default" (documented per field), so
  one config works for every backbone and each override stays type-checked.
  """
  c = ml_collections.ConfigDict()
  c.name = "resnet18"  # backbone name; `sim_jax.models.MODEL_NAMES` lists the valid ones.
  c.in_channels = config_dict.placeholder(int)  # expected image channels (None: from the params).
  c.embedding_dim = 128  # size E of the embedding Dense after pooling; 0 = pooled features as is.
  c.normalize = True  # L2-normalise the returned embeddings.
  c.input_norm = "imagenet"  # "imagenet": (x - mean) / std inside the model; "none": as given.
  c.width = config_dict.placeholder(int)  # base channel width (None: family default, e.g. 64).
  c.stem = "auto"  # ResNet stem: "auto" (H < 128 -> "small", else "imagenet"), "small", "imagenet".
  c.pooling = config_dict.placeholder(str)  # "avg" | "max" | "cls" | "mean" (None: family default).
  c.attention = config_dict.placeholder(str)  # "none" | "before" | "after" (None: family default).
  c.attention_tokens = 8  # "after" attention splits the embedding into this many tokens.
  c.attention_heads = 4  # heads of the "after" self-attention.
  c.attention_reduction = 8  # channel-attention MLP reduction ratio of "before" attention.
  c.patch_size = 16  # ViT / Swin patch size (pixels).
  c.dropout_rate = 0.0  # dropout before the embedding Dense and inside transformer MLPs.
  c.stochastic_depth = 0.0  # drop-path rate of the last block (linear in depth), transformers.
  c.projection_depth = 0  # SimCLR projection MLP layers (0 = none; output in aux["projection"]).
  c.projection_hidden_dim = 512  # hidden width of the projection MLP.
  c.projection_dim = 128  # output width of the projection MLP.
  c.multiscale_kernels = (1, 3, 5)  # multiscale: the parallel branches' kernel sizes (odd).
  c.multiscale_stages = 3  # multiscale: multi-scale blocks (widths w, 2w, 4w, ...).
  c.pair_head = "abs_diff"  # PairHead mode: "abs_diff" (Dense on |e1 - e2|) or "euclidean".
  c.dtype = "float32"  # compute dtype "float32" | "bfloat16" (params stay float32).
  c.remat = False  # wrap blocks in nn.remat (recompute activations in the backward pass).
  # ResNet: each ReLU output written to its own buffer, so XLA does not re-compute batch norm
  # chains inside the weight gradients' layout copies. "auto" = on on CPU (where it pays).
  c.materialize = "auto"  # "auto" | "on" | "off"
  c.init_from = ""  # workdir / checkpoint to initialise the encoder from ("" = none).
  return c
