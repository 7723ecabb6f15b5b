"""`config.train.steps_per_execution`: k train steps in one jitted execution.

References: k separate calls of the one-step function (the same updates and metrics), a
step-by-step loop for the execution plan, and the steps a run logs and checkpoints at.
"""

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _reference_sizes(start, end, k, boundaries):
  """Executions walked one step at a time: a k-step execution may end at a boundary but not
  run through one, nor past `end`."""
  out, step = [], start
  while step < end:
    fits = step + k <= end and not any(step < b < step + k for b in boundaries)
    out.append(k if fits else 1)
    step += out[-1]
  return out


def test_execution_sizes_end_at_every_boundary():
  from sim_jax import cpu
  assert cpu.execution_sizes(0, 10, 4, {5, 10}.__contains__) == [4, 1, 4, 1]
  assert cpu.execution_sizes(7, 7, 4, lambda s: False) == []
  rng = np.random.default_rng(0)
  for _ in range(200):
    start, k = int(rng.integers(0, 20)), int(rng.integers(1, 6))
    end = start + int(rng.integers(0, 40))
    boundaries = set(rng.integers(0, 70, size=int(rng.integers(0, 8))).tolist())
    sizes = cpu.execution_sizes(start, end, k, boundaries.__contains__)
    assert sizes == _reference_sizes(start, end, k, boundaries), (start, end, k, boundaries)
    ends = set((start + np.cumsum(sizes, dtype=int)).tolist())
    assert sum(sizes) == end - start
    assert {b for b in boundaries if start < b <= end} <= ends  # host work sees its step


@pytest.mark.parametrize("temp_mib, platform, requested, want", [
    (3455, "cpu", 0, 4),   # ViT-Ti's step: mapped anew at every execution
    (20, "cpu", 0, 1),     # below glibc's mmap threshold: reused from the heap
    (3455, "gpu", 0, 1),
    (20, "cpu", 3, 3),     # explicit values are taken as given
])
def test_auto_steps_per_execution(temp_mib, platform, requested, want):
  from configs import test as test_config
  from sim_jax import cpu
  cfg = test_config.get_config()
  cfg.train.steps_per_execution = requested
  k, why = cpu.resolve_steps_per_execution(cfg, platform=platform, temp_bytes=temp_mib * 2**20)
  assert k == want and why


def test_negative_steps_per_execution_is_refused():
  from configs import test as test_config
  from sim_jax import train
  cfg = test_config.get_config()
  cfg.train.steps_per_execution = -1
  with pytest.raises(ValueError, match="steps_per_execution"):
    train.validate_config(cfg)


def test_four_steps_in_one_execution_equal_four_calls():
  import jax

  from configs import test as test_config
  from sim_jax import data, sharding, train
  cfg = test_config.get_config()
  cfg.optimizer.name = "sgd"  # linear in the gradient: float noise stays noise-sized
  tr = train.make_setup(cfg)
  it = data.create_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size, seed=0,
                                  process_index=0, process_count=1)
  host = [next(it) for _ in range(4)]

  state = train.init_state(tr)
  one = train.jit_train_step(tr)
  losses, merged = [], None
  for b in host:
    state, m = one(state, sharding.host_to_global(b, tr.mesh))
    losses.append(float(m.compute()["loss"]))
    merged = m if merged is None else merged.merge(m)
  want_params = jax.tree.map(np.asarray, state.params)

  state = train.init_state(tr)
  state, m4 = train.jit_train_step(tr, 4)(state, sharding.steps_to_global(host, tr.mesh))
  assert int(state.step) == 4
  got = {k: float(v) for k, v in m4.compute().items()}
  np.testing.assert_allclose(got["loss"], np.mean(losses), rtol=1e-5)
  want = {k: float(v) for k, v in merged.compute().items()}
  for key in ("grad_norm", "learning_rate", "margin", "nonfinite_skips"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  # The embedding diagnostics: averages over the four steps, as four calls merged give them.
  diag = [k for k in want if k.startswith(train.DIAGNOSTICS_PREFIX)]
  assert diag and set(diag) == {k for k in got if k.startswith(train.DIAGNOSTICS_PREFIX)}
  for key in diag:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, state.params)),
                  jax.tree.leaves(want_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _scalar_steps(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator
  ea = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0, "scalars": 0})
  ea.Reload()
  events = ea.Tensors(tag) if tag in ea.Tags()["tensors"] else ea.Scalars(tag)
  return [e.step for e in events]


def test_run_with_four_steps_per_execution_logs_and_checkpoints_at_its_steps(tmp_path):
  """12 steps, log every 6, checkpoint every 8: executions of 4, 1, 1, 1, 1, 4 steps; the
  events and checkpoints land at the configured steps, and the final parameters are those of
  the one-step-per-execution run."""
  import jax

  from configs import test as test_config
  from sim_jax import checkpointing, train
  params = {}
  for k in (1, 4):
    cfg = test_config.get_config()
    cfg.optimizer.name = "sgd"
    cfg.train.steps, cfg.train.log_every = 12, 6
    cfg.train.eval_every, cfg.train.checkpoint_every = 0, 8
    cfg.train.steps_per_execution = k
    workdir = str(tmp_path / f"k{k}")
    train.train_and_evaluate(cfg, workdir)
    assert _scalar_steps(workdir, "train/loss") == [6, 12]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["8", "12"]
    tr = train.make_setup(cfg)
    manager = checkpointing.create_manager(workdir, keep=2, keep_best=0, best_metric=None,
                                           best_mode="max", async_save=False)
    step, restored, record = checkpointing.restore_latest(
        manager, workdir, train.abstract_save_target(tr), None,
        check_meta=lambda r, c=cfg, w=workdir: checkpointing.check_resume(r, c, w))
    checkpointing.finalize(manager)
    assert step == 12 and record["config"]["train"]["steps_per_execution"] == k
    params[k] = jax.tree.map(np.asarray, train.state_from_restored(tr, restored).params)
  for a, b in zip(jax.tree.leaves(params[4]), jax.tree.leaves(params[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


TWO_DEVICES = """
import jax, numpy as np
from configs import test as test_config
from sim_jax import data, sharding, train

cfg = test_config.get_config()
cfg.optimizer.name = "sgd"
cfg.train.log_diagnostics = False
it = data.create_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size, seed=0,
                                process_index=0, process_count=1)
host = [next(it) for _ in range(4)]
one = train.make_setup(cfg, devices=jax.devices()[:1])
state = train.init_state(one)
step = train.jit_train_step(one)
for b in host:
  state, _ = step(state, sharding.host_to_global(b, one.mesh))
two = train.make_setup(cfg, devices=jax.devices()[:2])
stacked = sharding.steps_to_global(host, two.mesh)
assert stacked["image"].shape[:2] == (4, cfg.train.batch_size), stacked["image"].shape
assert len(stacked["image"].sharding.device_set) == 2
state2, _ = train.jit_train_step(two, 4)(train.init_state(two), stacked)
for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state2.params), strict=True):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
print("OK")
"""


def test_stacked_batches_on_two_devices_match_single_steps_on_one():
  from tests import helpers
  proc = helpers.run_python(TWO_DEVICES, num_devices=2, timeout=300)
  assert "OK" in proc.stdout, helpers.describe(proc)
