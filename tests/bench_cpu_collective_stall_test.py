"""The XLA:CPU collective stall workaround: the trainer waits for each execution exactly when
the mesh has several CPU devices in the process, and the wait mode of the committed reproducer
(bench/cpu_collective_stall.py) runs to the end. The async mode is not run here: it ends in
XLA's 40 s abort, and a later jaxlib may fix it."""

from __future__ import annotations

import os
import sys

from tests import helpers


def test_waits_only_with_several_cpu_devices_in_the_process():
  out = helpers.run_python("""
import jax
from jax.sharding import Mesh
from sim_jax import cpu
print(cpu.waits_for_each_execution(Mesh(jax.devices()[:2], ("data",))),
      cpu.waits_for_each_execution(Mesh(jax.devices()[:1], ("data",))))
""", num_devices=2).stdout.split()
  assert out == ["True", "False"]


def test_the_reproducer_runs_to_the_end_when_each_step_is_waited_for():
  proc = helpers.run_command(
      [sys.executable, os.path.join(helpers.REPO_ROOT, "bench", "cpu_collective_stall.py"),
       "--mode=wait", "--steps=1000"], timeout=240)
  assert proc.returncode == 0, helpers.describe(proc)
  assert "done: 1000 steps, mode wait" in proc.stdout
