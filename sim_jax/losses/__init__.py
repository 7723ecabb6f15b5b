"""sim_jax.losses: pure, documented, jit/grad/vmap-safe similarity-learning losses.

Dense forms live here; `block_size=...` dispatches the all-pairs losses to their streaming forms
(`infonce_streaming`, `triplet_streaming`, on the blockwise sweep of `sweep`; across devices
`distributed`). Semantics where the literature disagrees: docs/losses.md.
"""

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
from sim_jax.losses.ranking import recall_at_k_surrogate, snr_contrastive, snr_distance_matrix
from sim_jax.losses.triplet import triplet, triplet_stats, triplet_stats_dense
from sim_jax.losses.two_tower import clip_infonce, siglip
from sim_jax.numerics import l2_normalize

__all__ = [
  "clip_infonce",
  "contrastive",
  "cosine_similarity_matrix",
  "default_config",
  "diagnostics",
  "l2_normalize",
  "learnable_margin_contrastive",
  "linear_logits",
  "margin_from_raw",
  "nt_xent",
  "nt_xent_pairs",
  "nt_xent_stats",
  "nt_xent_stats_dense",
  "pair_bce",
  "pairwise_distances",
  "raw_from_margin",
  "recall_at_k_surrogate",
  "siglip",
  "sigmoid_contrastive",
  "snr_contrastive",
  "snr_distance_matrix",
  "softmax_ce",
  "supcon",
  "supcon_stats",
  "supcon_stats_dense",
  "triplet",
  "triplet_stats",
  "triplet_stats_dense",
]
