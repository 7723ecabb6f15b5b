"""Failure behaviour of real `launch.py` runs (the numbered items of the reliability checklist).

Every test runs the real entry point in child processes (own process group, killed as a group),
with the tiny CPU config, and asserts concrete outcomes: bitwise-equal state, exit codes, the step
in the message, files present or absent.
"""

import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from tests import helpers

pytestmark = pytest.mark.slow

# A run long enough (~100 steps/s here) to be interrupted mid-training after its step-100 save.
LONG = ("--config.train.steps=400", "--config.train.checkpoint_every=100",
        "--config.train.eval_every=0", "--config.train.log_every=50")


def _wait_for(predicate, proc, timeout=240, what=""):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"process exited ({proc.returncode}) before {what}")
    time.sleep(0.005)
  raise AssertionError(f"timed out waiting for {what}")


def _ckpt(workdir, step=None):
  root = os.path.join(workdir, "checkpoints")
  return root if step is None else os.path.join(root, str(step))


def _steps(workdir):
  root = _ckpt(workdir)
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def _read_state(step_dir):
  """The full saved state (params, optimizer, rng, counters) and the data iterator files."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(step_dir, "state"))
  iters = {}
  for path in sorted(glob.glob(os.path.join(step_dir, "data_iter", "process_*.json"))):
    with open(path) as f:
      iters[os.path.basename(path)] = f.read()
  return state, iters


def _assert_bitwise_equal(a_dir, b_dir):
  import jax
  (sa, ia), (sb, ib) = _read_state(a_dir), _read_state(b_dir)
  la, lb = jax.tree_util.tree_flatten_with_path(sa)[0], jax.tree_util.tree_flatten_with_path(sb)[0]
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), f"differs at {jax.tree_util.keystr(path)}"
  assert ia and ia == ib, (ia, ib)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted LONG run: the ground truth for the resume tests."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = helpers.run_launch(workdir, *LONG)
  assert proc.returncode == 0, helpers.describe(proc)
  return workdir


def test_identical_runs_give_identical_losses(tmp_path, reference_run):
  """Item 2: two identical runs, same per-step losses (and bitwise state)."""
  workdir = str(tmp_path / "again")
  proc = helpers.run_launch(workdir, *LONG)
  assert proc.returncode == 0, helpers.describe(proc)
  _assert_bitwise_equal(_ckpt(reference_run, 400), _ckpt(workdir, 400))


def test_kill9_mid_training_then_rerun_is_bitwise_exact(tmp_path, reference_run):
  """Item 1: kill -9 after the step-100 save, re-run the same command: same final state."""
  workdir = str(tmp_path / "killed")
  proc = helpers.start_launch(workdir, *LONG)
  try:
    _wait_for(lambda: os.path.exists(_ckpt(workdir, 100)), proc, what="the step-100 checkpoint")
    helpers.kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    helpers.kill_group(proc)
  assert proc.returncode == -signal.SIGKILL
  assert 400 not in _steps(workdir), "the run finished before it could be killed"
  rerun = helpers.run_launch(workdir, *LONG)
  assert rerun.returncode == 0, helpers.describe(rerun)
  assert "Resumed from step" in rerun.stderr
  _assert_bitwise_equal(_ckpt(reference_run, 400), _ckpt(workdir, 400))


def test_kill9_during_async_save_resumes_from_previous_step(tmp_path):
  """Item 3: the half-written step is ignored, the previous one restored, and re-saved later."""
  workdir = str(tmp_path / "async")
  args = (*LONG, "--config.train.async_checkpoint=True")
  for _attempt in range(3):
    proc = helpers.start_launch(workdir, *args)
    pattern = os.path.join(_ckpt(workdir), "*.orbax-checkpoint-tmp*")
    try:
      # Wait until the first finished save exists, then catch the next one half-written.
      _wait_for(lambda: os.path.exists(_ckpt(workdir, 100)), proc, what="step 100")
      _wait_for(lambda p=pattern: glob.glob(p), proc, what="an in-flight save")
      helpers.kill_group(proc, signal.SIGKILL)
      proc.wait(timeout=30)
    finally:
      helpers.kill_group(proc)
    tmp = glob.glob(pattern)
    if tmp:
      break
    # The save committed between the poll and the kill: try again from the next save.
  else:
    pytest.fail("could not interrupt an asynchronous save in 3 attempts")
  half = int(os.path.basename(tmp[0]).split(".")[0])
  assert half not in _steps(workdir)
  previous = max(_steps(workdir))
  assert previous < half
  rerun = helpers.run_launch(workdir, *args)
  assert rerun.returncode == 0, helpers.describe(rerun)
  assert f"Resumed from step {previous}" in rerun.stderr
  assert not glob.glob(pattern), "the temporary directory was left behind"
  assert 400 in _steps(workdir)
  assert os.path.exists(_ckpt(workdir, half)) or half < min(_steps(workdir)), _steps(workdir)


def _corrupt(step_dir):
  # Overwrite every array file of the state with garbage of the same size.
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p)]
  assert files
  for p in files:
    size = os.path.getsize(p)
    with open(p, "wb") as f:
      f.write(b"\x00garbage" * (size // 8 + 1))


def test_corrupt_latest_checkpoint_falls_back_and_moves_it_aside(tmp_path):
  """Item 4: log step, path and error; move aside; restore the previous step; exit 0."""
  workdir = str(tmp_path / "corrupt")
  first = helpers.run_launch(workdir)
  assert first.returncode == 0, helpers.describe(first)
  assert _steps(workdir) == [3, 6]
  _corrupt(_ckpt(workdir, 6))
  rerun = helpers.run_launch(workdir, "--config.train.steps=9")
  assert rerun.returncode == 0, helpers.describe(rerun)
  assert "step 6" in rerun.stderr and _ckpt(workdir, 6) in rerun.stderr
  assert "Resumed from step 3" in rerun.stderr
  moved = glob.glob(os.path.join(workdir, "checkpoints.corrupt", "6.*"))
  assert moved, os.listdir(workdir)
  assert 9 in _steps(workdir)

  # When no step restores, the run exits non-zero and says so.
  for step in _steps(workdir):
    _corrupt(_ckpt(workdir, step))
  last = helpers.run_launch(workdir, "--config.train.steps=12")
  assert last.returncode == 1, helpers.describe(last)
  assert "No checkpoint" in last.stderr
  # #27 section 7: one line per step, not kilobytes of TensorStore spec; and a re-run refuses to
  # start again from step 0 silently.
  error = last.stderr.split("sim_jax: error: ")[-1]
  assert len(error) < 3000 and "step 9:" in error, error
  again = helpers.run_launch(workdir, "--config.train.steps=12")
  assert again.returncode == 1 and "remove or rename" in again.stderr, helpers.describe(again)
  assert _steps(workdir) == []


def test_sigterm_saves_at_next_step_and_resume_is_exact(tmp_path, reference_run):
  """Item 5: SIGTERM at step k: checkpoint at the next boundary, exit 0, exact resume."""
  workdir = str(tmp_path / "term")
  log = str(tmp_path / "log.txt")
  proc = helpers.start_launch(workdir, *LONG, log_path=log)
  try:
    # Signal after the step-150 log line, well past the step-100 save: waiting only for the
    # step-100 directory raced with the save itself (CI once stopped at exactly step 100, which
    # is correct behaviour but leaves the off-cadence preemption save untested).
    _wait_for(lambda: "[150] train/" in open(log).read(), proc, what="the step-150 log line")
    helpers.kill_group(proc, signal.SIGTERM)
    proc.wait(timeout=120)
  finally:
    helpers.kill_group(proc)
  assert proc.returncode == 0, open(log).read()[-3000:]
  steps = _steps(workdir)
  assert 400 not in steps and max(steps) >= 150, steps
  assert f"Preemption checkpoint written at step {max(steps)}" in open(log).read()
  assert not glob.glob(os.path.join(_ckpt(workdir), "*.orbax-checkpoint-tmp*"))
  rerun = helpers.run_launch(workdir, *LONG)
  assert rerun.returncode == 0, helpers.describe(rerun)
  assert f"Resumed from step {max(steps)}" in rerun.stderr
  _assert_bitwise_equal(_ckpt(reference_run, 400), _ckpt(workdir, 400))


@pytest.mark.parametrize("when", ["compile", "eval"])
def test_sigterm_during_compile_or_eval_exits_cleanly(tmp_path, when):
  """Item 5 (edges): SIGTERM during the first compile or during an evaluation."""
  workdir = str(tmp_path / when)
  log = str(tmp_path / "log.txt")
  marker = "Starting a new run" if when == "compile" else "Evaluating at step 3"
  proc = helpers.start_launch(workdir, log_path=log)
  try:
    _wait_for(lambda: marker in open(log).read(), proc, what=marker)
    helpers.kill_group(proc, signal.SIGTERM)
    proc.wait(timeout=120)
  finally:
    helpers.kill_group(proc)
  text = open(log).read()
  assert proc.returncode == 0, text[-3000:]
  assert "Preemption checkpoint written at step" in text
  step = int(text.split("Preemption checkpoint written at step ")[1].split(";")[0])
  assert step in _steps(workdir)
  if when == "eval":
    assert step == 3
  rerun = helpers.run_launch(workdir)
  assert rerun.returncode == 0 and f"Resumed from step {step}" in rerun.stderr


def test_changed_config_is_refused_with_a_diff(tmp_path):
  """Items 9 and 17: a resumed run with another seed / sampler is refused, cadence may change."""
  workdir = str(tmp_path / "cfg")
  assert helpers.run_launch(workdir).returncode == 0
  proc = helpers.run_launch(workdir, "--config.seed=1", "--config.data.sampler=random")
  assert proc.returncode == 2, helpers.describe(proc)
  assert "seed: checkpoint 0 != now 1" in proc.stderr
  assert "data.sampler: checkpoint 'pk' != now 'random'" in proc.stderr
  assert _steps(workdir) == [3, 6]
  ok = helpers.run_launch(workdir, "--config.train.steps=8", "--config.train.log_every=1")
  assert ok.returncode == 0, helpers.describe(ok)


def test_nonfinite_loss_halts_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
  """Item 12: NaN/Inf halts with its step number; no checkpoint after the last finite step."""
  workdir = str(tmp_path / "nan")
  proc = helpers.run_launch(
      workdir, "--config.optimizer.learning_rate=1e30", "--config.optimizer.warmup_steps=0",
      "--config.optimizer.name=sgd", "--config.optimizer.momentum=0.0",
      "--config.train.checkpoint_every=1", "--config.train.log_every=1",
      "--config.train.steps=20", "--config.train.eval_every=0")
  assert proc.returncode == 1, helpers.describe(proc)
  msg = [line for line in proc.stderr.splitlines() if "Non-finite loss or gradient at step" in line]
  assert msg, helpers.describe(proc)
  bad_step = int(msg[-1].split("at step ")[1].split(" ")[0])
  assert _steps(workdir) and max(_steps(workdir)) == bad_step - 1, (_steps(workdir), bad_step)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))  # flushed


def test_empty_eval_split_is_an_error(tmp_path):
  """Item 19: an empty eval split raises a clear error instead of reporting NaN."""
  proc = helpers.run_launch(str(tmp_path / "empty"), "--config.data.test_fraction=0.0")
  assert proc.returncode != 0
  assert "empty" in proc.stderr and "test" in proc.stderr, helpers.describe(proc)


def test_restore_on_another_device_count(tmp_path):
  """Item 8: saved on 4 fake devices, resumed on 1; Orbax without a target refuses."""
  workdir = str(tmp_path / "topo")
  first = helpers.run_launch(workdir, "--config.train.checkpoint_every=6", num_devices=4)
  assert first.returncode == 0, helpers.describe(first)
  assert "global devices 4" in first.stderr
  second = helpers.run_launch(workdir, "--config.train.steps=9", num_devices=1)
  assert second.returncode == 0, helpers.describe(second)
  assert "Resumed from step 6" in second.stderr
  code = f"""
