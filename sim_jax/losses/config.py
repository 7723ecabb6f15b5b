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
  c.margin_reward = 0.0              # learnt contrastive margin: loss - margin_reward * m
  c.squared = True                   # contrastive: Hadsell squared form (False: hinge form)
  c.adaptive_margin_min = 0.1        # adaptive_margin_contrastive: floor m_min of class margins
  c.adaptive_margin_reward = 0.1     # adaptive_margin_contrastive: margin reward lambda
  c.distance = "euclidean"           # euclidean | squared_euclidean (triplet) | cosine
  c.mining = "batch_hard"            # triplet: batch_hard | semi_hard | batch_all | semi_hard_pml
  c.soft = False                     # triplet: softplus(d_ap - d_an) instead of the hinge
  c.block_size = config_dict.placeholder(int)  # None: dense; int: streaming blocks (proxy: classes)
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
  c.num_classes = config_dict.placeholder(int)  # softmax_ce / proxy losses: C (None: the dataset's)
  # Proxy and classification-margin losses (None: the paper's value, objective.CLASS_DEFAULTS).
  c.class_margin = config_dict.placeholder(float)  # arcface m (rad), cosface m, proxy_anchor delta
  c.class_scale = config_dict.placeholder(float)  # logit scale s; proxy_anchor: alpha
  c.centers_per_class = config_dict.placeholder(int)  # subcenter_arcface / soft_triple: K
  c.angle_multiplier = 4             # large_margin_softmax / sphereface: integer m of psi(theta)
  c.soft_triple_gamma = 0.1          # soft_triple: gamma, softmax temperature over a class's K
  c.soft_triple_tau = 0.0            # soft_triple: centre regulariser weight (paper 0.2; pml 0)
  # manifold (Aziere & Todorovic 2019; pml ManifoldLoss defaults): K proxies (not per class),
  # each sample's proxy drawn per step from the step's key; margin: class_margin (5e-4).
  c.manifold_proxies = 50
  c.manifold_lambda_c = 1.0          # weight of the context term
  c.manifold_alpha = 0.8             # random-walk parameter, in (0, 1)
  c.diagnostics_margin = 0.2         # margin of the active-triplet fraction in diagnostics()
  # A miner (sim_jax.losses.miners) that selects the pairs / triplets of the pair and triplet
  # losses (every loss whose fields list "miner", objective.MINED_LOSSES).
  c.miner = ml_collections.ConfigDict()
  c.miner.name = "none"              # none | multi_similarity | pair_margin | hdc |
  #                                    batch_easy_hard | triplet_margin | angular |
  #                                    uniform_histogram | distance_weighted | maximum_loss
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
  c.miner.cutoff = 0.5               # distance_weighted: distances clamped below at this
  c.miner.nonzero_loss_cutoff = 1.4  # distance_weighted: weight 0 at distances >= this
  c.miner.num_bins = 100             # uniform_histogram: equal-width distance bins
  c.miner.pos_per_bin = 10           # uniform_histogram: positive pairs drawn per bin
  c.miner.neg_per_bin = 10           # uniform_histogram: negative pairs drawn per bin
  c.miner.output_batch_size = config_dict.placeholder(int)  # maximum_loss: rows (None: M // 2)
  c.miner.num_trials = 5             # maximum_loss: random row subsets scored by the loss
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
  c.dsm_num_bins = 10                # dynamic_soft_margin: histogram bins of d_ap - d_an
  c.dsm_min_val = -2.0               # dynamic_soft_margin: left end of the histogram (< 0)
  c.lock()
  return c
