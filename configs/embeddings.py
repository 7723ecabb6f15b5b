"""Seed 004: a comparison of image-embedding methods, one ablation per table of the seed.

Data: Fashion-MNIST (`fashion_mnist`, Debian's `dataset-fashion-mnist`; 10 classes of 28x28
grayscale product photos, 6,000 train images per class), the stand-in for the seed's 50 Tiny
ImageNet classes. Its floors leave room once the reference set is the images trained on: with
400 images per class, raw pixels score 5-NN macro F1 0.790 and a random-init LeNet-5 0.708
(every row of docs/experiments/embeddings.md carries its floors; with all 60,000 train images
as the reference, 0.858 and 0.815 for a ResNet: docs/data.md).

Default (the seed's set-up of 4.2-4.4): N = 400 training images per class (`data.
samples_per_class`, the seed's largest N), LeNet-5 with a 256-d embedding, SupCon, no
augmentation. Headline: 5-NN macro F1 (`knn/f1_macro`, the seed's F1-score) of the
10,000 test images against the N x 10 images trained on (eval split "trained": the k-NN
reference is what the model saw, as the seed's 4.4 needs), and MAP@R of the test queries.

  python launch.py --config=configs/embeddings.py --workdir=runs/embeddings

One command per table (resumable; the variants of a table interleaved, seed by seed):
  python ablate.py --config=configs/embeddings.py --ablation=backbones \
      --workdir=runs/embeddings_backbones
  python ablate.py --config=configs/embeddings.py --ablation=backbones_pretrained \
      --workdir=runs/embeddings_backbones_pretrained
  python ablate.py --config=configs/embeddings.py --ablation=losses \
      --workdir=runs/embeddings_losses
  python ablate.py --config=configs/embeddings.py --ablation=losses_pretrained \
      --workdir=runs/embeddings_losses_pretrained
  python ablate.py --config=configs/embeddings.py --ablation=embedding_sizes \
      --workdir=runs/embeddings_embedding_sizes
  python ablate.py --config=configs/embeddings.py --ablation=samples_per_class \
      --workdir=runs/embeddings_samples_per_class
  python ablate.py --config=configs/embeddings.py --ablation=augmentation_factor \
      --workdir=runs/embeddings_augmentation_factor
  python ablate.py --config=configs/embeddings.py --ablation=augmentation \
      --workdir=runs/embeddings_augmentation
  python ablate.py --config=configs/embeddings.py --ablation=zeroshot \
      --workdir=runs/embeddings_zeroshot
  python ablate.py --config=configs/embeddings.py --ablation=combined \
      --workdir=runs/embeddings_combined

Tables (the seed's section in brackets):
  backbones          lenet5 | vit_tiny | swin_tiny | resnet18 | mobilenet_v3_small |
                     efficientnet_b0 | densenet121 (4.1; triplet loss as the seed; BACKBONE_STEPS
                     steps, as the CNNs cost ~2 s a step here). ViT and Swin are of
                     comparable size (both ~40k parameters: the test-sized layouts, all this
                     host can train); docs/experiments/embeddings.md lists params and FLOPs.
  backbones_pretrained  the pretraining column: SimCLR on all 60,000 train images (no labels),
                     then the backbone row fine-tuned from it, for every backbone
  losses             contrastive | triplet | supcon | snr | nt_xent (4.2)
  losses_pretrained  the pretraining column of the loss table: the same five losses fine-tuned
                     from one SimCLR LeNet-5 per seed
  embedding_sizes    64 | 128 | 256 | 512 | 1024 | 2048 (4.3)
  samples_per_class  10 | 20 | 30 | 50 | 80 | 100 | 200 | 400 (4.4; k-NN reference = those N)
  augmentation_factor  20 images per class + (f - 1) fixed RandAugment copies of each,
                     f = 1 | 2 | 4 | 8 | 16 (4.5; offline copies made once, `data.offline_augment`)
  augmentation       20 per class x 4 by none | autoaugment | randaugment | trivialaugment (4.6)
  zeroshot           30% / 50% of the classes held out of training, 5-NN F1 within them (1,000
                     images of each); and a cross-domain row: the default model's embeddings of
                     icon_themes (gray, 28 px) (4.7)
  combined           the seed's 4.8: 4 trained classes, 20 images each x 16 RandAugment copies,
                     SupCon, 1024-d; F1 on the trained classes and zero-shot on the 6 others

Differs from the seed, and why:
- From scratch: no ImageNet-pretrained weights can be downloaded here.
- Size: 28x28 grayscale; LeNet-5 where the seed used ResNet-50 (a ResNet-18 at 1/4 width
  trains at ~2 s a step on this shared 2-core host, LeNet-5 ~50x cheaper); small backbones in
  the backbone table (test-sized ViT and Swin); STEPS steps of 64 images (the seed: five epochs
  of its data).
  A fixed step count per table, so that the N and augmentation rows differ in data only.
- Seeds: every table runs seeds 0, 1, 2 (`SEEDS`); the N images, the augmented copies and the
  held-out classes are the same in every seed (`data.subset_seed`; the class split's own seed).
"""

