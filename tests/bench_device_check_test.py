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
  calls = re.findall(r'"\$py" (bench/\w+\.py)([^\n]*)', text)
  assert {c[0] for c in calls} == {"bench/auto_settings.py", "bench/loss_scaling.py"}
  for script, args in calls:
    help_text = subprocess.run([sys.executable, os.path.join(REPO, script), "--help"],
                               capture_output=True, text=True, check=True,
                               env=dict(os.environ, PYTHONPATH=REPO)).stdout
    for flag in re.findall(r"(--\w+)", args):
      assert flag in help_text, (script, flag)
