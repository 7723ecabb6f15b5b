"""One train step of every variant of every experiment config, traced on tiny synthetic data.

A variant whose loss, sampler, model or augmentation do not fit together (a loss called with a
signature it does not have, a batch key the objective does not find) fails here, in seconds,
instead of minutes into `ablate.py`. The step is traced abstractly (`jax.eval_shape`: shapes and
dtypes only, nothing compiled or computed), at the variant's own image size, model and batch
size (tracing costs the same at any size, and the real sizes are the ones that can break), on a
batch that sim_jax's own batch maker draws from a synthetic in-memory split with the variant's
sampler, so no dataset has to be prepared (icon themes, CJK fonts, MNIST need not be there).

`trace_train_step` is the only function that knows the trainer's API.
"""

import functools
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

import sim_jax.data as sd
from sim_jax import train
from sim_jax.data import pipeline, sources
from sim_jax.experiments import runner
from sim_jax.experiments.variants import Run, apply_overrides, run_overrides
from tests import helpers
from tests.experiments_test import EXPERIMENTS

# Channels of the datasets the configs name when config.data.channels does not say (others: 1).
CHANNELS = {"cifar10": 3, "icon_themes": 3}
CLASSES, PER_CLASS = 64, 8  # the synthetic split: enough classes for any P x K batch


def trace_train_step(config, batch, num_classes: int):
  """Abstract train state of `config`, and the state one `train_step` on `batch` returns (both
  as shapes: traced with `jax.eval_shape`, nothing compiled or computed). The step is the one
  the trainer runs (`train.make_setup`), on one device, with the batch's image shape."""
  info = sd.DatasetInfo(str(config.data.name), tuple(batch["image"].shape[-3:]), num_classes,
                        {"train": CLASSES * PER_CLASS})
  setup = train.make_setup(config, devices=jax.devices()[:1], info=info)
  return setup.abstract_state, jax.eval_shape(setup.train_step, setup.abstract_state, batch)[0]


def synthetic_batch(config) -> dict:
  """One global batch with the variant's sampler, image size and channels, as the pipeline's
  batch maker draws it from a synthetic split of CLASSES x PER_CLASS random images."""
  size = config.data.image_size or 32
  channels = config.data.channels or CHANNELS.get(str(config.data.name), 1)
  rng = np.random.default_rng(0)
  # Enough classes for the largest P x K batch (the large-batch variants' 2,048 images).
  classes = max(CLASSES, -(-config.train.batch_size // config.data.examples_per_class))
  n = classes * PER_CLASS
  images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
  source = sources.ArraySource(images, np.repeat(np.arange(classes), PER_CLASS), np.arange(n),
                               classes)
  maker = pipeline.BatchMaker(source, np.arange(n), config.data, config.train.batch_size, seed=0)
  return maker.map(0)


def _cases():
  for name in EXPERIMENTS:
    experiment = runner.load_experiment(os.path.join(helpers.REPO_ROOT, "configs", f"{name}.py"))
    for ablation_name, ablation in experiment.ablations.items():
      for v in ablation.variants:
        case = f"{name}-{ablation_name}-{v.label}"
        yield pytest.param(experiment, ablation, v, id=case)


# The data fields a train step sees; the others only choose which examples it is drawn from.
STEP_DATA_FIELDS = ("name", "sampler", "image_size", "channels", "examples_per_class",
                    "pos_fraction", "num_foils", "augment")
_TRACED: dict = {}  # step_key -> trace: variants that differ only in eval.* or data choice


def step_key(config) -> str:
  """`config` without what cannot change the train step: eval.* and the choice of examples."""
  d = config.to_dict()
  del d["eval"]
  d["data"] = {k: d["data"][k] for k in STEP_DATA_FIELDS}
  return json.dumps(d, sort_keys=True, default=str)


@functools.cache
def _base_config(path: str):
  spec = importlib.util.spec_from_file_location(f"trace_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("experiment,ablation,variant", list(_cases()))
def test_variant_traces_one_train_step(experiment, ablation, variant):
  seed = ablation.seeds[0] if ablation.seeds else None
  dirs = {v.label: f"/tmp/runs/{v.label}" for v in ablation.variants}
  config = apply_overrides(_base_config(experiment.path),
                           run_overrides(Run(variant, seed), ablation.variants, dirs))
  key = step_key(config)
  if key not in _TRACED:
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         synthetic_batch(config))
    _TRACED[key] = trace_train_step(config, batch, config.loss.num_classes or CLASSES)
  state, new_state = _TRACED[key]
  # The step returns a state of the same structure, shapes and dtypes as the one it was given
  # (what jit with donation and the scan over steps rely on).
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(new_state) == shapes(state)