from configs import default
from sim_jax.experiments import Ablation, Variant

HEADLINE = ("knn/f1_macro", "retrieval/map@r", "zeroshot/knn_f1_macro")
STEPS = 1000
# The backbone table: 300 steps x 64 = 4.8 epochs of the 4,000 images, about the seed's five
# epochs; its CNNs take 2-12 min a run here (LeNet-5: 20 s).
BACKBONE_STEPS = 300
SEEDS = (0, 1, 2)


def get_config():
  config = default.get_config()
  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  config.data.samples_per_class = 400  # the seed's largest N (4.4); the reference set too
  config.data.heldout_class_fraction = 0.0
  config.data.eval_splits = ("trained", "test")
  config.data.sampler = "pk"
  config.data.examples_per_class = 16  # P = 4 classes per batch (4.8 trains 4 classes)
  config.data.augment.name = "none"  # the seed's backbone / loss / size experiments: none

  config.model.name = "lenet5"  # the seed's ResNet-50 is out of this host's reach (see above)
  config.model.width = 16  # the resnet18 row: 1/4 of ResNet-18's channels
  config.model.stem = "small"
  config.model.patch_size = 4  # ViT / Swin variants: 7x7 = 49 tokens at 28x28
  config.model.embedding_dim = 256  # the seed's default embedding size

  config.loss.name = "supcon"  # the seed's best loss (4.2), used in its later experiments
  config.loss.temperature = 0.1

  config.optimizer.learning_rate = 1e-3
  config.train.steps = STEPS
  config.train.batch_size = 64
  config.train.eval_every = STEPS // 2  # the learning curve: random init (floors), half, end
  config.train.checkpoint_every = STEPS // 2
  # The end-of-run plots (t-SNE of 1,500 points, UMAP, retrieval grid) take longer than the run
  # on this shared host; docs/experiments/embeddings_report.py draws the t-SNE figures instead.
  config.train.plots = False

  config.eval.protocols = "knn,retrieval"
  config.eval.metric = "cosine"
  config.eval.query_split = "test"
  config.eval.gallery_split = "trained"
  config.eval.knn_train_split = "trained"
  config.eval.knn_k = 5
  config.eval.zeroshot_split = "heldout"
  config.eval.zeroshot_knn_k = 5
  config.eval.best_metric = "knn/f1_macro"
  return config


PAIRS = {"data.sampler": "pairs", "train.batch_size": 32}  # 32 pairs = 64 images per step
FEW = {"data.samples_per_class": 20}  # the seed's augmentation experiments: 20 per class
RANDAUGMENT = {"data.offline_augment.name": "randaugment"}
# Zero-shot: held-out classes in the "heldout" split, scored by 5-NN within them, on the same
# 1,000 images of each held-out class for every model and floor (MAP@R over whole 7,000-image
# classes is a top-7,000 search per query, out of reach here).
ZEROSHOT_EVAL = {"data.eval_splits": ("trained", "test", "heldout"),
                 "eval.protocols": "knn,retrieval,zeroshot", "eval.zeroshot_train_split": "",
                 "eval.zeroshot_max_per_class": 1000}
# The pretraining column: SimCLR (two augmented views per image, positives = the two views, no
# labels) on all 60,000 train images, 10x-150x more than the labelled N = 400 / 20 per class, then
# fine-tuning from its encoder (the projection MLP dropped). The test images are never in it.
SIMCLR_STEPS = 2000
SIMCLR = {
    # Every train image: Fashion-MNIST has 6,000 per class (the "trained" k-NN reference too).
    "data.samples_per_class": 6000,
    "data.sampler": "views",
    "train.view_labels": "index",
    "train.batch_size": 64,  # images: 128 views per step
    "train.steps": SIMCLR_STEPS,
    "train.eval_every": SIMCLR_STEPS,
    "train.checkpoint_every": SIMCLR_STEPS // 2,
    # k-NN only: MAP@R against a 60,000-image reference is a top-6,000 search per query.
    "eval.protocols": "knn",
    "loss.name": "nt_xent",
    "loss.temperature": 0.2,
    "data.augment.name": "simclr",
    "data.augment.strength": 0.5,
    "data.augment.min_scale": 0.3,
    "model.projection_depth": 2,
    "model.projection_dim": 64,
    "model.projection_hidden_dim": 256,
}


