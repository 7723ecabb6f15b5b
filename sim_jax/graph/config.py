"""Default `config.eval.graph`: the GNN refinement of `--mode=evaluate` (imports nothing heavy)."""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The graph sub-config; `sim_jax/eval/config.py` places it at `config.eval.graph`."""
  c = ml_collections.ConfigDict()
  # Graph the GNN is FIT on (fit_split): comma-separated of "knn" (k-NN over the embeddings),
  # "parent" (folder-music -> folder), "token" (shared first name token); "none" = no GNN.
  # Evaluated splits are refined over their k-NN graph only (no names: see sim_jax/graph).
  c.relations = "none"
  c.k = 10  # neighbours per node of the k-NN graph (cosine similarity).
  c.hidden = 128  # hidden width of the two-layer GCN.
  c.steps = 200  # full-batch Adam steps of the fit.
  c.learning_rate = 1e-2  # Adam learning rate of the fit.
  c.temperature = 0.1  # SupCon temperature of the fit.
  c.fit_split = "train"  # the split (with class names) the GNN is trained on.
  c.seed = 0  # initialisation seed of the GCN.
  return c
