"""Batch-norm recalibration before an evaluation (`eval.batch_norm_recalibration_batches`,
`inference.recalibrate_batch_norm`): the running statistics it leaves are those the training loop
itself would leave after the same batches with the weights frozen, and the checkpoint's own
statistics fade as momentum^K (closed form)."""

import jax
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import data, inference, sharding, train

K = 5
MOMENTUM = 0.9  # sim_jax.models.encoder.batch_norm


@pytest.fixture(scope="module")
def setup():
  cfg = test_config.get_config()
  cfg.model.name = "resnet_tiny"  # batch norm after every convolution
  cfg.model.width = 4
  cfg.optimizer.learning_rate = 1e-30  # the reference's training steps must not move a weight
  cfg.optimizer.weight_decay = 0.0
  return train.make_setup(cfg)


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def test_recalibrated_statistics_are_the_training_loops_with_frozen_weights(setup):
  state = train.init_state(setup)
  got = inference.recalibrate_batch_norm(setup, state, K)
  # Reference: K steps of the trainer's own jitted step on the same batches (the iterator of the
  # config's seed), at a learning rate that leaves the weights where they are.
  ref = train.init_state(setup)
  step = train.jit_train_step(setup)
  it = data.create_train_iterator(setup.config.data, global_batch_size=16,
                                  seed=setup.config.seed, process_index=0, process_count=1)
  for _ in range(K):
    ref, _ = step(ref, sharding.host_to_global(next(it), setup.mesh))
  for a, b in zip(_leaves(ref.params), _leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-20)  # the reference kept the weights
  ours, theirs, start = _leaves(got.batch_stats), _leaves(ref.batch_stats), _leaves(
      state.batch_stats)
  assert len(ours) == len(theirs) > 0
  for a, b, s in zip(ours, theirs, start):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, s)  # the statistics moved
  for a, b in zip(_leaves(got.params), _leaves(state.params)):
    np.testing.assert_array_equal(a, b)


def test_the_checkpoints_own_statistics_weigh_momentum_to_the_k(setup):
  state = train.init_state(setup)
  shifted = state.replace(batch_stats=jax.tree.map(lambda x: x + 100.0, state.batch_stats))
  a = _leaves(inference.recalibrate_batch_norm(setup, state, K).batch_stats)
  b = _leaves(inference.recalibrate_batch_norm(setup, shifted, K).batch_stats)
  # r_K = m^K r_0 + (1 - m) sum_k m^(K-k) s_k: linear in r_0 with slope m^K.
  for x, y in zip(a, b):
    np.testing.assert_allclose(y - x, 100.0 * MOMENTUM**K, rtol=1e-4)


def test_no_batches_or_no_batch_norm_leaves_the_state_alone(setup):
  state = train.init_state(setup)
  assert inference.recalibrate_batch_norm(setup, state, 0) is state
  lenet = train.make_setup(test_config.get_config())  # LeNet-5: no batch norm
  plain = train.init_state(lenet)
  assert inference.recalibrate_batch_norm(lenet, plain, K) is plain
