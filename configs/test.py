"""A tiny CPU variant of the default that the tests load (seconds, not minutes).

  python launch.py --config=configs/test.py --workdir=/tmp/sim_jax_test
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "digits"  # scikit-learn's 8x8 handwritten digits: ships with a dependency
  config.data.heldout_class_fraction = 0.0
  config.data.eval_splits = ("train", "test")
  config.eval.protocols = "retrieval,knn"
  config.data.image_size = 16
  config.data.examples_per_class = 4
  config.data.augment.name = "none"
  config.model.name = "lenet5"
  config.model.embedding_dim = 16
  config.train.steps = 6
  config.train.batch_size = 16
  config.train.log_every = 2
  config.train.eval_every = 3
  config.train.checkpoint_every = 3
  config.train.async_checkpoint = False
  config.train.plots = False  # t-SNE costs seconds; the end-to-end test turns it on
  config.optimizer.warmup_steps = 2
  return config
