"""bench/device_check.sh, the GPU checks prepared for a lent machine: it parses, its wheel list is
pinned, and every step it runs names a bench script and flags that exist (it cannot run here
on a GPU; its `dry-run` mode, minutes long, is run by hand, see its header)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "device_check.sh")


def test_script_parses():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_wheels_are_pinned():
  lines = [line.split("#")[0].strip()
           for line in open(os.path.join(REPO, "bench", "device_wheels.txt"))]
  specs = [line for line in lines if line]
  assert specs and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*( sdist)?", s)
                       for s in specs), specs


def test_steps_call_existing_scripts_with_their_flags():
  text = open(SCRIPT).read().replace("\\\n", " ")
  calls = re.findall(r'"\$py"\s+(bench/\w+\.py)([^\n]*)', text)
  assert {c[0] for c in calls} == {"bench/auto_settings.py", "bench/loss_scaling.py",
                                   "bench/train_step.py"}
  for script, args in calls:
    help_text = subprocess.run([sys.executable, os.path.join(REPO, script), "--help"],
                               capture_output=True, text=True, check=True,
                               env=dict(os.environ, PYTHONPATH=REPO)).stdout
    for flag in re.findall(r"(--\w+)", args):
      assert flag in help_text, (script, flag)


def test_tf_stand_in_lets_the_trainer_import_and_names_what_it_lacks():
  """With bench/tf_stand_in first on the path (as device_check.sh puts it where the image has
  no TensorFlow), `tensorflow` is TensorBoard's stub, sim_jax's trainer imports, and a use
  beyond the imports (a summary writer) fails with AttributeError."""
  code = ("import sim_jax.train, tensorflow as tf\n"
          "assert tf.__name__ == 'tensorboard.compat.tensorflow_stub', tf.__name__\n"
          "try:\n  tf.summary.create_file_writer('/tmp/x')\nexcept AttributeError as e:\n"
          "  print('refused:', e)\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "bench", "tf_stand_in"),
                                                     REPO]))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "refused:" in out.stdout and "summary" in out.stdout
