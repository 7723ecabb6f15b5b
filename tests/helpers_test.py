"""The test helpers' own behaviour where it matters for diagnosing CI: a child past its time
limit is stopped, and what it printed, its Python stacks included, reaches the failure."""

from __future__ import annotations

import os
import re

import pytest

from tests import helpers


def test_a_hung_child_is_aborted_and_its_stack_reported():
  code = """
import os, sys, threading, time
import numpy  # extension modules: faulthandler lists them after the stacks
print("PID", os.getpid(), flush=True)
def sleeps_in_a_thread():
  time.sleep(600)
threading.Thread(target=sleeps_in_a_thread, daemon=True).start()
def waits_forever():
  time.sleep(600)
waits_forever()
"""
  with pytest.raises(AssertionError) as info:
    helpers.run_python(code, timeout=5)
  message = str(info.value)
  assert "child still running after 5 s" in message
  # faulthandler's dump (PYTHONFAULTHANDLER in subprocess_env) names the function it hung in.
  assert "Fatal Python error: Aborted" in message
  assert "in waits_forever" in message
  # Every thread's stack, even past the tail that the extension-module list fills.
  stacks = message.split("--- Python stacks ---")[1].split("--- stdout ---")[0]
  assert "in waits_forever" in stacks and "in sleeps_in_a_thread" in stacks
  pid = int(re.search(r"PID (\d+)", message).group(1))
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)


def test_a_child_that_ends_keeps_its_output_and_exit_code():
  proc = helpers.run_python("import sys; print('out'); print('err', file=sys.stderr); "
                            "sys.exit(3)", check=False)
  assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