import orbax.checkpoint as ocp
try:
  with ocp.StandardCheckpointer() as c:
    c.restore({os.path.join(_ckpt(workdir, 6), 'state')!r})
except Exception as e:
  print("REFUSED", type(e).__name__, e)
else:
  print("RESTORED")
"""
  out = helpers.run_python(code, num_devices=2).stdout
  assert "REFUSED" in out, out


def test_no_leftovers_after_normal_end_and_sigterm(tmp_path):
  """Item 20: no grain workers and no temporary checkpoint directories are left behind."""
  for mode in ("normal", "sigterm"):
    workdir = str(tmp_path / mode)
    log = str(tmp_path / f"{mode}.txt")
    proc = helpers.start_launch(workdir, *LONG, "--config.data.worker_count=1", log_path=log)
    try:
      if mode == "sigterm":
        _wait_for(lambda w=workdir: os.path.exists(_ckpt(w, 100)), proc, what="step 100")
        os.kill(proc.pid, signal.SIGTERM)  # Only the main process, as a scheduler would.
      proc.wait(timeout=240)
      assert proc.returncode == 0, open(log).read()[-3000:]
      time.sleep(1.0)
      # Live processes only: multiprocessing's resource tracker exits right after the main
      # process, so nobody but init can reap it, and a container's init may leave it a zombie.
      ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(proc.pid)],
                          capture_output=True, text=True).stdout
      live = [line for line in ps.splitlines() if line.split()[1][0] != "Z"]
      assert not live, f"processes left in the group: {live}"
      assert not glob.glob(os.path.join(_ckpt(workdir), "*tmp*"))
    finally:
      helpers.kill_group(proc)


def test_keep_best_never_deletes_the_latest(tmp_path):
  """Item 14: best-N + latest-N retention keeps the resume point."""
  import grain
  import jax.numpy as jnp

  from sim_jax import checkpointing

  manager = checkpointing.create_manager(str(tmp_path), keep=1, keep_best=2,
                                         best_metric="m", best_mode="max", async_save=False)
  for step, value in enumerate([0.9, 0.8, 0.1, 0.2, 0.3], start=1):
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    checkpointing.save(manager, step, {"x": jnp.full((2,), step)}, it, {"k": 1},
                       metrics={"m": value})
  checkpointing.finalize(manager)
  kept = _steps(str(tmp_path))
  assert kept == [1, 2, 5], kept  # best two (0.9, 0.8) and the latest


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  """Item 18: 2 processes x 1 device == 1 process x 2 devices (loss and metrics)."""
  single = str(tmp_path / "single")
  proc = helpers.run_launch(single, num_devices=2)
  assert proc.returncode == 0, helpers.describe(proc)
  multi = str(tmp_path / "multi")
  procs = _start_pair(multi, tmp_path)
  for p in procs:
    p.wait(timeout=300)
  logs = [open(tmp_path / f"p{i}.txt").read() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  with open(os.path.join(single, "final_metrics.json")) as f:
    a = json.load(f)["metrics"]
  with open(os.path.join(multi, "final_metrics.json")) as f:
    b = json.load(f)["metrics"]
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
  import jax

  from sim_jax import checkpointing
  sa, sb = checkpointing.load_variables(single), checkpointing.load_variables(multi)
  for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def _start_pair(workdir, tmp_path, *args):
  port = helpers.free_port()
  return [helpers.start_launch(workdir, f"--coordinator_address=127.0.0.1:{port}",
                               "--num_processes=2", f"--process_id={i}", *args, num_devices=1,
                               log_path=str(tmp_path / f"p{i}.txt")) for i in range(2)]


def test_sigterm_to_one_of_two_processes(tmp_path):
  """Item 6: SIGTERM to one process: both save the same step and exit 0."""
  workdir = str(tmp_path / "mp")
  procs = _start_pair(workdir, tmp_path, *LONG)
  try:
    _wait_for(lambda: os.path.exists(_ckpt(workdir, 100)), procs[0], what="step 100")
    os.kill(procs[1].pid, signal.SIGTERM)
    for p in procs:
      p.wait(timeout=120)
  finally:
    for p in procs:
      helpers.kill_group(p)
  logs = [open(tmp_path / f"p{i}.txt").read() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  saved = [int(t.split("Preemption checkpoint written at step ")[1].split(";")[0]) for t in logs]
  assert saved[0] == saved[1] and saved[0] in _steps(workdir), (saved, _steps(workdir))
  assert len(glob.glob(os.path.join(_ckpt(workdir, saved[0]), "data_iter", "process_*"))) == 2


def test_dead_peer_does_not_hang_the_survivor(tmp_path):
  """Item 7: kill -9 of one process; the other exits non-zero within a bounded time."""
  workdir = str(tmp_path / "dead")
  procs = _start_pair(workdir, tmp_path, "--config.train.steps=100000",
                      "--config.train.checkpoint_every=100", "--config.train.eval_every=0")
  try:
    _wait_for(lambda: os.path.exists(_ckpt(workdir, 100)), procs[0], what="step 100")
    helpers.kill_group(procs[1], signal.SIGKILL)
    t0 = time.time()
    procs[0].wait(timeout=120)
    elapsed = time.time() - t0
  finally:
    for p in procs:
      helpers.kill_group(p)
  assert procs[0].returncode != 0
  assert elapsed < 120, elapsed


# --------------------------------------------------------------- issue 27: corruption, lock, codes


def _largest_state_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
  return max(files, key=os.path.getsize)


def _flip_byte(path, offset=None):
  size = os.path.getsize(path)
  offset = size // 2 if offset is None else offset
  with open(path, "r+b") as f:
    f.seek(offset)
    b = f.read(1)
    f.seek(offset)
    f.write(bytes([b[0] ^ 0xFF]))


def _truncate_half(path):
  os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_final_step_is_detected_moved_aside_and_saved_again(tmp_path, damage):
  """#27 defects 1 and 2: a truncated or byte-flipped final step is detected (Orbax or the
  integrity record), moved aside, the previous step restored, and the final step saved again,
  bitwise equal to the original."""
  workdir = str(tmp_path / damage)
  args = ("--config.train.steps=9", "--config.train.eval_every=0")
  first = helpers.run_launch(workdir, *args)
  assert first.returncode == 0, helpers.describe(first)
  assert 9 in _steps(workdir) and 6 in _steps(workdir), _steps(workdir)
  original = str(tmp_path / "original9")
  shutil.copytree(_ckpt(workdir, 9), original)
  (_truncate_half if damage == "truncate" else _flip_byte)(_largest_state_file(_ckpt(workdir, 9)))
  rerun = helpers.run_launch(workdir, *args)
  assert rerun.returncode == 0, helpers.describe(rerun)
  assert "Resumed from step 6" in rerun.stderr, helpers.describe(rerun)
  assert glob.glob(os.path.join(workdir, "checkpoints.corrupt", "9.*")), os.listdir(workdir)
  assert 9 in _steps(workdir), _steps(workdir)  # Orbax forgot the moved step and saved it again.
  _assert_bitwise_equal(original, _ckpt(workdir, 9))
  if damage == "flip":  # And what evaluate reads is that step, not an older one.
    ev = helpers.run_launch(workdir, "--mode=evaluate")
    assert ev.returncode == 0 and "step 9" in ev.stdout, helpers.describe(ev)


def _small_state(value):
  import jax.numpy as jnp
  return {"w": jnp.full((4,), value, jnp.float32), "n": jnp.asarray(1, jnp.int32)}


def _abstract_small():
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _small_state(0.0))


@pytest.mark.parametrize("async_save", [False, True])
def test_integrity_record_nonfinite_step_and_resave_in_process(tmp_path, async_save):
  """#27 defects 1 and 2 at the API: every committed step (sync and async) carries a record
  matching its files; a NaN step counts as corrupt, is moved aside and forgotten, so saving that
  step again happens."""
  import grain

  from sim_jax import checkpointing

  def it():
    return iter(grain.MapDataset.range(10).to_iter_dataset())

  workdir = str(tmp_path)
  manager = checkpointing.create_manager(workdir, keep=5, async_save=async_save)
  checkpointing.save(manager, 1, _small_state(1.0), it(), {"k": 1})
  checkpointing.save(manager, 2, _small_state(float("nan")), it(), {"k": 2})
  checkpointing.finalize(manager)
  for step in (1, 2):
    step_dir = _ckpt(workdir, step)
    with open(os.path.join(step_dir, "integrity.json")) as f:
      files = json.load(f)["files"]
    on_disk = sorted(os.path.relpath(os.path.join(r, n), step_dir)
                     for r, _, names in os.walk(step_dir) for n in names if n != "integrity.json")
    assert sorted(files) == on_disk
    for rel, entry in files.items():
      with open(os.path.join(step_dir, rel), "rb") as f:
        assert entry["sha256"] == hashlib.sha256(f.read()).hexdigest(), rel

  manager = checkpointing.create_manager(workdir, keep=5, async_save=async_save)
  step, state, meta = checkpointing.restore_latest(manager, workdir, _abstract_small())
  assert step == 1 and meta == {"k": 1} and np.all(np.asarray(state["w"]) == 1.0)
  assert glob.glob(os.path.join(workdir, "checkpoints.corrupt", "2.*"))
  assert manager.all_steps() == [1]
  assert checkpointing.save(manager, 2, _small_state(2.0), it(), {"k": 2})
  checkpointing.finalize(manager)
  assert _steps(workdir) == [1, 2]
  assert checkpointing.verify_integrity_record(_ckpt(workdir, 2))


def test_all_steps_corrupt_gives_a_short_error_and_a_rerun_refuses(tmp_path):
  """#27 section 7: the all-corrupt error lists the steps with one line each, and a re-run
  refuses to start from step 0 and says how to start over."""
  import grain

  from sim_jax import checkpointing
  workdir = str(tmp_path)
  manager = checkpointing.create_manager(workdir, keep=5, async_save=False)
  for step in (1, 2):
    checkpointing.save(manager, step, _small_state(1.0), iter(grain.MapDataset.range(4)
                                                               .to_iter_dataset()), {"k": 1})
  checkpointing.finalize(manager)
  for step in (1, 2):
    _truncate_half(_largest_state_file(_ckpt(workdir, step)))
  manager = checkpointing.create_manager(workdir, keep=5, async_save=False)
  with pytest.raises(checkpointing.NoRestorableCheckpointError) as e:
    checkpointing.restore_latest(manager, workdir, _abstract_small())
  message = str(e.value)
  assert "step 2:" in message and "step 1:" in message and len(message) < 2000, message
  assert max(len(line) for line in message.splitlines()) <= 400, message
  manager = checkpointing.create_manager(workdir, keep=5, async_save=False)
  with pytest.raises(checkpointing.NoRestorableCheckpointError, match="remove or rename"):
    checkpointing.restore_latest(manager, workdir, _abstract_small())


def test_second_run_on_a_locked_workdir_exits_2_naming_the_holder(tmp_path):
  """#27 defect 3: while another process holds the workdir, a launch exits 2 at once."""
  from sim_jax import workdir as workdir_lib
  workdir = str(tmp_path / "locked")
  with workdir_lib.lock(workdir):
    proc = helpers.run_launch(workdir)
  assert proc.returncode == 2, helpers.describe(proc)
  assert f"pid {os.getpid()}" in proc.stderr and "in use by another run" in proc.stderr
  assert not os.path.exists(_ckpt(workdir)), "the refused run wrote checkpoints"


