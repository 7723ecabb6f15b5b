"""Seed 000: Siamese icon recognition with a multi-scale encoder (SimCLR, attention, losses).

Reproduces seed 000's Table 1 and its loss comparison (section 3.4) on `icon_themes`: a class is
a freedesktop icon name, an example that name drawn by one design family (22 families of
human-designed themes); a positive pair is two families' drawings of one icon name, a negative
two names. A Siamese network with the `multiscale` encoder (parallel 1x1 / 3x3 / 5x5 branches,
32 x 32 RGB input) and a pair head (Dense on |e1 - e2| -> logit) trained with binary
cross-entropy on balanced pairs. Report: docs/experiments/icons.md.

  python launch.py --config=configs/icons.py --workdir=runs/icons

Splits (the class split of docs/data_floors.sh, built at 32 px: 1,204 names drawn by >= 5
families, 25% of the names held out, 10% validation names, oxygen + paper drawings are the
query families):
  train       3,912 drawings of the train names (gallery families): the labelled pairs
  validation  775 drawings of names disjoint from train: settings and the fitted thresholds
  heldout     1,872 drawings of names never trained on: the final numbers only
Metrics (HEADLINE), on balanced pairs (`eval.verification_num_pairs` per split):
  verification/fixed_{accuracy,precision,recall}_<split>   the seed's rule, sigmoid(head) > 0.5
  verification/head_fit_{accuracy,precision,recall}_<split> the head logit, threshold fit on
                                                            validation pairs
  verification/head_roc_auc_<split>                        ROC-AUC of the head logit
  verification/{accuracy,roc_auc}   the Euclidean distance of the embeddings, threshold fit on
                                    validation, on heldout pairs: one protocol for every loss
                                    (it has chance / raw-pixel / random-init floors)

Ablations (one command each; docs/experiments/icons.md has the results):
  python ablate.py --config=configs/icons.py --ablation=table1 --workdir=runs/icons_table1 --seeds=3
  python ablate.py --config=configs/icons.py --ablation=losses --workdir=runs/icons_losses --seeds=3
  python ablate.py --config=configs/icons.py --ablation=budget --workdir=runs/icons_budget

  table1  (MEASURED_BUDGET: 1,200 steps) the seed's Table 1 chain: bce_scratch | simclr
          (pretraining only, no pair head) | simclr_bce (Siamese BCE from simclr's encoder) |
          simclr_bce_attn_after | ..._before. SimCLR runs once per seed; the three fine-tunings
          start from it (`{run:simclr}`).
  losses  one protocol (MEASURED_BUDGET: 1,200 steps), four objectives: pair_bce | contrastive
          (fixed margin 1) | contrastive_learnable (the margin learnt, kept from collapsing by a
          margin reward, see `sim_jax.losses.pairwise.learnable_margin_contrastive`) | nt_xent
          (labelled positives: two drawings of one name).
  budget  encoder width (4 | 8 | 16) x steps (300 | 1,200 | 3,000) of bce_scratch, seed 0: the
          setting chosen on validation pairs (icons.md "Budget").

SimCLR sees a larger unlabelled pool than the labelled pairs: `train+test+query+unlabelled`
(28,769 drawings, no labels used) against the 3,912 `train` drawings the pairs come from. That is
every drawing of the train names (all families: 5,551) plus the `unlabelled` split of a build
with `data.unlabelled_min_families=1`: every drawing of the 15,436 names drawn by 1-4 families
(23,218), names that are in no labelled split. The validation and heldout names are never in it.

Issue 26's techniques, each an ablation on the same base (results: icons.md "Issue 26"):
  adversarial     clean | fgsm | pgd (sim_jax/adversarial.py), each scored on FGSM / PGD
                  attacked pairs (robust/*)
  ensemble        seed0..8 | ensemble_{concat,mean}[_345,_678] (--ensemble, models/ensemble.py)
  gnn             base | gnn_knn | gnn_names: a GCN (sim_jax/graph) fit on the train split's k-NN
                  graph (+ the icon-name relations) refines the embeddings at evaluation
  nas             hand_designed | searched: the best of a 12-trial Optuna search on validation
                  (experiments.search; docs/experiments/icons_nas.md)
  fewshot         bce | prototype | finetune: 5-way K-shot episodes of heldout names, K = 1, 5
  margins         fixed | learnable | adaptive (per-class, losses/adaptive_margin.py)

  python ablate.py --config=configs/icons.py --ablation=adversarial --workdir=runs/icons_adversarial
  python ablate.py --config=configs/icons.py --ablation=ensemble --workdir=runs/icons_ensemble
  python ablate.py --config=configs/icons.py --ablation=gnn --workdir=runs/icons_gnn
  python ablate.py --config=configs/icons.py --ablation=nas --workdir=runs/icons_nas
  python ablate.py --config=configs/icons.py --ablation=fewshot --workdir=runs/icons_fewshot
  python ablate.py --config=configs/icons.py --ablation=margins --workdir=runs/icons_margins

Differs from the paper, and why:
- Data: the paper's icon set is not public; icon_themes is the offline stand-in.
- Size: 32 px, a width-4 multi-scale encoder, 300 steps of 32 pairs (a few minutes on the
  shared 2-core host, so 9 variants x 3 seeds fit the budget): absolute numbers are lower than a
  long GPU run's.
"""

