"""sim_jax.experiments.search: the design space builds, and the search resumes after kill -9.

The resume test runs the real search command in a subprocess against a stand-in launch.py (the
search launches whatever launch.py sits in --root): each trial then takes milliseconds, and a
hold file keeps the second trial running until the test has killed the search's process group.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from configs import test as test_config
from sim_jax import models

optuna = pytest.importorskip("optuna", reason="the search needs the `search` extra (optuna)")
search = pytest.importorskip("sim_jax.experiments.search")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_trial_overrides_turn_kernel_sets_into_tuples():
  got = search.trial_overrides({"model.multiscale_kernels": "3,5,7", "model.width": 8})
  assert got == {"model.multiscale_kernels": (3, 5, 7), "model.width": 8}
  assert set(search.SPACE) == {"model.multiscale_kernels", "model.width",
                               "model.multiscale_stages", "model.attention",
                               "model.embedding_dim"}


def _kernel_shapes(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape) for path, v in flat
          if str(getattr(path[-1], "key", "")) == "kernel" and "block" in str(path)}


def test_kernels_and_stages_shape_the_backbone():
  config = test_config.get_config().model
  config.name, config.width, config.attention = "multiscale", 4, "none"
  config.multiscale_kernels, config.multiscale_stages = (1, 3), 2
  params = models.get_model(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  shapes = {"/".join(k.split("/")[-3:]): v for k, v in _kernel_shapes(params["params"]).items()}
  # Block 1: 4 stem channels -> 4 per branch; block 2: 2 branches x 4 -> 8 per branch.
  assert shapes == {"block1/conv1x1/kernel": (1, 1, 4, 4), "block1/conv3x3/kernel": (3, 3, 4, 4),
                    "block2/conv1x1/kernel": (1, 1, 8, 8), "block2/conv3x3/kernel": (3, 3, 8, 8)}
  config.multiscale_kernels = (1, 4)
  with pytest.raises(ValueError, match="multiscale_kernels"):
    models.get_model(config)


FAKE_LAUNCH = textwrap.dedent("""\
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
    run_dir = args["workdir"]
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "launches.txt"), "a") as f:
      f.write(json.dumps(sorted(k for k in args if k.startswith("config.model"))) + "\\n")
      f.write(json.dumps({k: args[k] for k in args if k.startswith("config.")}) + "\\n")
    hold = os.path.join(os.path.dirname(__file__), "hold_" + os.path.basename(run_dir))
    while os.path.exists(hold):
      time.sleep(0.05)
    value = int(args["config.model.width"]) / 16 + int(args["config.model.embedding_dim"]) / 1000
    with open(os.path.join(run_dir, "final_metrics.json"), "w") as f:
      json.dump({"metrics": {"validation/map@r": value}}, f)
    """)

CONFIG = textwrap.dedent("""\
    from configs import test
    def get_config():
      config = test.get_config()
      config.model.name = "multiscale"
      return config
    def get_ablations():
      return {}
    """)


@pytest.mark.slow
def test_search_resumes_after_kill_without_repeating_a_trial(tmp_path):
  (tmp_path / "launch.py").write_text(FAKE_LAUNCH)
  (tmp_path / "cfg.py").write_text(CONFIG)
  (tmp_path / "hold_trial_001").write_text("")
  work = tmp_path / "search"
  cmd = [sys.executable, "-m", "sim_jax.experiments.search", f"--config={tmp_path / 'cfg.py'}",
         f"--workdir={work}", "--trials=4", "--startup_trials=2", f"--root={tmp_path}",
         "--objective=validation/map@r", "--set", "train.steps=3"]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  started = work / "trial_001" / "launches.txt"
  deadline = time.time() + 300
  while not started.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  assert started.exists(), "the second trial never started"
  os.killpg(proc.pid, signal.SIGKILL)  # the search and its launch.py child, mid-trial
  proc.wait()
  first_params = started.read_text().splitlines()[1]
  os.remove(tmp_path / "hold_trial_001")

  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  record = json.loads((work / "search.json").read_text())
  assert [t["number"] for t in record["trials"]] == [0, 1, 2, 3]
  assert all(t["state"] == "COMPLETE" for t in record["trials"])
  launches = {n: (work / f"trial_{n:03d}" / "launches.txt").read_text().splitlines()
              for n in range(4)}
  # Trial 0 finished before the kill: not launched again. Trial 1 was interrupted: finished
  # under its own number with its own parameters. Trials 2 and 3 are new.
  assert [len(launches[n]) // 2 for n in range(4)] == [1, 2, 1, 1]
  assert launches[1][3] == first_params
  best = json.loads((work / "best.json").read_text())
  values = [t["value"] for t in record["trials"]]
  assert best["value"] == max(values) and best["trial"] == values.index(max(values))
  assert "train.steps=3" in (work / "search.md").read_text()