def test_lock_of_a_killed_holder_never_blocks(tmp_path):
  """#27 defect 3: flock dies with its holder (kill -9), the stale file is harmless."""
  from sim_jax import workdir as workdir_lib
  workdir = str(tmp_path)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from sim_jax import workdir as w\n"
       f"with w.lock({workdir!r}):\n  print('held', flush=True); time.sleep(60)"],
      env=helpers.subprocess_env(), stdout=subprocess.PIPE, text=True, cwd=helpers.REPO_ROOT)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {holder.pid}"):
      with workdir_lib.lock(workdir):
        pass
    holder.kill()
    holder.wait(timeout=30)
  finally:
    holder.kill()
  with workdir_lib.lock(workdir):
    assert os.path.exists(os.path.join(workdir, ".lock"))


def test_unwritable_workdir_exits_2(tmp_path):
  """#27 defect 4: a workdir that cannot be created is bad input (exit 2, one line)."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = helpers.run_launch(str(blocker / "run"))
  assert proc.returncode == 2, helpers.describe(proc)
  assert "cannot be created or written" in proc.stderr and str(blocker) in proc.stderr
  if os.geteuid() != 0:  # root writes through permission bits
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    proc = helpers.run_launch(str(ro))
    assert proc.returncode == 2, helpers.describe(proc)


def test_orbax_save_failure_exits_1(tmp_path):
  """#27 defect 4: a failed save is a failed run (exit 1), even when Orbax raises ValueError."""
  code = f"""
import runpy, sys
import orbax.checkpoint as ocp
def broken(self, *a, **k):
  raise ValueError("injected: missing .zarray")
ocp.StandardCheckpointHandler.async_save = broken
sys.argv = {helpers.launch_cmd(str(tmp_path / 'w'))[1:]!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""
  proc = helpers.run_python(code, check=False)
  assert proc.returncode == 1, helpers.describe(proc)
  assert "Saving checkpoint step 3" in proc.stderr and "injected" in proc.stderr


def test_out_of_range_value_exits_2_naming_the_key(tmp_path):
  """#27 defect 5: range errors exit 2 before anything compiles, naming key and value (one
  launch; the issue's other two values go through the same check, in process)."""
  from configs import test as test_config
  from sim_jax import train
  proc = helpers.run_launch(str(tmp_path / "w"), "--config.optimizer.learning_rate=-1")
  assert proc.returncode == 2, helpers.describe(proc)
  assert "config.optimizer.learning_rate=-1.0: must be in (0, inf)" in proc.stderr
  assert not os.path.exists(_ckpt(str(tmp_path / "w")))
  for key, value, message in [
      ("optimizer.learning_rate", float("nan"), "learning_rate=nan: must be finite"),
      ("data.image_size", -8, "image_size=-8: must be in [1, inf)")]:
    config = test_config.get_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=re.escape(f"config.{key.split('.')[0]}.{message}")):
      train.validate_config(config)


