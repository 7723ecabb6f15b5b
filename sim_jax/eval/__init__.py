"""sim_jax.eval: retrieval / verification / k-NN / few-shot metrics, exact blockwise search, plots.

Modules (import the one you need; `plots` pulls matplotlib, the others only NumPy and JAX):
  search        exact blockwise top-k (`topk`), sharded over devices when there are several
  retrieval     MRR@k, Recall@k, Precision@1, R-Precision, MAP@R (`retrieval_metrics`)
  pools         top-k accuracy of the true match among 1 + k foils (seed 003)
  verification  pair accuracy / precision / recall / F1 / ROC-AUC, threshold fit on validation
  knn           k-NN classification accuracy and macro F1 (seed 004)
  fewshot       N-way K-shot episodes, prototype classification
  distances     Euclidean, cosine, KL, cross-entropy (seed 001, Table 1)
  evaluators    `get_evaluators(config.eval)`: one object per protocol for the trainer / launch
  plots         t-SNE, retrieval grids, training curves, distance histograms (PNG)
  config        `default_config()` of `config.eval`
"""
