"""Cross-batch memory (sim_jax.losses.memory): the ring buffer against a NumPy FIFO, the loss of a
train step with memory against a NumPy NT-Xent over [batch; memory], kill -9 + resume bitwise,
and 4 fake devices against one."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import checkpointing, losses, train
from sim_jax.losses import memory as xbm
from tests import helpers
from tests.reliability_test import _assert_bitwise_equal, _ckpt, _read_state, _steps, _wait_for

SIZE, START, BATCH, TEMP = 32, 2, 16, 0.1


def ref_nt_xent(x, y, t=TEMP):
  """Supervised NT-Xent by loops: per positive (i, p), -log e^{s_ip/t} / (e^{s_ip/t} +
  sum_{y_k != y_i} e^{s_ik/t}); mean over every positive pair."""
  x = np.asarray(x, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  s = x @ x.T / t
  terms = []
  for i in range(len(y)):
    negs = [s[i, k] for k in range(len(y)) if y[k] != y[i]]
    for p in range(len(y)):
      if p != i and y[p] == y[i]:
        terms.append(np.logaddexp.reduce([s[i, p], *negs]) - s[i, p])
  return float(np.mean(terms))


# ------------------------------------------------------------------------------ the ring buffer
def test_enqueue_is_a_fifo_ring_and_view_waits_for_start_and_full():
  mem = xbm.init(8, 2)
  rows = [np.full((4, 2), k + 1.0, np.float32) for k in range(3)]
  ready = []
  for k, r in enumerate(rows):
    ready.append(bool(xbm.view(mem, jnp.int32(k), 1)["ready"]))
    mem = jax.jit(xbm.enqueue)(mem, jnp.asarray(r), jnp.full((4,), k, jnp.int32))
  # NumPy FIFO: slots 0-3 <- batch 0, 4-7 <- batch 1, then batch 2 overwrites the oldest (0-3).
  np.testing.assert_array_equal(mem["z"][:, 0], [3, 3, 3, 3, 2, 2, 2, 2])
  np.testing.assert_array_equal(mem["labels"], [2, 2, 2, 2, 1, 1, 1, 1])
  assert bool(mem["valid"].all()) and int(mem["ptr"]) == 4
  assert ready == [False, False, True]  # step 1 >= start but half empty; step 2 full
  skipped = xbm.enqueue(mem, jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), apply=False)
  jax.tree.map(np.testing.assert_array_equal, skipped, mem)  # a non-finite step writes nothing
  with pytest.raises(ValueError, match="memory.size=8 is smaller than the 12"):
    xbm.enqueue(mem, jnp.zeros((12, 2)), jnp.zeros(12, jnp.int32))


def test_loss_with_memory_is_the_dense_loss_over_the_concatenation():
  """Value and gradient of triplet-with-memory == the dense loss over [z; memory] (NumPy loop
  for the value); the memory rows get no gradient."""
  rng = np.random.default_rng(0)
  z, y = rng.normal(size=(6, 3)), np.array([0, 0, 1, 1, 2, 2], np.int32)
  mem = dict(xbm.init(4, 3), z=jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
             labels=jnp.asarray([1, 2, 3, 3], jnp.int32), valid=jnp.ones(4, bool))
  view = xbm.view(mem, jnp.int32(5), 0)

  def f(zz, memory_z):
    fn = lambda a, b: losses.triplet(a, b, 0.5, "batch_all")
    return xbm.loss(fn, zz, jnp.asarray(y), dict(view, z=memory_z))

  (value, (g_z, g_mem)) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
      jnp.asarray(z, jnp.float32), mem["z"])
  x = np.concatenate([z, np.asarray(mem["z"])])
  labels = np.concatenate([y, np.asarray(mem["labels"])])
  d = np.linalg.norm(x[:, None] - x[None], axis=-1)
  terms = [d[a, p] - d[a, n] + 0.5 for a in range(10) for p in range(10) for n in range(10)
           if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
  np.testing.assert_allclose(value, np.mean([t for t in terms if t > 0]), rtol=1e-5)
  dense = jax.jit(jax.grad(lambda a: losses.triplet(jnp.concatenate([a, mem["z"]]),
                                            jnp.asarray(labels), 0.5, "batch_all")))
  np.testing.assert_allclose(g_z, dense(jnp.asarray(z, jnp.float32)), rtol=1e-5, atol=1e-7)
  assert not np.any(np.asarray(g_mem))


# ------------------------------------------------------------------------- train step, in process
def _config(size=SIZE, start=START):
  c = test_config.get_config()
  c.train.memory.size, c.train.memory.start_step = size, start
  c.train.log_diagnostics = False
  c.train.parallel_splits = 1  # z recomputed below must be the step's z to the last bit
  return c


def _batches(image_shape, n):
  rng = np.random.default_rng(1)
  return [{"image": rng.integers(0, 256, (BATCH, *image_shape), dtype=np.uint8),
           "label": np.repeat(rng.permutation(10)[:4], 4).astype(np.int32),
           "index": np.arange(BATCH, dtype=np.int32)} for _ in range(n)]


def test_train_step_loss_with_memory_equals_numpy_over_batch_and_memory():
  config = _config()
  setup = train.make_setup(config)
  step = jax.jit(setup.train_step)
  vectors = jax.jit(lambda s, b: train.compute_loss(
      s.params, s.batch_stats, b, jax.random.fold_in(s.rng, s.step), config=config,
      model=setup.model, pair_head=None, augment_fn=train.make_augment_fn(config.data.augment),
      mesh=setup.mesh)[1][1:])
  state = train.init_state(setup)
  ring_z, ring_y = np.zeros((SIZE, 16)), np.zeros(SIZE, np.int32)
  for k, host_batch in enumerate(_batches(setup.image_shape, 4)):
    z, y = (np.asarray(a) for a in vectors(state, host_batch))
    if k < SIZE // BATCH:  # memory not full yet: the batch alone
      expected = ref_nt_xent(z, y)
    else:
      expected = ref_nt_xent(np.concatenate([z, ring_z]), np.concatenate([y, ring_y]))
    state, metrics = step(state, host_batch)
    np.testing.assert_allclose(metrics.compute()["loss"], expected, rtol=2e-5)
    slots = (k * BATCH + np.arange(BATCH)) % SIZE
    ring_z[slots], ring_y[slots] = z, y
    # z recomputed by another program (no backward fused in): equal up to the last bit.
    np.testing.assert_allclose(state.memory["z"], ring_z, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(state.memory["labels"], ring_y)


def test_bad_memory_config_is_refused_naming_the_key():
  for size, start, match in ((-1, 0, r"memory.size must be >= 0 \(None or 0 = off\), got -1"),
                             (32, -3, "memory.start_step must be >= 0, got -3")):
    with pytest.raises(ValueError, match=match):
      train.validate_config(_config(size, start))
  c = _config()
  c.loss.name, c.data.sampler = "contrastive", "pairs"
  with pytest.raises(ValueError, match="memory.size=32.*'contrastive'"):
    train.validate_config(c)


def test_memory_size_cannot_change_on_resume_and_older_checkpoints_resume_without_one():
  record = checkpointing.config_to_dict(_config())
  assert checkpointing.config_diff(record, checkpointing.config_to_dict(_config(size=64))) == [
      "  train.memory.size: checkpoint 32 != now 64"]
  older = checkpointing.config_to_dict(_config(size=None))
  del older["train"]["memory"]  # written before the memory existed
  assert checkpointing.config_diff(older, checkpointing.config_to_dict(_config(size=None))) == []


# ------------------------------------------------------------------------------ kill -9, resume
MEMORY = ("--config.train.memory.size=32", "--config.train.memory.start_step=2")
LONG = MEMORY + ("--config.train.steps=200", "--config.train.checkpoint_every=20",
                 "--config.train.eval_every=0", "--config.train.log_every=50")


@pytest.mark.slow
def test_memory_survives_kill9_and_resume_bitwise(tmp_path):
  reference = str(tmp_path / "reference")
  proc = helpers.run_launch(reference, *LONG)
  assert proc.returncode == 0, helpers.describe(proc)
  workdir = str(tmp_path / "killed")
  proc = helpers.start_launch(workdir, *LONG)
  try:
    _wait_for(lambda: os.path.exists(_ckpt(workdir, 20)), proc, what="the step-20 checkpoint")
    helpers.kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    helpers.kill_group(proc)
  assert proc.returncode == -signal.SIGKILL and 200 not in _steps(workdir)
  state20, _ = _read_state(_ckpt(workdir, 20))
  assert np.all(state20["memory"]["valid"]) and state20["memory"]["z"].shape == (32, 16)
  rerun = helpers.run_launch(workdir, *LONG)
  assert rerun.returncode == 0, helpers.describe(rerun)
  assert "Resumed from step" in rerun.stderr
  _assert_bitwise_equal(_ckpt(reference, 200), _ckpt(workdir, 200))  # memory included


# ----------------------------------------------------------------------------- 4 fake devices
FOUR_DEVICES = """
import json
import jax, numpy as np
from sim_jax import sharding, train
from tests import train_memory_test as t