def test_every_numeric_config_field_has_a_range():
  """#27 defect 5: no numeric field of any config goes unchecked; the configs themselves pass."""

  from sim_jax import validation
  names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(helpers.REPO_ROOT, "configs",
                                                                    "*.py"))]
  for name in sorted(n for n in names if n != "__init__"):
    config = importlib.import_module(f"configs.{name}").get_config()
    missing = set(validation.numeric_fields(config)) - set(validation.RANGES)
    assert not missing, (name, missing)
    validation.check_ranges(config)
  # Boundaries, from the interval notation of the table.
  from configs import test as test_config
  for key, good, bad in [("optimizer.b2", 0.0, 1.0), ("data.test_fraction", 0.0, 1.0),
                         ("loss.temperature", 1e-9, 0.0), ("train.steps", 1, 0),
                         ("eval.ks", (1, 5), (0, 5)), ("data.channels", 3, 4)]:
    config = test_config.get_config()
    section, field = key.rsplit(".", 1)
    config[section][field] = good
    validation.check_ranges(config)
    config[section][field] = bad
    with pytest.raises(ValueError, match=f"config.{key}="):
      validation.check_ranges(config)


def _png_header(width, height):
  """A PNG that declares width x height (IHDR) with no pixel data: PIL refuses it at open."""

  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body +
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_query_image_errors_are_one_clear_line(tmp_path):
  """#27 defect 6 and section 7: a decompression bomb and a directory get a clear error."""
  from sim_jax import inference
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(_png_header(20000, 20000))
  with pytest.raises(ValueError, match="bomb.png' cannot be read as an image"):
    inference.read_query_image(str(bomb), (16, 16, 1))
  with pytest.raises(ValueError, match="is a directory"):
    inference.read_query_image(str(tmp_path), (16, 16, 1))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    inference.read_query_image(str(tmp_path / "nope.png"), (16, 16, 1))