from configs import default
from sim_jax.experiments import Ablation, Variant

HEADLINE = ("verification/fixed_accuracy_validation", "verification/fixed_precision_validation",
            "verification/fixed_recall_validation", "verification/fixed_accuracy_train",
            "verification/fixed_precision_train", "verification/fixed_recall_train",
            "verification/head_fit_accuracy_train", "verification/head_roc_auc_validation",
            "verification/fixed_accuracy_heldout", "verification/accuracy",
            "verification/roc_auc")

# SimCLR's unlabelled pool: every drawing of the train names (all families) and of the names
# drawn by fewer than min_families families (`unlabelled`, sim_jax/data/builders/icon_themes.py).
UNLABELLED_SPLIT = "train+test+query+unlabelled"
UNLABELLED_MIN_FAMILIES = 1  # every name, even one drawn by a single family


def get_config():
  config = default.get_config()
  config.data.name = "icon_themes"
  # 32 px, not the 64 px of docs/data.md's floors: a 64 px step took 4.4x as long on the shared
  # 2-core host (docs/experiments/icons.md "Budget"), and 3 seeds x 9 variants must fit.
  config.data.image_size = 32
  config.data.max_classes = 100000  # every name drawn by >= 5 families (1,207)
  config.data.heldout_class_fraction = 0.25
  config.data.validation_class_fraction = 0.1
  config.data.eval_splits = ("train", "validation", "heldout")
  config.data.sampler = "pairs"  # balanced positive / negative pairs (Siamese training)
  config.data.pos_fraction = 0.5
  # The seed's "robust data augmentation": mild crops and colour jitter of the RGB drawings.
  config.data.augment.name = "simclr"
  config.data.augment.strength = 0.5
  config.data.augment.min_scale = 0.6

  config.model.name = "multiscale"
  config.model.width = 4  # measured: see docs/experiments/icons.md "Encoder width"
  config.model.attention = "none"  # Table 1's first rows; the attention rows set it
  config.model.embedding_dim = 64
  config.model.pair_head = "abs_diff"  # Dense on |e1 - e2| -> same/different logit

  config.loss.name = "pair_bce"

  config.optimizer.learning_rate = 1e-3

  config.train.steps = 300
  config.train.batch_size = 32  # pairs: 64 images per step
  config.train.log_every = 25
  config.train.eval_every = 0  # one evaluation, at the end: an eval embeds 6,549 images
  config.train.checkpoint_every = 100
  config.train.plots = False  # t-SNE / retrieval grid: once, for the report's run
  config.optimizer.warmup_steps = 30

  config.eval.protocols = "verification"
  config.eval.metric = "euclidean"
  config.eval.query_split = "heldout"  # final numbers: names never trained on
  config.eval.verification_val_split = "validation"
  config.eval.verification_num_pairs = 4000
  config.eval.best_metric = "verification/accuracy"
  return config


