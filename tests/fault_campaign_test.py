"""A seeded, randomized fault campaign against real `launch.py` runs (issue #27).

  python -m pytest tests/fault_campaign_test.py -s        # prints the totals (README figures)
  SIM_JAX_FAULT_SEED=7 SIM_JAX_FAULT_MIN=40 python -m pytest tests/fault_campaign_test.py -s

One uninterrupted reference run of a small configs/test.py variant keeps every step. A second
workdir starts from a copy of the reference's steps (so every round has steps to damage, and the
runs retrain whatever the damage takes away) and is then driven through rounds; each round
- damages the newest checkpoint steps (always leaving an older intact one): one random byte
  XOR-ed with a random non-zero mask, or a truncation to a random shorter length, in a random
  file of the step (array data, Orbax metadata, the data iterator, the record itself);
- launches the same command and kills it (-9, whole process group) at a random moment chosen
  by a seeded trigger: a random delay, during the first compile, mid-training, while an async
  save is in flight (its temporary directory exists), or during an evaluation.
Rounds go on until `SIM_JAX_FAULT_MIN` faults (default 20) were injected. A final launch then
runs to the end. The campaign asserts: no launch exits with anything but 0 or the kill; every
damaged step was detected (moved to checkpoints.corrupt/); every step left in the workdir, the
final one included, is bitwise equal (state and data iterator) to the reference's.

Timing makes the moment of each kill vary between runs; the seed fixes the choices (triggers,
delays, files, offsets, masks). The test takes 2-4 min on 2 busy cores.
"""

import glob
import os
import random
import shutil
import signal
import time

import pytest

from tests import helpers
from tests.reliability_test import _assert_bitwise_equal, _ckpt, _steps

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SIM_JAX_FAULT_SEED", "0"))
MIN_FAULTS = int(os.environ.get("SIM_JAX_FAULT_MIN", "20"))
MAX_ROUNDS = 3 * MIN_FAULTS  # A bound, never reached in practice (>= 1 fault per 1-2 rounds).
STEPS = 60
ARGS = (f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=5",
        "--config.train.eval_every=20", "--config.train.log_every=10",
        "--config.train.async_checkpoint=True", "--config.train.keep_best=0",
        "--config.train.keep_checkpoints=100")
TRIGGERS = ("delay", "compile", "training", "async_save", "eval")
TMP_PATTERN = "*.orbax-checkpoint-tmp*"


def _log(path):
  with open(path, errors="replace") as f:
    return f.read()


def _phase(log_text, workdir):
  """Where the run was when it was killed, from its log and the checkpoint directory."""
  if glob.glob(os.path.join(_ckpt(workdir), TMP_PATTERN)):
    return "async save"
  lines = [line for line in log_text.splitlines() if line.strip()]
  if lines and "Evaluating at step" in lines[-1]:
    return "eval"
  if "Train steps per execution" in log_text:
    return "training"
  if "Starting a new run" in log_text or "Resumed from step" in log_text:
    return "compile"
  return "start-up"


def _trigger(name, rng, log, workdir, t_ref):
  """A predicate that turns true at the moment to kill (None: a plain delay)."""
  t0 = time.time()
  if name == "delay":
    delay = rng.uniform(1.0, 0.6 * t_ref)
    return lambda: time.time() - t0 > delay
  if name == "compile":
    delay = rng.uniform(0.0, 1.0)
    marks = ("Starting a new run", "Resumed from step")
    state = {}
    def compiling():
      if "t" not in state and any(m in _log(log) for m in marks):
        state["t"] = time.time()
      return "t" in state and time.time() - state["t"] > delay
    return compiling
  if name == "training":
    delay = rng.uniform(0.0, 2.0)
    state = {}
    def training():
      if "t" not in state and "Train steps per execution" in _log(log):
        state["t"] = time.time()
      return "t" in state and time.time() - state["t"] > delay
    return training
  if name == "async_save":
    skip = rng.randint(0, 2)  # Kill in the (skip+1)-th save seen.
    state = {"seen": 0, "in": False}
    def saving():
      now = bool(glob.glob(os.path.join(_ckpt(workdir), TMP_PATTERN)))
      if now and not state["in"]:
        state["seen"] += 1
      state["in"] = now
      return now and state["seen"] > skip
    return saving
  delay = rng.uniform(0.0, 0.3)
  state = {}
  def evaluating():
    if "t" not in state and "Evaluating at step" in _log(log):
      state["t"] = time.time()
    return "t" in state and time.time() - state["t"] > delay
  return evaluating


def _run_and_kill(workdir, trigger, log):
  """Starts a launch and kills it when `trigger()`; returns (exit code, phase or None)."""
  proc = helpers.start_launch(workdir, *ARGS, log_path=log)
  try:
    while proc.poll() is None:
      if trigger():
        phase = _phase(_log(log), workdir)
        helpers.kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)
        return proc.returncode, phase
      time.sleep(0.003)
    return proc.returncode, None  # Finished before the trigger fired: no fault.
  finally:
    helpers.kill_group(proc)