def test_single_class_image_folder_says_two_classes_are_needed(tmp_path):
  """#27 section 7: one class directory -> 'needs >= 2 classes', not a batch-size message."""
  from PIL import Image

  from sim_jax.data.builders import image_folder
  (tmp_path / "only").mkdir()
  for i in range(3):
    Image.new("L", (8, 8), i).save(tmp_path / "only" / f"{i}.png")
  with pytest.raises(ValueError, match=">= 2 classes"):
    image_folder.list_images(str(tmp_path), "classes")


def test_nan_halt_without_any_checkpoint_says_so(tmp_path):
  """#27 section 7: the NaN halt never says 'step None'."""
  proc = helpers.run_launch(
      str(tmp_path / "nan0"), "--config.optimizer.learning_rate=1e30",
      "--config.optimizer.warmup_steps=0", "--config.optimizer.name=sgd",
      "--config.optimizer.momentum=0.0", "--config.train.checkpoint_every=0",
      "--config.train.log_every=1", "--config.train.steps=20", "--config.train.eval_every=0")
  assert proc.returncode == 1, helpers.describe(proc)
  assert "no checkpoint was written" in proc.stderr and "step None" not in proc.stderr


def _sigterm_caught(pid):
  with open(f"/proc/{pid}/status") as f:
    caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
  return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def test_sigterm_at_start_up_is_honoured(tmp_path):
  """#27 section 7: SIGTERM is caught before JAX is even loaded, and the run then checkpoints
  at its first step boundary and exits 0 (it used to die with -15 in the first ~2 s)."""
  workdir = str(tmp_path / "early")
  log = str(tmp_path / "log.txt")
  proc = helpers.start_launch(workdir, log_path=log)
  try:
    _wait_for(lambda: _sigterm_caught(proc.pid), proc, timeout=60, what="a SIGTERM handler")
    with open(f"/proc/{proc.pid}/maps") as f:
      loaded_jax = "jaxlib" in f.read()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=240)
  finally:
    helpers.kill_group(proc)
  text = open(log).read()
  assert not loaded_jax, "the SIGTERM handler was installed only after JAX was imported"
  assert proc.returncode == 0, text[-3000:]
  assert "Preemption checkpoint written at step 1" in text, text[-3000:]


