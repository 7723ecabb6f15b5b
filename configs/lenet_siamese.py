"""Seed 002: a Siamese LeNet-5 trained with the contrastive loss on balanced pairs.

Reproduces seed 002's set-up: two weight-shared LeNet-5 subnets (up to F7, a 10-d output),
Euclidean distance between the two outputs, contrastive loss with margin 1 (Hadsell et al.),
Adam at 1e-3 with a constant learning rate, 64 pairs per batch, half of them positive. Headline:
pair accuracy on test pairs (`verification/accuracy`, the threshold on the distance fit on
train pairs), with k-NN accuracy and MAP@R of the embeddings.

  python launch.py --config=configs/lenet_siamese.py --workdir=runs/lenet_siamese

Ablations (`python ablate.py --config=configs/lenet_siamese.py --ablation=NAME --workdir=...`):
  datasets       digits | mnist | fashion_mnist | cifar10 (`data.name`). Only `digits` ships
                 with a dependency; the TFDS datasets run where they are prepared in data_dir
                 (`tfds build mnist --file_format=array_record --data_dir=...` on a machine with
                 network) and are otherwise reported as "not run" with the reason.
  learning_rate  1e-4 | 1e-3 | 1e-2 (the seed's Table 6)
  batch_size     32 | 64 | 96 pairs (Table 7) at the same number of epochs: the step count
                 scales as 64 / batch (a `--set train.steps=N` makes every run N steps instead)

  python ablate.py --config=configs/lenet_siamese.py --ablation=datasets \
      --workdir=runs/lenet_siamese_datasets
  python ablate.py --config=configs/lenet_siamese.py --ablation=learning_rate \
      --workdir=runs/lenet_siamese_learning_rate
  python ablate.py --config=configs/lenet_siamese.py --ablation=batch_size \
      --workdir=runs/lenet_siamese_batch_size

Differs from the paper, and why:
- Data: no download is possible here, so the default dataset is scikit-learn's 8x8 `digits`
  (1,797 images, upsampled to 28x28) instead of MNIST; MNIST, Fashion-MNIST and CIFAR-10 need a
  prepared TFDS copy.
- Length: 2000 steps of 64 pairs (about 90 epochs of `digits`' train split, 2 of MNIST's, where
  the seed trained 50). Not timed here; a LeNet-5 step takes milliseconds on 2 CPU cores.
- Output: the seed passes the distance through a sigmoid to output a similarity; here the
  distance is thresholded directly (the threshold fit on train pairs), which ranks pairs the same.
- Splits: the builders' train / test splits; the seed also split a validation set off the train
  set, which here only serves to fit the verification threshold (on the train split).
"""

from configs import default
from sim_jax.experiments import Variant

HEADLINE = ("verification/accuracy", "knn/accuracy", "retrieval/map@r")
STEPS = 2000
BATCH = 64


def get_config():
  config = default.get_config()
  config.data.name = "digits"
  config.data.image_size = 28  # MNIST's size; LeNet-5 pads it to its 32x32 framing ('SAME')
  config.data.heldout_class_fraction = 0.0
  config.data.eval_splits = ("train", "test")
  config.data.sampler = "pairs"
  config.data.pos_fraction = 0.5  # balanced positive / negative pairs
  config.data.augment.name = "none"

  config.model.name = "lenet5"
  config.model.embedding_dim = 10  # F7: LeNet-5's published 10-unit output layer
  config.model.normalize = False  # the seed compares raw outputs by Euclidean distance

  config.loss.name = "contrastive"
  config.loss.margin = 1.0
  config.loss.squared = True  # same: d^2 / 2, different: max(0, 1 - d)^2 / 2

  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0

  config.train.steps = STEPS
  config.train.batch_size = BATCH  # pairs
  config.train.eval_every = 500
  config.train.checkpoint_every = 500

  config.eval.protocols = "verification,knn,retrieval"
  config.eval.metric = "euclidean"
  config.eval.query_split = "test"
  config.eval.knn_train_split = "train"
  config.eval.verification_val_split = "train"  # fit the threshold on train pairs
  config.eval.best_metric = "verification/accuracy"
  return config


def _same_epochs(batch: int) -> dict:
  # The seed compares batch sizes at a fixed number of epochs: fewer, larger steps.
  return {"train.batch_size": batch, "train.steps": round(STEPS * BATCH / batch)}


def get_ablations():
  return {
      "datasets": [
          Variant("digits", {"data.name": "digits"}),
          Variant("mnist", {"data.name": "mnist"}),
          Variant("fashion_mnist", {"data.name": "fashion_mnist"}),
          Variant("cifar10", {"data.name": "cifar10", "data.image_size": 32}),
      ],
      "learning_rate": [
          Variant("lr_1e-4", {"optimizer.learning_rate": 1e-4}),
          Variant("lr_1e-3", {"optimizer.learning_rate": 1e-3}),
          Variant("lr_1e-2", {"optimizer.learning_rate": 1e-2}),
      ],
      "batch_size": [
          Variant("batch_32", _same_epochs(32)),
          Variant("batch_64", _same_epochs(64)),
          Variant("batch_96", _same_epochs(96)),
      ],
  }
