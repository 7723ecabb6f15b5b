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
  c.mining = "batch_hard"            # triplet: batch_hard | semi_hard | batch_all | semi_hard_pml
  c.soft = False                     # triplet: softplus(d_ap - d_an) instead of the hinge
  c.block_size = config_dict.placeholder(int)  # None: dense; int: streaming blocks (proxy: classes)
  c.pos_margin = 0.0                 # snr_contrastive: positive pairs are penalised above this
  c.snr_regularization = 0.0         # snr_contrastive: weight of Yuan et al.'s zero-mean term
  c.k_values = (1, 2, 4, 8, 16)      # recall_at_k_surrogate: the k averaged over
  c.rank_temperature = 0.01          # recall_at_k_surrogate: tau2, sigmoid of the smooth rank
  c.k_temperature = 1.0              # recall_at_k_surrogate: tau1, sigmoid of k - rank
  c.siglip_bias = -10.0              # siglip: initial learnable bias b (Zhai et al. 2023)
  c.siglip_log_temperature = 2.302585  # siglip: initial learnable log t' = log(10) (paper init)
  c.num_classes = config_dict.placeholder(int)  # softmax_ce / proxy losses: C (None: the dataset's)
  # Proxy and classification-margin losses (None: the paper's value, objective.CLASS_DEFAULTS).
  c.class_margin = config_dict.placeholder(float)  # arcface m (rad), cosface m, proxy_anchor delta
  c.class_scale = config_dict.placeholder(float)  # logit scale s; proxy_anchor: alpha
  c.centers_per_class = config_dict.placeholder(int)  # subcenter_arcface / soft_triple: K
  c.angle_multiplier = 4             # large_margin_softmax / sphereface: integer m of psi(theta)
  c.soft_triple_gamma = 0.1          # soft_triple: gamma, softmax temperature over a class's K
  c.soft_triple_tau = 0.0            # soft_triple: centre regulariser weight (paper 0.2; pml 0)
  c.diagnostics_margin = 0.2         # margin of the active-triplet fraction in diagnostics()
  # A miner (sim_jax.losses.miners) that selects the pairs / triplets of triplet and contrastive.
  c.miner = ml_collections.ConfigDict()
  c.miner.name = "none"              # none | multi_similarity | pair_margin | hdc |
  #                                    batch_easy_hard | triplet_margin | angular
  c.miner.distance = "euclidean"     # the miner's distance: euclidean | squared_euclidean | cosine
  c.miner.epsilon = 0.1              # multi_similarity
  c.miner.pos_margin = 0.2           # pair_margin: positives with d > pos_margin
  c.miner.neg_margin = 0.8           # pair_margin: negatives with d < neg_margin
  c.miner.filter_percentage = 0.5    # hdc: fraction of the hardest pairs kept
  c.miner.pos_strategy = "easy"      # batch_easy_hard: easy | hard | semihard | all
  c.miner.neg_strategy = "semihard"  # batch_easy_hard: hard | easy | semihard | all
  c.miner.margin = 0.2               # triplet_margin
  c.miner.type_of_triplets = "all"   # triplet_margin: all | hard | semihard | easy
  c.miner.angle = 20.0               # angular: degrees
  c.lock()
  return c
