"""sim_jax.graph: a GNN over icon relations that refines embeddings at evaluation.

  relations.py   graphs: freedesktop name relations (parent, shared token), k-NN, A_hat
  gnn.py         GCNLayer, GraphRefiner (a two-layer residual GCN in Flax), its SupCon fit
  evaluate.py    the protocol: fit on the train split, refine every evaluated split over its
                 k-NN graph, score with the configured evaluators (`eval.graph.*`)
  config.py      `config.eval.graph` defaults

This file imports nothing, so `sim_jax.graph.config` stays cheap to import from configs.
"""
