"""Shared test utilities: run code in a fresh Python process (fake devices, multi-process JAX)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(num_devices: int | None = None, **extra: str) -> dict[str, str]:
  """Environment for a child Python: CPU JAX, optionally `num_devices` fake CPU devices."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform" not in f]
  if num_devices is not None:
    # Must be set before JAX initialises, which is why multi-device tests run in a subprocess.
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env.update(extra)
  return env


def run_python(code: str, *, num_devices: int | None = None, timeout: float = 300,
               env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
  """Runs `code` in a fresh interpreter and returns the completed process (text output)."""
  child_env = subprocess_env(num_devices)
  if env:
    child_env.update(env)
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
  if check and proc.returncode != 0:
    raise AssertionError(f"child failed with exit code {proc.returncode}\n"
                         f"--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-5000:]}")
  return proc


def free_port() -> int:
  """A free TCP port on localhost for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
