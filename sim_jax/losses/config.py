"""The `config.loss` section the trainer reads: which loss, and every hyper-parameter it takes."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def default_config() -> ml_collections.ConfigDict:
  """Defaults for `config.loss`; experiment configs override only what differs."""
  c = ml_collections.ConfigDict()
  c.name = "nt_xent"                 # a name of the loss table, losses.objective.NAMES
  c.temperature = 0.1                # t of nt_xent / supcon / clip_infonce (> 0)
  c.learnable_temperature = False    # trainer keeps raw t in params["loss"], uses softplus(raw)
  c.margin = 1.0                     # contrastive margin m; snr neg_margin; triplet configs set 0.2
  c.learnable_margin = False         # trainer keeps raw m in params["loss"], uses softplus(raw)
  c.squared = True                   # contrastive: Hadsell squared form (False: hinge form)
  c.distance = "euclidean"           # euclidean | squared_euclidean (triplet) | cosine
  c.mining = "batch_hard"            # triplet mining: batch_hard | semi_hard | batch_all
  c.soft = False                     # triplet: softplus(d_ap - d_an) instead of the hinge
  c.block_size = config_dict.placeholder(int)  # None: dense; an int: streaming in such blocks
  c.pos_margin = 0.0                 # snr_contrastive: positive pairs are penalised above this
  c.snr_regularization = 0.0         # snr_contrastive: weight of Yuan et al.'s zero-mean term
  c.k_values = (1, 2, 4, 8, 16)      # recall_at_k_surrogate: the k averaged over
  c.rank_temperature = 0.01          # recall_at_k_surrogate: tau2, sigmoid of the smooth rank
  c.k_temperature = 1.0              # recall_at_k_surrogate: tau1, sigmoid of k - rank
  # recall_at_k_surrogate: None = dense O(N^3); M = rank only each query's first M positives,
  # O(N^2 M), exact when no query has more (P x K batches: K - 1); large batches need it.
  c.max_positives = config_dict.placeholder(int)
  c.siglip_bias = -10.0              # siglip: initial learnable bias b (Zhai et al. 2023)
  c.siglip_log_temperature = 2.302585  # siglip: initial learnable log t' = log(10) (paper init)
  c.num_classes = config_dict.placeholder(int)  # softmax_ce: C logits (None: the dataset's)
  c.diagnostics_margin = 0.2         # margin of the active-triplet fraction in diagnostics()
  c.lock()
  return c