config = t._config()
out = {}
for n in (1, 4):
  setup = train.make_setup(config, devices=jax.devices()[:n])
  step = jax.jit(setup.train_step)
  state = train.init_state(setup)
  batches = t._batches(setup.image_shape, 3)
  for b in batches[:2]:
    state, m = step(state, sharding.host_to_global(b, setup.mesh))
  # The step-2 gradient, memory full and read: the loss over [batch; memory] on n devices.
  view = train.xbm.view(state.memory, state.step, config.train.memory.start_step)
  grads = jax.jit(setup.train_step.keywords["grads_fn"])(
      state.params, state.batch_stats, sharding.host_to_global(batches[2], setup.mesh),
      jax.random.fold_in(state.rng, state.step), view)[1]
  state, m = step(state, sharding.host_to_global(batches[2], setup.mesh))
  spec = state.memory["z"].sharding.spec
  out[n] = dict(z=np.asarray(state.memory["z"]).tolist(),
                labels=np.asarray(state.memory["labels"]).tolist(),
                ptr=int(state.memory["ptr"]), loss=float(m.compute()["loss"]),
                grads=[np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)],
                by_rows=spec == jax.sharding.PartitionSpec("data"),
                shard_rows=state.memory["z"].addressable_shards[0].data.shape[0])
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_four_devices_memory_and_gradients_equal_one_device():
  proc = helpers.run_python(FOUR_DEVICES, num_devices=4, timeout=600)
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  one, four = out["1"], out["4"]
  assert four["by_rows"] and four["shard_rows"] == SIZE // 4
  assert one["shard_rows"] == SIZE
  np.testing.assert_allclose(four["z"], one["z"], rtol=1e-5, atol=1e-6)
  assert four["labels"] == one["labels"] and four["ptr"] == one["ptr"] == (3 * BATCH) % SIZE
  np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
  for g4, g1 in zip(four["grads"], one["grads"]):
    np.testing.assert_allclose(g4, g1, rtol=1e-4, atol=1e-6)