def _loss_variants(extra=None):
  extra = extra or {}
  return [
      Variant("contrastive", {"loss.name": "contrastive", "loss.margin": 1.0,
                              "loss.squared": False, **PAIRS, **extra}),
      Variant("triplet", {"loss.name": "triplet", "loss.margin": 0.2,
                          "loss.mining": "semi_hard", **extra}),
      Variant("supcon", {"loss.name": "supcon", **extra}),
      # pytorch-metric-learning's SignalToNoiseRatioContrastiveLoss over all pairs of the
      # labelled batch: positives above pos_margin (0) and negatives below margin (1.0).
      Variant("snr", {"loss.name": "snr_contrastive", "loss.margin": 1.0,
                      "loss.pos_margin": 0.0, **extra}),
      Variant("nt_xent", {"loss.name": "nt_xent", **extra}),
  ]


def _backbone(name, extra=None):
  return {"model.name": name, "loss.name": "triplet", "loss.margin": 0.2,
          "loss.mining": "semi_hard", "train.steps": BACKBONE_STEPS,
          "train.eval_every": BACKBONE_STEPS // 2, "train.checkpoint_every": BACKBONE_STEPS // 2,
          **(extra or {})}


# Cheapest first: a stopped table has the small models' rows.
BACKBONES = ("lenet5", "vit_tiny", "swin_tiny", "resnet18", "mobilenet_v3_small",
             "efficientnet_b0", "densenet121")
# The pretrained column of the backbone table, cheapest first: ResNet-18's SimCLR run took
# 56 min here (LeNet-5, ViT, Swin: 1.5-4 min), so a stopped table has the small rows.
PRETRAINED_BACKBONES = BACKBONES


def get_ablations():
  return {
      "backbones": Ablation([Variant(name, _backbone(name)) for name in BACKBONES], seeds=SEEDS),
      # The same rows fine-tuned from each backbone's own SimCLR encoder (run first, per seed).
      "backbones_pretrained": Ablation([
          v for name in PRETRAINED_BACKBONES for v in (
              Variant(f"simclr_{name}", {**SIMCLR, "model.name": name}),
              Variant(name, _backbone(name, {"model.init_from": f"{{run:simclr_{name}}}"})))
      ], seeds=SEEDS),
      "losses": Ablation(_loss_variants(), seeds=SEEDS),
      # The loss table fine-tuned from one SimCLR LeNet-5 per seed.
      "losses_pretrained": Ablation(
          [Variant("simclr", SIMCLR), *_loss_variants({"model.init_from": "{run:simclr}"})],
          seeds=SEEDS),
      "embedding_sizes": Ablation([
          Variant(f"dim_{d}", {"model.embedding_dim": d}) for d in (64, 128, 256, 512, 1024, 2048)
      ], seeds=SEEDS),
      "samples_per_class": Ablation([
          Variant(f"n_{n}", {"data.samples_per_class": n})
          for n in (10, 20, 30, 50, 80, 100, 200, 400)
      ], seeds=SEEDS),
      "augmentation_factor": Ablation([
          Variant("x1", FEW),
          *[Variant(f"x{f}", {**FEW, **RANDAUGMENT, "data.augmentation_factor": f})
            for f in (2, 4, 8, 16)],
      ], seeds=SEEDS),
      "augmentation": Ablation([
          Variant("none", FEW),
          *[Variant(name, {**FEW, "data.offline_augment.name": name,
                           "data.augmentation_factor": 4})
            for name in ("autoaugment", "randaugment", "trivialaugment")],
      ], seeds=SEEDS),
      "zeroshot": Ablation([
          Variant(f"heldout_{int(f * 100)}", {"data.heldout_class_fraction": f, **ZEROSHOT_EVAL})
          for f in (0.3, 0.5)
      ] + [
          # Cross-domain: the default N = 400 model (all 10 classes) also embeds another data
          # set (the seed's car parts after Tiny ImageNet): icon_themes' train split (1,207
          # icon names, gray at 28 px), scored by 5-NN within it.
          Variant("cross_icon_themes", {
              "data.eval_splits": ("trained", "test", "icon_themes:train"),
              "eval.protocols": "knn,retrieval,zeroshot",
              "eval.zeroshot_split": "icon_themes:train", "eval.zeroshot_train_split": ""}),
      ], seeds=SEEDS),
      "combined": Ablation([
          # 4 of the 10 classes trained (heldout 0.6), 20 images each x 16 RandAugment copies.
          Variant("combined", {"data.heldout_class_fraction": 0.6, **FEW, **RANDAUGMENT,
                               "data.augmentation_factor": 16, "model.embedding_dim": 1024,
                               **ZEROSHOT_EVAL}),
      ], seeds=SEEDS),
  }
