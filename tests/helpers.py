"""Shared test utilities: run code in a fresh Python process (fake devices, multi-process JAX),
skip on missing Debian packages, finite-difference gradients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(num_devices: int | None = None, **extra: str) -> dict[str, str]:
  """Environment for a child Python: CPU JAX, optionally `num_devices` fake CPU devices."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  # A fatal signal (an abort, or the SIGABRT `run_command` sends a child past its time limit)
  # then prints every thread's Python stack to stderr: a hang or a crash names where it was.
  env["PYTHONFAULTHANDLER"] = "1"
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform" not in f]
  if num_devices is not None:
    # Must be set before JAX initialises, which is why multi-device tests run in a subprocess.
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env.update(extra)
  return env


def run_python(code: str, *, num_devices: int | None = None, timeout: float = 300,
               env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
  """Runs `code` in a fresh interpreter and returns the completed process (text output)."""
  child_env = subprocess_env(num_devices)
  if env:
    child_env.update(env)
  proc = run_command([sys.executable, "-c", textwrap.dedent(code)], env=child_env,
                     timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"child failed with exit code {proc.returncode}\n"
                         f"--- stdout ---\n{proc.stdout[-5000:]}\n"
                         f"--- stderr ---\n{proc.stderr[-5000:]}")
  return proc


def free_port() -> int:
  """A free TCP port on localhost for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


LAUNCH = os.path.join(REPO_ROOT, "launch.py")
# Shared by every launch in a test session: the second launch of a config skips compilation.
COMPILATION_CACHE = os.path.join(tempfile.gettempdir(), "sim_jax_test_compilation_cache")


def launch_cmd(workdir: str, *args: str, config: str = "configs/test.py") -> list[str]:
  return [sys.executable, LAUNCH, f"--config={os.path.join(REPO_ROOT, config)}",
          f"--workdir={workdir}", f"--compilation_cache={COMPILATION_CACHE}", *args]


def run_launch(workdir: str, *args: str, config: str = "configs/test.py", timeout: float = 300,
               num_devices: int | None = None, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
  """Runs `launch.py` to completion in a child process (its own process group)."""
  child_env = subprocess_env(num_devices)
  if env:
    child_env.update(env)
  return run_command(launch_cmd(workdir, *args, config=config), env=child_env, timeout=timeout)


# Seconds a child has, after the SIGABRT of a timeout, to print its stacks before SIGKILL.
ABORT_GRACE_S = 30


def run_command(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
                cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
  """`subprocess.run(cmd, capture_output=True, text=True)` in `cwd` (the repo root), in the
  child's own process group, with `subprocess_env()` unless `env` is given.

  Past `timeout` the group gets SIGABRT (a Python child's faulthandler prints every thread's
  stack), then SIGKILL, and an AssertionError carries what the child printed: `subprocess.run`
  would kill it silently and keep none of its output."""
  proc = subprocess.Popen(cmd, env=subprocess_env() if env is None else env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    kill_group(proc, signal.SIGABRT)
    try:
      out, err = proc.communicate(timeout=ABORT_GRACE_S)
    except subprocess.TimeoutExpired:
      kill_group(proc)
      out, err = proc.communicate()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    raise AssertionError(f"child still running after {timeout:.0f} s (sent SIGABRT; its "
                         f"Python stacks are in stderr)\n{describe(done)}") from None
  return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def start_launch(workdir: str, *args: str, config: str = "configs/test.py",
                 num_devices: int | None = None, env: dict[str, str] | None = None,
                 log_path: str | None = None) -> subprocess.Popen:
  """Starts `launch.py` in its own process group (so a test can kill it and its workers)."""
  child_env = subprocess_env(num_devices)
  if env:
    child_env.update(env)
  out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
  return subprocess.Popen(launch_cmd(workdir, *args, config=config), env=child_env,
                          stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                          start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
  """Signals the whole process group of `proc` (grain workers included)."""
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def python_stacks(stderr: str, limit: int = 16000) -> str:
  """faulthandler's dump in `stderr`: every thread's Python stack, from "Fatal Python error" to
  the extension-module list that follows it (which fills the tail of stderr otherwise)."""
  start = stderr.find("Fatal Python error")
  if start < 0:
    return ""
  end = stderr.find("Extension modules:", start)
  return stderr[start:end if end >= 0 else None][:limit]


def describe(proc: subprocess.CompletedProcess) -> str:
  """Exit code, any fatal log line of stderr and every thread's Python stack first (an abort's
  cause is printed long before the stack and module list that fill the tail), then the output's
  tails."""
  fatal = [line for line in proc.stderr.splitlines()
           if (line.startswith("F") and "]" in line) or "Fatal Python error" in line
           or "Check failed" in line or "Termination timeout" in line]
  return (f"exit code {proc.returncode}\n--- fatal lines ---\n" + "\n".join(fatal[:20]) +
          f"\n--- Python stacks ---\n{python_stacks(proc.stderr)}"
          f"\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")


# Set by .ci/run (CI installs every Debian package the tests read): a test that would skip for a
# missing package fails instead, so CI can never go green by skipping the real-data tests.
REQUIRE_DATA_ENV = "SIM_JAX_REQUIRE_DATA"


def require_debian(packages: str | list[str] | tuple[str, ...], present: bool, what: str) -> None:
  """Skip the calling test when `present` is False, naming the Debian package(s) to install.

  With `$SIM_JAX_REQUIRE_DATA=1` (CI) the test fails instead. Call it inside the test or a
  fixture (never at module level, so collection cannot error on a machine without the packages).
  """
  if present:
    return
  names = packages if isinstance(packages, str) else " ".join(packages)
  message = f"{what} needs the Debian package(s): apt-get install {names}"
  if os.environ.get(REQUIRE_DATA_ENV) == "1":
    pytest.fail(f"{message} (${REQUIRE_DATA_ENV}=1: CI must have them)")
  pytest.skip(message)


def numeric_grad(f, x, h: float = 1e-6) -> np.ndarray:
  """Central differences (f(x + h e_k) - f(x - h e_k)) / 2h of a NumPy scalar function, float64.

  The independent reference the loss tests check autodiff against: `f` is a hand-written NumPy
  loop, so neither the code under test nor JAX is involved.
  """
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (f(x + e) - f(x - e)) / (2 * h)
  return g
