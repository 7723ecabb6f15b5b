"""sim_jax.losses: pure, documented, jit/grad/vmap-safe similarity-learning losses.

Dense forms live here; `block_size=...` dispatches the all-pairs losses to their streaming forms
(`infonce_streaming`, `triplet_streaming`, on the blockwise sweep of `sweep`; across devices
`distributed`). Semantics where the literature disagrees: docs/losses.md.
"""

from sim_jax.losses.adaptive_margin import adaptive_margin_contrastive
from sim_jax.losses.classification import linear_logits, softmax_ce
from sim_jax.losses.config import default_config
from sim_jax.losses.diagnostics import diagnostics
from sim_jax.losses.infonce import (
  nt_xent,
  nt_xent_pairs,
  nt_xent_stats,
  nt_xent_stats_dense,
  supcon,
  supcon_stats,
  supcon_stats_dense,
)
from sim_jax.losses.manifold import manifold, random_meta_classes
from sim_jax.losses.margin_softmax import (
  arcface,
  cosface,
  large_margin_softmax,
  normalized_softmax,
  sphereface,
  subcenter_arcface,
)
from sim_jax.losses.pairwise import (
  contrastive,
  cosine_similarity_matrix,
  learnable_margin_contrastive,
  margin_from_raw,
  pair_bce,
  pairwise_distances,
  raw_from_margin,
  sigmoid_contrastive,
)
from sim_jax.losses.pools import pool_triplet
from sim_jax.losses.proxy import proxy_anchor, proxy_nca, soft_triple
from sim_jax.losses.ranked import (
  dynamic_soft_margin,
  fast_ap,
  histogram,
  p2sgrad,
  pnp,
  ranked_list,
)
from sim_jax.losses.ranking import recall_at_k_surrogate, snr_contrastive, snr_distance_matrix
from sim_jax.losses.ssl import barlow_twins, vicreg
from sim_jax.losses.triplet import triplet, triplet_stats, triplet_stats_dense
from sim_jax.losses.tuple_losses import (
  angular,
  centroid_triplet,
  circle,
  distance_weighted_negatives,
  generalized_lifted_structure,
  instance_loss,
  intra_pair_variance,
  lifted_structure,
  margin_loss,
  multi_similarity,
  nca,
  npairs,
  threshold_consistent_margin,
  tuplet_margin,
)
from sim_jax.losses.two_tower import clip_infonce, siglip
from sim_jax.numerics import l2_normalize

__all__ = [
  "adaptive_margin_contrastive",
  "arcface",
  "angular",
  "barlow_twins",
  "centroid_triplet",
  "circle",
  "clip_infonce",
  "contrastive",
  "cosface",
  "cosine_similarity_matrix",
  "default_config",
  "diagnostics",
  "distance_weighted_negatives",
  "dynamic_soft_margin",
  "fast_ap",
  "generalized_lifted_structure",
  "histogram",
  "instance_loss",
  "intra_pair_variance",
  "l2_normalize",
  "large_margin_softmax",
  "learnable_margin_contrastive",
  "lifted_structure",
  "linear_logits",
  "manifold",
  "margin_from_raw",
  "normalized_softmax",
  "margin_loss",
  "multi_similarity",
  "nca",
  "npairs",
  "nt_xent",
  "nt_xent_pairs",
  "nt_xent_stats",
  "nt_xent_stats_dense",
  "p2sgrad",
  "pair_bce",
  "pairwise_distances",
  "pool_triplet",
  "proxy_anchor",
  "proxy_nca",
  "pnp",
  "ranked_list",
  "raw_from_margin",
  "recall_at_k_surrogate",
  "siglip",
  "sigmoid_contrastive",
  "snr_contrastive",
  "snr_distance_matrix",
  "soft_triple",
  "softmax_ce",
  "sphereface",
  "subcenter_arcface",
  "supcon",
  "supcon_stats",
  "supcon_stats_dense",
  "threshold_consistent_margin",
  "triplet",
  "triplet_stats",
  "triplet_stats_dense",
  "tuplet_margin",
  "vicreg",
  "random_meta_classes",
]