def test_step_without_a_record_is_accepted_and_recorded(tmp_path):
  """A step killed between Orbax's commit and its record (or written before records existed)
  restores when its values are finite, and gets its record then; a leftover record temporary
  file is not taken for part of the step."""
  import grain

  from sim_jax import checkpointing
  workdir = str(tmp_path)
  manager = checkpointing.create_manager(workdir, keep=5, async_save=False)
  checkpointing.save(manager, 1, _small_state(1.0), iter(grain.MapDataset.range(4)
                                                         .to_iter_dataset()), {"k": 1})
  checkpointing.finalize(manager)
  step_dir = _ckpt(workdir, 1)
  os.remove(os.path.join(step_dir, "integrity.json"))
  with open(os.path.join(step_dir, "integrity.json.tmp"), "w") as f:
    f.write('{"half a rec')
  manager = checkpointing.create_manager(workdir, keep=5, async_save=False)
  step, _, _ = checkpointing.restore_latest(manager, workdir, _abstract_small())
  checkpointing.finalize(manager)
  assert step == 1 and not os.path.exists(os.path.join(workdir, "checkpoints.corrupt"))
  assert checkpointing.verify_integrity_record(step_dir)
  _flip_byte(_largest_state_file(step_dir))
  with pytest.raises(checkpointing.CorruptCheckpointError, match="checksum differs"):
    checkpointing.verify_integrity_record(step_dir)
