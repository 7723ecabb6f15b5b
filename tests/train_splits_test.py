"""`config.train.parallel_splits`: the encoder on independent slices of the batch in one step.

The reference is always the unsplit computation: the same trainer step with parallel_splits=1,
or the encoder's forward on the whole batch.
"""

import numpy as np
import pytest

from tests import helpers


def _config(model: str, splits: int, sampler: str = "pk"):
  from configs import test as test_config
  cfg = test_config.get_config()
  cfg.model.name = model
  cfg.model.patch_size = 4  # vit_tiny on 16x16 digits: 16 patches + the class token
  cfg.data.sampler = sampler
  if sampler == "pairs":
    cfg.loss.name = "contrastive"
  cfg.train.parallel_splits = splits
  cfg.train.log_diagnostics = False
  # SGD: the update is linear in the gradient. Adam's g / sqrt(v) would turn float noise into
  # lr-sized steps for gradients that are exactly zero in exact arithmetic (ViT's key bias:
  # softmax ignores a per-row constant), and those elements would differ by sign.
  cfg.optimizer.name = "sgd"
  return cfg


def _train(cfg, steps: int = 2, devices=None):
  """Losses and final params of `steps` trainer steps on the real digits pipeline."""
  import jax

  from sim_jax import data, sharding, train
  tr = train.make_setup(cfg, devices=devices)
  state = train.init_state(tr)
  it = data.create_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size, seed=0,
                                  process_index=0, process_count=1)
  step = train.jit_train_step(tr)
  losses = []
  for _ in range(steps):
    state, m = step(state, sharding.host_to_global(next(it), tr.mesh))
    losses.append(float(m.compute()["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("model,sampler,splits", [
    ("vit_tiny", "pk", 4),      # NT-Xent over the re-assembled batch
    ("lenet5", "pairs", 2),     # pairs: z is read back as [B, 2, E], so order must be kept
])
def test_split_step_equals_plain_step(model, sampler, splits):
  import jax
  base_losses, base_params = _train(_config(model, 1, sampler))
  losses, params = _train(_config(model, splits, sampler))
  np.testing.assert_allclose(losses, base_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_slices_are_taken_per_device_block_and_put_back_in_batch_order():
  """With shards=2, splits=2 slice i holds the i-th quarter-block of each device's half."""
  import jax
  import jax.numpy as jnp

  from sim_jax import cpu, train
  cfg = _config("vit_tiny", 1)
  tr = train.make_setup(cfg)
  state = train.init_state(tr)
  images = jax.random.uniform(jax.random.PRNGKey(1), (16,) + tr.image_shape)
  want, want_aux, _ = train.forward(tr.model, state.params, state.batch_stats, images,
                                    train=False)
  seen = []

  def recorder(x, key):  # the real model's forward, recording which rows each slice received
    del key
    seen.append(np.asarray(x))
    return train.forward(tr.model, state.params, state.batch_stats, x, train=False)

  got, got_aux, _ = cpu.forward_in_splits(recorder, images, splits=2, shards=2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_aux["features"], want_aux["features"], rtol=1e-5, atol=1e-6)
  x = np.asarray(images)
  # Device 0 holds rows 0-7, device 1 rows 8-15; slice 0 = rows 0-3 and 8-11.
  np.testing.assert_array_equal(seen[0], np.concatenate([x[0:4], x[8:12]]))
  np.testing.assert_array_equal(seen[1], np.concatenate([x[4:8], x[12:16]]))
  with pytest.raises(ValueError, match="parallel_splits=3"):
    cpu.forward_in_splits(recorder, jnp.zeros((16,) + tr.image_shape), splits=3, shards=2)


def test_batch_norm_models_and_bad_values_are_refused():
  from sim_jax import train
  with pytest.raises(ValueError, match=r"parallel_splits=2.*'resnet_tiny' has batch norm"):
    train.make_setup(_config("resnet_tiny", 2))
  with pytest.raises(ValueError, match="parallel_splits must be >= 1, or 0 for auto; got -1"):
    train.validate_config(_config("lenet5", -1))
  cfg = _config("lenet5", 2)
  cfg.train.grad_accum_chunks = 2
  with pytest.raises(ValueError, match="parallel_splits=2 and config.train.grad_accum_chunks=2"):
    train.validate_config(cfg)


SHARDED = """
import jax, numpy as np
from tests.train_splits_test import _config, _train

out = {n: _train(_config("vit_tiny", splits), devices=jax.devices()[:n])
       for n, splits in ((1, 1), (2, 2))}
np.testing.assert_allclose(out[1][0], out[2][0], rtol=1e-5, atol=1e-6)
for a, b in zip(jax.tree.leaves(out[1][1]), jax.tree.leaves(out[2][1]), strict=True):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK", out[1][0])
"""


@pytest.mark.slow
def test_two_devices_two_splits_match_one_device():
  proc = helpers.run_python(SHARDED, num_devices=2, timeout=300)
  assert "OK" in proc.stdout


@pytest.mark.parametrize("platform,bn,chunks,inputs,want", [
    ("cpu", False, 1, 32, 4),    # the CPU case it is for
    ("cpu", False, 1, 30, 2),    # 4 does not divide 30, 2 does
    ("cpu", False, 1, 15, 1),    # neither divides
    ("cpu", True, 1, 32, 1),     # batch norm: statistics would be per slice
    ("cpu", False, 4, 32, 1),    # GradCache already chunks the encoder
    ("gpu", False, 1, 32, 1),    # GPU / TPU kernels use the whole chip
    ("tpu", False, 1, 32, 1),
])
def test_auto_splits_only_on_cpu_where_exact(platform, bn, chunks, inputs, want):
  from sim_jax import cpu
  cfg = _config("lenet5", 0)
  cfg.train.grad_accum_chunks = chunks
  got, why = cpu.resolve_parallel_splits(cfg, platform=platform, has_batch_norm=bn,
                                           inputs_per_device=inputs)
  assert got == want, why
  assert why.startswith("auto")
  # An explicit value is taken as given, batch norm aside.
  cfg.train.parallel_splits = 3
  assert cpu.resolve_parallel_splits(cfg, platform=platform, has_batch_norm=False,
                                     inputs_per_device=inputs)[0] == 3


def test_trainer_resolves_auto_from_the_model_sampler_and_devices():
  """Auto on this CPU: views double the inputs; batch norm and GradCache turn it off."""
  from sim_jax import train
  cfg = _config("vit_tiny", 0, sampler="views")
  cfg.train.batch_size = 6  # 12 encoder inputs: 4 slices of 3
  assert train.make_setup(cfg).parallel_splits == 4
  cfg = _config("lenet5", 0)
  cfg.train.batch_size = 6  # pk: 6 inputs, 2 slices of 3
  assert train.make_setup(cfg).parallel_splits == 2
  assert train.make_setup(_config("resnet_tiny", 0)).parallel_splits == 1
