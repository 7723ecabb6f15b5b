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
  c.siglip_bias = -10.0              # siglip: initial learnable bias b (Zhai et al. 2023)
  c.siglip_log_temperature = 2.302585  # siglip: initial learnable log t' = log(10) (paper init)
  c.num_classes = config_dict.placeholder(int)  # softmax_ce: C logits (None: the dataset's)
  c.diagnostics_margin = 0.2         # margin of the active-triplet fraction in diagnostics()
  # Pair and tuple losses (losses.tuple_losses / ranked / ssl; docs/losses.md). margin_loss and
  # centroid_triplet read `margin` above; the all-pairs ones read `block_size`.
  c.ms_alpha = 2.0                   # multi_similarity: positive scale alpha (> 0)
  c.ms_beta = 50.0                   # multi_similarity: negative scale beta (> 0)
  c.ms_base = 0.5                    # multi_similarity: similarity shift lambda
  c.circle_m = 0.4                   # circle: relaxation m
  c.circle_gamma = 80.0              # circle: scale gamma (> 0)
  c.lifted_neg_margin = 1.0          # (generalized_)lifted_structure: negative margin
  c.lifted_pos_margin = 0.0          # (generalized_)lifted_structure: positive margin
  c.tuplet_margin_degrees = 5.73     # tuplet_margin: angular margin beta, degrees
  c.tuplet_scale = 64.0              # tuplet_margin: scale s
  c.margin_beta = 1.2                # margin_loss: boundary beta (the margin alpha is `margin`)
  c.angular_alpha = 40.0             # angular: angle alpha, degrees
  c.nca_scale = 1.0                  # nca: softmax scale on squared distances
  c.instance_gamma = 64.0            # instance_loss: scale gamma
  c.ipv_eps = 0.01                   # intra_pair_variance: pos_eps = neg_eps
  c.tcm_margin_plus = 0.9            # threshold_consistent_margin: positive margin m+
  c.tcm_margin_minus = 0.5           # threshold_consistent_margin: negative margin m-
  c.fast_ap_bins = 10                # fast_ap: number of distance bins
  c.histogram_bins = 100             # histogram: number of similarity bins
  c.rll_margin = 0.4                 # ranked_list: margin m (alpha = 1 + m / 2)
  c.rll_t_neg = 10.0                 # ranked_list: negative weighting temperature T_n
  c.rll_imbalance = 0.5              # ranked_list: weight of the negative term, in [0, 1]
  c.pnp_variant = "O"                # pnp: O | Ds | Dq | Iu | Ib
  c.pnp_anneal = 0.01                # pnp: sigmoid temperature (> 0)
  c.vicreg_weights = (25.0, 25.0, 1.0)  # vicreg: (invariance, variance, covariance) weights
  c.barlow_lambda = 0.0051           # barlow_twins: off-diagonal weight
  c.lock()
  return c
