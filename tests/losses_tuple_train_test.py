"""The pair / tuple / self-supervised losses in the trainer's loss table: a train step of
configs/test.py traced for one loss of each input shape, one real step of the streaming
multi-similarity to a finite loss and gradient, and the config checks."""

import jax
import numpy as np
import pytest

import sim_jax.data as sd
from configs import test as test_config
from sim_jax import train
from sim_jax.losses import objective
from tests.experiments_trace_test import CLASSES, PER_CLASS, synthetic_batch, trace_train_step

NEW = tuple(objective.TUPLE_LOSSES)


def _config(name, **loss):
  config = test_config.get_config()
  config.loss.name = name
  config.data.sampler = "views" if name in objective.VIEW_LOSSES else "pk"
  for k, v in loss.items():
    config.loss[k] = v
  return config


def test_every_new_loss_is_in_the_table():
  assert set(NEW) <= set(objective.NAMES)
  assert set(objective.LABEL_LOSSES) >= set(NEW)


# Each loss function of the table is also run on real arrays, with the config fields it reads
# recorded, by tests/losses_objective_test.py (parametrised over objective.NAMES); a whole train
# step is traced here for one loss of each input shape (per-anchor, per-pair, two views).
@pytest.mark.parametrize("name", ["generalized_lifted_structure", "lifted_structure", "fast_ap",
                                  "barlow_twins"])
def test_traces_one_train_step(name):
  config = _config(name)
  objective.validate(config)
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), synthetic_batch(config))
  state, new_state = trace_train_step(config, batch, CLASSES)
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(new_state) == shapes(state)


def test_one_real_train_step_gives_a_finite_loss():
  # The streaming multi-similarity (block_size 8 < the batch of 16): strips under the real step.
  config = _config("multi_similarity", block_size=8)
  batch = synthetic_batch(config)
  info = sd.DatasetInfo("synthetic", tuple(batch["image"].shape[-3:]), CLASSES,
                        {"train": CLASSES * PER_CLASS})
  setup = train.make_setup(config, devices=jax.devices()[:1], info=info)
  state = train.init_state(setup, pretrained=False)
  new_state, metrics = jax.jit(setup.train_step)(state, batch)
  m = metrics.compute()
  assert np.isfinite(float(m["loss"])) and float(m["loss"]) > 0
  # The encoder gets a gradient (the first step's learning rate is 0: warmup from 0).
  assert np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0


def test_view_losses_need_the_views_sampler_and_fields_are_checked():
  config = _config("barlow_twins")
  config.data.sampler = "pk"
  with pytest.raises(ValueError, match="set config.data.sampler='views'"):
    objective.validate(config)
  with pytest.raises(ValueError, match=r"config\.loss\.circle_gamma=10\.0 is not read by "
                                       r"config\.loss\.name='multi_similarity'"):
    objective.validate(_config("multi_similarity", circle_gamma=10.0))