# SimCLR pretraining: two augmented views per image, positives = the two views of one image (no
# labels used), a projection MLP on top of the encoder that fine-tuning drops.
SIMCLR = {
    "data.train_split": UNLABELLED_SPLIT,
    "data.unlabelled_min_families": UNLABELLED_MIN_FAMILIES,
    "data.sampler": "views",
    "train.view_labels": "index",
    "train.batch_size": 32,  # images: 64 views per step, like the 32 pairs of the BCE runs
    "loss.name": "nt_xent",
    "loss.temperature": 0.2,
    "data.augment.strength": 1.0,
    "data.augment.min_scale": 0.4,  # an icon cropped to 20% of its area is often unrecognisable
    "model.projection_depth": 2,
    "model.projection_dim": 64,
    "model.projection_hidden_dim": 128,
}
FROM_SIMCLR = {"model.init_from": "{run:simclr}"}

# The length `ablation=budget` chose on validation pairs (icons.md "Budget"): width 4 (the base),
# 1,200 steps, the cheapest cell within 0.01 of the best; checkpoints as in that ablation.
MEASURED_BUDGET = {"train.steps": 1200, "train.checkpoint_every": 300}


def _at_budget(variants):
  return [Variant(v.label, {**MEASURED_BUDGET, **v.overrides}) for v in variants]


