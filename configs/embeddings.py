"""Seed 004: a comparison of image-embedding methods, one ablation per axis.

Reproduces seed 004's experiments on `glyph_symbols` (Unicode symbols drawn by matplotlib's
fonts; a class is a code point): 100 classes, of which 50 are trained on (seed 004 used 50 Tiny
ImageNet classes) and 50 are held out for zero-shot retrieval. The default is the seed's main
set-up: a ResNet with a 256-d embedding trained with SupCon. Headline: macro F1 of 5-NN
classification of unseen renderings of the trained classes (`knn/f1_macro`, the seed's F1-score),
MAP@R of the same queries, and MAP@R on the held-out classes (`zeroshot/map@r`).

  python launch.py --config=configs/embeddings.py --workdir=runs/embeddings

Ablations (`python ablate.py --config=configs/embeddings.py --ablation=NAME --workdir=...`):
  backbones          lenet5 | resnet18 | mobilenet_v3_small | vit_ti | swin_tiny (4.1)
  losses             contrastive | triplet | supcon | snr | nt_xent (4.2); the pair loss
                     (contrastive) trains on 64 balanced pairs = 128 images per step; snr, like
                     pytorch-metric-learning's SNR loss, scores every pair of a P x K batch
  embedding_sizes    64 | 256 | 1024 | 2048 (4.3)
  samples_per_class  3 | 6 | 12 | 24 training images per class (4.4; same number of steps)
  augmentation_factor  1 | 2 | 4 | 8 RandAugment copies of 6 images per class (4.5); the step
                     count scales with the factor, as the seed trains each set for the same
                     number of epochs (a `--set train.steps=N` makes every run N steps instead)
  augmentation       none | randaugment | trivialaugment | simclr on 6 images per class x 4
                     (4.6; AutoAugment's ImageNet policy is not implemented)
  zeroshot           25% | 50% | 75% of the classes held out of training (4.7: how zero-shot
                     retrieval on unseen classes depends on the classes trained on)

  python ablate.py --config=configs/embeddings.py --ablation=backbones \
      --workdir=runs/embeddings_backbones
  python ablate.py --config=configs/embeddings.py --ablation=losses \
      --workdir=runs/embeddings_losses
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

Differs from the paper, and why:
- Data: no download is possible here, so Tiny ImageNet and the car-parts set are replaced by
  sim_jax's offline `glyph_symbols`; zero-shot is measured on held-out symbol classes rather
  than on another dataset.
- Size: 32x32 grayscale inputs, backbones at small width (ResNet-18 at 1/4 width instead of
  ResNet-50; ViT-Ti with 8x8 patches; Swin's tiny variant), trained from scratch for 1000 steps
  where the seed fine-tuned ImageNet-pretrained models for five epochs. These runs were not timed
  here; ResNet-18 at this width stepped 64 images ~6 times a second on 2 CPU cores, so expect
  several minutes per run. EfficientNet and DenseNet (sim_jax has B0 and 121) are left out of
  the backbone ablation to keep it to minutes.
- Samples per class: the seed's 10-400 images per class become 3-24 (the symbol classes have
  up to 28 fonts x 8 renderings, and the rarest 26 training images).
"""

from configs import default
from sim_jax.experiments import Variant

HEADLINE = ("knn/f1_macro", "retrieval/map@r", "zeroshot/map@r")
STEPS = 1000


def get_config():
  config = default.get_config()
  config.data.name = "glyph_symbols"
  config.data.image_size = 32
  config.data.max_classes = 100
  config.data.renders_per_font = 8  # 1 clean + 7 jittered drawings per font: enough per class
  config.data.heldout_class_fraction = 0.5  # 50 trained classes, 50 for zero-shot retrieval
  config.data.eval_splits = ("train", "test", "heldout")
  config.data.sampler = "pk"
  config.data.examples_per_class = 4
  config.data.augment.name = "none"  # the seed's backbone / loss / size experiments: none

  config.model.name = "resnet18"
  config.model.width = 16  # 1/4 of ResNet-18's channels
  config.model.stem = "small"
  config.model.patch_size = 8  # ViT / Swin variants: 4x4 = 16 tokens at 32x32
  config.model.embedding_dim = 256  # the seed's default embedding size

  config.loss.name = "supcon"  # the seed's best loss (4.2), used in its later experiments
  config.loss.temperature = 0.1

  config.optimizer.learning_rate = 1e-3
  config.train.steps = STEPS
  config.train.batch_size = 128
  config.train.eval_every = 500
  config.train.checkpoint_every = 500

  config.eval.protocols = "knn,retrieval,zeroshot"
  config.eval.metric = "cosine"
  config.eval.query_split = "test"
  config.eval.knn_train_split = "train"
  config.eval.knn_k = 5
  config.eval.zeroshot_split = "heldout"
  config.eval.best_metric = "knn/f1_macro"
  return config


PAIRS = {"data.sampler": "pairs", "train.batch_size": 64}  # 64 pairs = 128 images per step
FEW = {"data.samples_per_class": 6}  # the seed's augmentation experiments start from few images


def get_ablations():
  return {
      "backbones": [
          Variant("lenet5", {"model.name": "lenet5"}),
          Variant("resnet18", {"model.name": "resnet18"}),
          Variant("mobilenet_v3_small", {"model.name": "mobilenet_v3_small"}),
          Variant("vit_ti", {"model.name": "vit_ti"}),
          Variant("swin_tiny", {"model.name": "swin_tiny", "model.patch_size": 4}),
      ],
      "losses": [
          Variant("contrastive", {"loss.name": "contrastive", "loss.margin": 1.0,
                                  "loss.squared": False, **PAIRS}),
          Variant("triplet", {"loss.name": "triplet", "loss.margin": 0.2,
                              "loss.mining": "semi_hard"}),
          Variant("supcon", {"loss.name": "supcon"}),
          # pytorch-metric-learning's SignalToNoiseRatioContrastiveLoss over all pairs of the
          # labelled batch: positives above pos_margin (0) and negatives below margin (1.0).
          Variant("snr", {"loss.name": "snr_contrastive", "loss.margin": 1.0,
                          "loss.pos_margin": 0.0}),
          Variant("nt_xent", {"loss.name": "nt_xent"}),
      ],
      "embedding_sizes": [
          Variant(f"dim_{d}", {"model.embedding_dim": d}) for d in (64, 256, 1024, 2048)
      ],
      "samples_per_class": [
          Variant(f"n_{n}", {"data.samples_per_class": n}) for n in (3, 6, 12, 24)
      ],
      "augmentation_factor": [
          Variant(f"x{f}", {**FEW, "data.augmentation_factor": f,
                            "data.augment.name": "randaugment", "train.steps": STEPS // 4 * f})
          for f in (1, 2, 4, 8)
      ],
      "augmentation": [
          Variant(name, {**FEW, "data.augmentation_factor": 4, "data.augment.name": name})
          for name in ("none", "randaugment", "trivialaugment", "simclr")
      ],
      "zeroshot": [
          Variant(f"heldout_{int(f * 100)}", {"data.heldout_class_fraction": f})
          for f in (0.25, 0.5, 0.75)
      ],
  }
