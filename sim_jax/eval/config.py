"""Default `config.eval`: every field `sim_jax.eval` reads (nothing heavy imported here)."""

import ml_collections

from sim_jax.graph import config as graph_config


def default_config() -> ml_collections.ConfigDict:
  """The evaluation sub-config; `configs/default.py` places it at `config.eval`."""
  c = ml_collections.ConfigDict()
  # Comma-separated protocols run by get_evaluators:
  # retrieval, knn, pool, verification, fewshot, zeroshot.
  c.protocols = "retrieval,knn"
  # Distance used by every protocol: euclidean | cosine | dot (kl | reverse_kl | cross_entropy
  # for classifier logits; retrieval only).
  c.metric = "euclidean"
  # Gallery rows scored at a time by the exact search (memory ~ query_block_size * block_size).
  c.block_size = 8192
  # Queries scored at a time by the exact search.
  c.query_block_size = 2048

  # Retrieval: queries come from query_split; gallery_split "" means the query split itself
  # (each query excluded from its own ranking).
  c.query_split = "test"
  c.gallery_split = ""
  # The k of recall@k and mrr@k.
  c.ks = (1, 5)

  # Validation retrieval (protocol "validation", metrics "validation/..."): the retrieval metrics
  # of validation_query_split against validation_gallery_split ("" = itself), to choose settings
  # and checkpoints (best_metric) without looking at the reported query split.
  c.validation_query_split = "validation"
  c.validation_gallery_split = ""

  # k-NN classification: neighbours are searched in knn_train_split for each query_split row.
  c.knn_train_split = "train"
  c.knn_k = 5

  # Pool ranking (seed 003): the true match among 1 + pool_num_foils candidates, hit if in top.
  c.pool_num_foils = 19
  c.pool_top = 2
  c.pool_seed = 0
  # "labels": pools from query_split's labels; "pairs": row i of pool_left_split matches row i of
  # pool_right_split; "cross": queries from pool_left_split, the true match and foils from
  # pool_right_split (icon_themes: heldout_query vs heldout, so across design families).
  c.pool_mode = "labels"
  c.pool_left_split = "left"
  c.pool_right_split = "right"

  # Verification: balanced same/different pairs sampled from each split; the threshold is fit on
  # verification_val_split (max accuracy) and applied to query_split.
  c.verification_val_split = "validation"
  c.verification_num_pairs = 2000
  c.verification_seed = 0

  # Few-shot: N-way K-shot episodes on query_split's classes (query_split "heldout": concepts
  # never trained on), for every K of fewshot_k_shots and every method of fewshot_methods:
  # "prototype" (class means) and "finetune" (a linear head started at the prototypes and
  # fine-tuned on the K shots by fewshot_finetune_steps gradient steps of fewshot_finetune_lr);
  # see sim_jax/eval/fewshot.py. Each class needs K + fewshot_n_query examples.
  c.fewshot_n_way = 5
  c.fewshot_k_shots = (1, 5)
  c.fewshot_methods = "prototype,finetune"
  c.fewshot_n_query = 5
  c.fewshot_num_episodes = 200
  c.fewshot_seed = 0
  c.fewshot_finetune_steps = 100
  c.fewshot_finetune_lr = 1.0

  # Zero-shot: retrieval within zeroshot_split restricted to classes absent from
  # zeroshot_train_split's labels (when that split is given).
  c.zeroshot_split = "heldout"
  c.zeroshot_train_split = "train"
  # k of the leave-one-out k-NN F1 within the zero-shot classes (zeroshot/knn_f1_macro); 0: off.
  c.zeroshot_knn_k = 0
  # At most this many examples of each zero-shot class, the same ones for every model (0: all).
  c.zeroshot_max_per_class = 0

  # Robust pair accuracy (sim_jax/eval/robust.py): the verification rule on robust_num_pairs
  # query_split pairs attacked by each of these ("fgsm,pgd"; "" = off) with
  # config.train.adversarial's epsilon / steps / step_size.
  c.robust_attacks = ""
  c.robust_num_pairs = 256

  # --mode=evaluate of an ensemble (sim_jax/models/ensemble.py): comma-separated workdirs of
  # runs of one model config (also --ensemble=...); their L2-normalised embeddings are combined by
  # ensemble_mode: "concat" (/ sqrt(M)) or "mean" (renormalised).
  c.ensemble = ""
  c.ensemble_mode = "concat"

  # --mode=evaluate: before scoring, re-estimate batch norm's running statistics with this many
  # train-mode forward passes over training batches, the weights fixed ("precise BN"; 0: the
  # checkpoint's own statistics). sim_jax/inference.py `recalibrate_batch_norm`.
  c.batch_norm_recalibration_batches = 0

  # Metric that picks the best checkpoint, and whether larger (max) or smaller (min) is better.
  c.best_metric = "retrieval/mrr@5"
  c.best_mode = "max"
  # GNN refinement of the embeddings before every protocol, --mode=evaluate only (sim_jax/graph).
  c.graph = graph_config.default_config()
  return c
