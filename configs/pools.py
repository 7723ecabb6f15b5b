"""Seed 003: matching "totally looks like" images, scored as top-2 of 1 true match + 19 foils.

Reproduces seed 003's protocol: a backbone with the seed's head (attention on the feature map,
max-pooling, a fully connected embedding) is trained with a triplet loss on cosine distance, and
evaluated by ranking, for each query, its true match among 20 candidates (1 true + 19 foils drawn
from other classes); a hit is the true match ranked in the top 2 (`pool/top2_accuracy`, the
Kaggle score the seed reports). The images are `glyph_icons`: an icon concept drawn by different
icon fonts looks alike without being the same picture, which is the kind of match the seed's
Totally-Looks-Like pairs ask for. Queries and pools come from the 30% of concepts that training
never sees, as the seed's test pairs are unseen pairs.

  python launch.py --config=configs/pools.py --workdir=runs/pools

Training uses P x K batches with K = 2 (each class appears as a query and its match, the rest of
the batch are foils) and semi-hard triplet mining: sim_jax's `pools` sampler has no trainer
objective, so pools are the evaluation protocol only (`eval.protocols = "pool,..."`).

Ablations (`python ablate.py --config=configs/pools.py --ablation=NAME --workdir=...`):
  backbone  vgg16 | resnet50, both with the seed's attention + max-pool head (the seed's
            comparison: VGG16 0.569 vs ResNet50 0.419 top-2 after its improvements)
  head      seed: attention before the embedding + max-pooling | plain: no attention, average
            pooling (the seed's "before" / "after our improvements" comparison of the head)
  distance  cosine | euclidean distance inside the triplet loss (the seed's loss change);
            the pools are ranked by cosine similarity in both

  python ablate.py --config=configs/pools.py --ablation=backbone --workdir=runs/pools_backbone
  python ablate.py --config=configs/pools.py --ablation=head --workdir=runs/pools_head
  python ablate.py --config=configs/pools.py --ablation=distance --workdir=runs/pools_distance

Differs from the paper, and why:
- Data: no download is possible here, so Totally-Looks-Like (2,000 + 2,000 left/right image
  pairs at 200x245) is replaced by sim_jax's offline `glyph_icons` at 32x32; with real pairs,
  use `data.name = "image_folder"`, `data.layout = "pairs"` and `eval.pool_mode = "pairs"`.
- Size: VGG16 / ResNet-50 at width 8 (1/8 of the channels), trained from scratch for 1500 steps
  of 64 images (2 minutes for VGG16 on 2 CPU cores; ResNet-50 stepped 2.5 times a second, so
  about 10), where the seed fine-tuned ImageNet-pretrained networks.
- Mining: semi-hard (FaceNet); the seed compared each query with its 19 foils, which P x K
  batches with every other class as a negative approximate.
"""

from configs import default
from sim_jax.experiments import Variant

HEADLINE = ("pool/top2_accuracy", "pool/mrr", "retrieval/mrr@5")


def get_config():
  config = default.get_config()
  config.data.name = "glyph_icons"
  config.data.image_size = 32
  config.data.max_classes = 400  # more concepts than the builder's 200: 120 unseen for pools
  config.data.heldout_class_fraction = 0.3  # pools are drawn from concepts never trained on
  config.data.eval_splits = ("heldout",)
  config.data.sampler = "pk"
  config.data.examples_per_class = 2  # a query and its match per class; the others are foils
  config.data.augment.name = "glyph"
  config.data.augment.strength = 0.5

  config.model.name = "vgg16"
  config.model.width = 8  # 1/8 of VGG16's channels: minutes per run on 2 CPU cores
  config.model.attention = "before"  # the seed's attention layer on the feature map ...
  config.model.pooling = "max"  # ... then max-pooling and the FC embedding
  config.model.embedding_dim = 128

  config.loss.name = "triplet"
  config.loss.distance = "cosine"  # the seed's triplet loss on cosine similarity
  config.loss.mining = "semi_hard"
  config.loss.margin = 0.2

  config.optimizer.learning_rate = 1e-3
  config.train.steps = 1500
  config.train.batch_size = 64
  config.train.eval_every = 500
  config.train.checkpoint_every = 500

  config.eval.protocols = "pool,retrieval"
  config.eval.metric = "cosine"
  config.eval.query_split = "heldout"
  config.eval.pool_mode = "labels"  # a true match = another drawing of the query's concept
  config.eval.pool_num_foils = 19
  config.eval.pool_top = 2
  config.eval.best_metric = "pool/top2_accuracy"
  return config


SEED_HEAD = {"model.attention": "before", "model.pooling": "max"}


def get_ablations():
  return {
      "backbone": [
          Variant("vgg16", {"model.name": "vgg16", **SEED_HEAD}),
          Variant("resnet50", {"model.name": "resnet50", "model.stem": "small", **SEED_HEAD}),
      ],
      "head": [
          Variant("seed", SEED_HEAD),
          Variant("plain", {"model.attention": "none", "model.pooling": "avg"}),
      ],
      "distance": [
          Variant("cosine", {"loss.distance": "cosine"}),
          Variant("euclidean", {"loss.distance": "euclidean"}),
      ],
  }