def _damage_newest_steps(workdir, rng, damaged):
  """Damages 1-4 of the newest steps that carry a record, leaving an intact step below them, so
  the damaged steps are always the top of the restore order. `damaged` holds the inodes of step
  directories damaged before and not yet moved aside (a round killed before its restore): they
  are passed over, so each damaged step is moved aside exactly once. Returns one description per
  damaged step."""
  steps = [s for s in sorted(_steps(workdir), reverse=True)
           if os.stat(_ckpt(workdir, s)).st_ino not in damaged]
  count = min(rng.randint(1, 4), len(steps) - 1)
  done = []
  for step in steps[:count]:
    step_dir = _ckpt(workdir, step)
    if not os.path.exists(os.path.join(step_dir, "integrity.json")):
      break  # A step killed between commit and record: restore stops there (see checkpointing).
    damaged.add(os.stat(step_dir).st_ino)
    files = sorted(p for p in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
                   if os.path.isfile(p) and os.path.getsize(p) > 0)
    path = rng.choice(files)
    size = os.path.getsize(path)
    if rng.random() < 0.5:
      offset, mask = rng.randrange(size), rng.randint(1, 255)
      with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))
      done.append(("flip", step, os.path.relpath(path, step_dir)))
    else:
      os.truncate(path, rng.randrange(size))
      done.append(("truncate", step, os.path.relpath(path, step_dir)))
  return done


def _moved_aside(workdir):
  root = os.path.join(workdir, "checkpoints.corrupt")
  return [n for n in os.listdir(root) if not n.endswith(".error.txt")] \
      if os.path.isdir(root) else []


def test_randomized_fault_campaign(tmp_path):
  rng = random.Random(SEED)
  t_start = time.time()
  reference = str(tmp_path / "reference")
  ref = helpers.run_launch(reference, *ARGS)
  t_ref = time.time() - t_start
  assert ref.returncode == 0, helpers.describe(ref)
  assert _steps(reference) == list(range(5, STEPS + 1, 5))

  workdir = str(tmp_path / "faulted")
  for step in _steps(reference):
    shutil.copytree(_ckpt(reference, step), _ckpt(workdir, step), symlinks=True)
  copied = {os.stat(_ckpt(workdir, s)).st_ino for s in _steps(workdir)}
  kills, damages, bad_exits, rounds, damaged = [], [], [], 0, set()
  while len(kills) + len(damages) < MIN_FAULTS and rounds < MAX_ROUNDS:
    rounds += 1
    damages += _damage_newest_steps(workdir, rng, damaged)
    name = rng.choice(TRIGGERS)
    log = str(tmp_path / f"round{rounds}.txt")
    code, phase = _run_and_kill(workdir, _trigger(name, rng, log, workdir, t_ref), log)
    if phase is not None:
      kills.append((name, phase))
    if code not in (0, -signal.SIGKILL):
      bad_exits.append((rounds, code, _log(log)[-3000:]))
  final = helpers.run_launch(workdir, *ARGS)
  # Steps written by the faulted runs themselves (not the copies they started from).
  regenerated = [s for s in _steps(workdir) if os.stat(_ckpt(workdir, s)).st_ino not in copied]

  compared = _steps(workdir)
  equal = 0
  for step in compared:
    try:
      _assert_bitwise_equal(_ckpt(reference, step), _ckpt(workdir, step))
      equal += 1
    except AssertionError:
      pass
  moved = _moved_aside(workdir)
  by_phase = {}
  for _, phase in kills:
    by_phase[phase] = by_phase.get(phase, 0) + 1
  kinds = {k: sum(1 for d in damages if d[0] == k) for k in ("flip", "truncate")}
  survived = len(kills) + len(damages) if not bad_exits and final.returncode == 0 else 0
  print(f"\nfault campaign (seed {SEED}, {rounds} rounds, {time.time() - t_start:.0f} s): "
        f"{len(kills) + len(damages)} faults injected = {len(kills)} kill -9 "
        f"({', '.join(f'{n} {p}' for p, n in sorted(by_phase.items()))}) + {len(damages)} "
        f"damaged steps ({kinds['flip']} byte flips, {kinds['truncate']} truncations); "
        f"survived {survived}; damaged steps detected and moved aside {len(moved)}; "
        f"bitwise-equal to the reference: {equal} of {len(compared)} checkpoint steps "
        f"({len(regenerated)} written by the faulted runs), final "
        f"step {STEPS} {'yes' if STEPS in compared and equal == len(compared) else 'NO'}")
  assert not bad_exits, bad_exits
  assert final.returncode == 0, helpers.describe(final)
  assert len(kills) + len(damages) >= MIN_FAULTS
  assert len(moved) == len(damages), (moved, damages)
  assert STEPS in regenerated and equal == len(compared), (equal, compared, regenerated)