def get_ablations():
  return {
      "table1": _at_budget([
          Variant("bce_scratch", {}),
          Variant("simclr", SIMCLR),
          Variant("simclr_bce", FROM_SIMCLR),
          Variant("simclr_bce_attn_after", {**FROM_SIMCLR, "model.attention": "after"}),
          Variant("simclr_bce_attn_before", {**FROM_SIMCLR, "model.attention": "before"}),
      ]),
      "losses": _at_budget([
          Variant("pair_bce", {}),
          Variant("contrastive", {"loss.name": "contrastive", "loss.margin": 1.0}),
          # The margin starts at 1 and is learnt; the reward lambda = 0.05 stops it where the
          # negatives' mean hinge violation is 0.05 per pair (0.1 per negative pair).
          Variant("contrastive_learnable", {"loss.name": "learnable_margin_contrastive",
                                            "loss.margin": 1.0, "loss.margin_reward": 0.05}),
          # Labelled positives: P x K = 32 names x 2 drawings = the 64 images of 32 pairs.
          Variant("nt_xent", {"loss.name": "nt_xent", "loss.temperature": 0.2,
                              "data.sampler": "pk", "data.examples_per_class": 2,
                              "train.batch_size": 64}),
      ]),
      # The training budget, measured on validation (issue 23: "a width that actually learns
      # within the CPU budget"): encoder width x steps for the first row of Table 1, seed 0 only
      # (a choice of setting, not a claim); docs/experiments/icons.md "Budget" reads it.
      "budget": Ablation([
          Variant(f"w{width}_s{steps}", {"model.width": width, "train.steps": steps,
                                         "train.checkpoint_every": max(100, steps // 4)})
          for steps in BUDGET_STEPS for width in BUDGET_WIDTHS
      ], seeds=(0,)),
      # Adversarial training (sim_jax/adversarial.py; half of each batch replaced, epsilon 8 of
      # 255, PGD: 7 steps of 2), every variant also scored on pairs attacked by FGSM and PGD
      # (robust/*, sim_jax/eval/robust.py).
      "adversarial": Ablation([
          Variant(label, {"train.adversarial.method": method, "eval.robust_attacks": "fgsm,pgd"})
          for label, method in (("clean", "none"), ("fgsm", "fgsm"), ("pgd", "pgd"))
      ], seeds=(0, 1, 2)),
      # Ensembles (--mode=evaluate --ensemble=...): nine encoders trained with seeds 0-8, their
      # embeddings combined three at a time (sim_jax/models/ensemble.py; ENSEMBLE_GROUPS). Members
      # carry their own seeds, so run it without --seeds; the seed rows are the single-encoder
      # spread, the three groups the ensemble's.
      "ensemble": [
          *[Variant(f"seed{s}", {"seed": s}) for s in range(9)],
          *[Variant(f"ensemble_{mode}{ENSEMBLE_SUFFIX[group]}",
                    {"eval.ensemble": ",".join(f"{{run:seed{s}}}" for s in group),
                     "eval.ensemble_mode": mode}, evaluates=f"seed{group[0]}")
            for group in ENSEMBLE_GROUPS for mode in ("concat", "mean")],
      ],
      # Issue 26 (sim_jax/graph): a GCN refines the embeddings at evaluation, fit on the train
      # split over k-NN (+ freedesktop name relations); the gnn_* rows re-evaluate base's
      # checkpoint, so all rows of a seed share one encoder.
      "gnn": Ablation([
          Variant("base", {}),
          Variant("gnn_knn", {"eval.graph.relations": "knn"}, evaluates="base"),
          Variant("gnn_names", {"eval.graph.relations": "knn,parent,token"}, evaluates="base"),
      ], seeds=(0, 1, 2)),
      # Issue 26 (sim_jax/experiments/search.py): the hand-designed encoder vs the architecture
      # search's best trial, trial 1 of `python -m sim_jax.experiments.search
      # --config=configs/icons.py --workdir=runs/icons_search --trials=12
      # --objective=verification/head_roc_auc_validation` (docs/experiments/icons_search_best.json;
      # 12 trials of 300 steps, docs/experiments/icons_nas.md): 2 stages instead of 3,
      # channel-spatial attention before the pooling, 128-d embeddings; kernels and width as
      # hand-designed.
      "nas": Ablation([
          Variant("hand_designed", {}),
          Variant("searched", {"model.multiscale_kernels": (1, 3, 5), "model.width": 4,
                               "model.multiscale_stages": 2, "model.attention": "before",
                               "model.embedding_dim": 128}),
      ], seeds=(0, 1, 2)),
      # Issue 26, few-shot adaptation (sim_jax/eval/fewshot.py): 5-way episodes of heldout names
      # (never trained on), K = 1 and 5 shots, 1 query per name (a name has >= 5 drawings, so
      # K = 5 leaves 1), 600 episodes (fewshot/<method>_<K>shot_{accuracy,ci95}: mean and 95%
      # confidence half-width over episodes). Both rows re-evaluate bce's checkpoint, on the same
      # episodes: prototypes vs a linear head started at them and fine-tuned on the shots.
      "fewshot": Ablation([
          Variant("bce", {}),
          *[Variant(method, {**FEWSHOT, "eval.fewshot_methods": method}, evaluates="bce")
            for method in ("prototype", "finetune")],
      ], seeds=(0, 1, 2)),
      # Issue 26, dynamic margins: the contrastive loss with a fixed margin, one learnt margin,
      # and per-class margins kept above a floor and rewarded (sim_jax/losses/adaptive_margin.py;
      # logged as train/margin, their mean).
      "margins": Ablation([
          Variant("fixed", {"loss.name": "contrastive", "loss.margin": 1.0}),
          Variant("learnable", {"loss.name": "learnable_margin_contrastive", "loss.margin": 1.0}),
          Variant("adaptive", {"loss.name": "adaptive_margin_contrastive", "loss.margin": 1.0,
                               "loss.adaptive_margin_min": 0.1,
                               "loss.adaptive_margin_reward": 0.1}),
      ], seeds=(0, 1, 2)),
  }


# The budget sweep's grid: 300 steps is the base; 3,000 is 10x, ~10 min a run at width 16 on
# the quiet 2-core host (`docs/experiments/icons_step_time.py`: 0.08 / 0.09 / 0.21 s a step).
BUDGET_WIDTHS = (4, 8, 16)
BUDGET_STEPS = (300, 1200, 3000)


# Three disjoint ensembles of three encoders each (seeds 0-2, 3-5, 6-8): the ensemble's own
# spread over 3 replicates. The first keeps its original labels (ensemble_concat / _mean).
ENSEMBLE_GROUPS = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
ENSEMBLE_SUFFIX = {(0, 1, 2): "", (3, 4, 5): "_345", (6, 7, 8): "_678"}


# The few-shot evaluation of the `fewshot` ablation (verification kept: best_metric reads it).
FEWSHOT = {"eval.protocols": "verification,fewshot", "eval.fewshot_k_shots": (1, 5),
           "eval.fewshot_n_way": 5, "eval.fewshot_n_query": 1,
           "eval.fewshot_num_episodes": 600}
