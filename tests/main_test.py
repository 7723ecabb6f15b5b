"""sim_jax.main, the command line (`python launch.py`, `python -m sim_jax`, `sim-jax`).

Each case runs the real program in a child process and checks its exit code and output against
what the README promises: --help exits 0, bad config keys and values exit 2 with one line,
`--mode=config` prints the comments the config files hold, `FILE:ARG` reaches get_config(ARG).
"""

import os
import re
import subprocess
import sys

import pytest

from sim_jax import config_tools
from tests import helpers

DEFAULT = os.path.join(helpers.REPO_ROOT, "configs", "default.py")
TEST = os.path.join(helpers.REPO_ROOT, "configs", "test.py")


def _run(*args, module=False, timeout=120, cwd=helpers.REPO_ROOT):
  entry = ["-m", "sim_jax"] if module else [helpers.LAUNCH]
  return helpers.run_command([sys.executable, *entry, *args], timeout=timeout, cwd=cwd)


def test_help_exits_0_and_says_how_to_list_config_fields():
  proc = _run("--help")
  assert proc.returncode == 0, helpers.describe(proc)
  assert "--mode=config" in proc.stdout and "--workdir" in proc.stdout


@pytest.mark.parametrize("overrides, expected", [
    (["--config.train.stepz=3", "--config.optimzer.learning_rate=0.1"],
     "unknown config key 'train.stepz' (Did you mean 'train.steps'?); unknown config key "
     "'optimzer.learning_rate' (Did you mean 'optimizer.learning_rate'?)"),
    (["--config.train.steps=abc"], "--config.train.steps=abc: invalid literal for int()"),
])
def test_bad_config_key_or_value_exits_2_with_one_line(overrides, expected, tmp_path):
  proc = _run(f"--config={TEST}", f"--workdir={tmp_path}", *overrides)
  assert proc.returncode == 2, helpers.describe(proc)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("sim_jax: error: "), proc.stderr
  assert expected in lines[0]
  assert not os.listdir(tmp_path)  # refused before anything ran


def test_missing_config_file_or_variant_exits_2(tmp_path):
  proc = _run("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "no such config file 'configs/nope.py'" in proc.stderr
  proc = _run(f"--config={DEFAULT}:huge", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "unknown variant 'huge'" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def _comment_in_source(path, assignment):
  """The comment after `assignment` on its line of the raw file (the independent reference)."""
  with open(path) as f:
    line = next(line for line in f if line.strip().startswith(assignment))
  return line.split("#", 1)[1].strip()


def test_mode_config_prints_every_field_with_its_value_and_comment():
  proc = _run(f"--config={DEFAULT}:small", "--config.train.batch_size=64", "--mode=config",
              module=True)
  assert proc.returncode == 0, helpers.describe(proc)
  lines = proc.stdout.strip().splitlines()
  fields = {line.split(" = ", 1)[0]: line for line in lines}
  steps = _comment_in_source(DEFAULT, "config.train.steps = ")
  assert fields["train.steps"] == f"train.steps = 200  # {steps}"  # the small variant's value
  batch = _comment_in_source(DEFAULT, "config.train.batch_size = ")
  assert fields["train.batch_size"] == f"train.batch_size = 64  # {batch}"  # the override
  data_config = os.path.join(helpers.REPO_ROOT, "sim_jax", "data", "config.py")
  name = _comment_in_source(data_config, "c.name = \"glyph_symbols\"")
  assert fields["data.name"] == f"data.name = 'glyph_symbols'  # {name}"
  # Every leaf of the config is listed once.
  config = __import__("configs.default", fromlist=["get_config"]).get_config("small")
  leaves = [k for k in config_tools.flat_keys(config)
            if not any(o.startswith(k + ".") for o in config_tools.flat_keys(config))]
  assert sorted(fields) == sorted(leaves)


def test_override_errors_suggest_the_closest_key():
  config = {"train": {"steps": 1, "log_every": 2}, "seed": 0}
  argv = ["--config.train.step=3", "--config.sed=1", "--config.train.steps=4", "--noconfig.x"]
  assert config_tools.override_errors(config, argv) == [
      "unknown config key 'train.step' (Did you mean 'train.steps'?)",
      "unknown config key 'sed' (Did you mean 'seed'?)",
      "unknown config key 'x'"]


def test_source_comments_same_line_above_and_continued():
  source = (
      "def get_config():\n"
      "  c.a = 1  # one\n"
      "  # two,\n"
      "  # still two\n"
      "  c.b.c = 2\n"
      "  c.d = 3  # three\n"
      "  #        and more\n"
      "  c.e = 4\n")
  assert config_tools.source_comments(source) == {
      "a": "one", "b.c": "two, still two", "d": "three and more"}


@pytest.mark.slow
def test_small_variant_runs_quietly(tmp_path):
  """`configs/default.py:small` trains (shortened further here) and the log holds none of the
  library notices sim_jax hides."""
  proc = helpers.run_launch(str(tmp_path), "--config.train.steps=4", "--config.train.log_every=2",
                            "--config.train.eval_every=0", config="configs/default.py:small",
                            timeout=400)
  assert proc.returncode == 0, helpers.describe(proc)
  assert os.path.exists(tmp_path / "final_metrics.json")
  out = proc.stdout + proc.stderr
  for notice in ("oneDNN custom operations", "Unable to initialize backend",
                 "Using custom data configuration", "OpenCV is not installed"):
    assert notice not in out, notice
  assert re.search(r"eval retrieval/mrr@5 +\d", out)


@pytest.mark.slow
def test_installed_wheel_runs_without_a_clone(tmp_path):
  """`pip install` of the wheel gives `sim-jax` / `sim-jax-ablate` and the shipped configs: run
  from a directory with no configs/, with the wheel's copy of sim_jax first on the path."""
  wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
  elsewhere.mkdir()
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheels),
                  helpers.REPO_ROOT], check=True, timeout=300, capture_output=True)
  wheel = next(wheels.glob("sim_jax-*.whl"))
  subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                 check=True, timeout=300, capture_output=True)
  env = helpers.subprocess_env()
  env["PYTHONPATH"] = str(target)  # not the clone
  run = lambda *a: subprocess.run([sys.executable, *a], env=env, capture_output=True,
                                  text=True, timeout=120, cwd=elsewhere)
  proc = run(str(target / "bin" / "sim-jax"), "--config=configs/default.py:small", "--mode=config")
  assert proc.returncode == 0, helpers.describe(proc)
  assert "train.steps = 200  # " in proc.stdout
  proc = run("-m", "sim_jax", "--config=test", "--mode=config")  # a shipped config by name
  assert proc.returncode == 0 and "data.name = 'digits'" in proc.stdout, helpers.describe(proc)
  proc = run(str(target / "bin" / "sim-jax-ablate"), "--config=icons")
  assert proc.returncode == 0 and (
      "losses: pair_bce, contrastive, contrastive_learnable, nt_xent" in proc.stdout), (
      helpers.describe(proc))
  assert (target / "sim_jax" / "py.typed").exists()
  assert str(target) in run("-c", "import sim_jax; print(sim_jax.__file__)").stdout
