"""Persistent benchmark workers: one framework's train step in its own process and environment.

Why: the memory allocator is chosen when a process starts (`LD_PRELOAD`, `GLIBC_TUNABLES`), and
sim_jax and PyTorch want different ones (XLA:CPU: glibc with transparent huge pages; PyTorch:
tcmalloc; docs/performance.md). A fair side-by-side comparison therefore runs each framework
in its own process with its own environment, and still interleaves their timed rounds so that
load from other jobs on a shared machine hits both alike. The parent starts one `Worker` per
(framework, environment), waits until each has built and warmed its step, then asks them in turn
to time steps.

Protocol: JSON lines. The worker's first line on stdout is `{"ready": true, ...facts}` (or
`{"error": ...}`); then per request line on stdin one reply line:
  {"cmd": "step", "n": N}  -> {"step_s", "user_s", "sys_s", "minflt"}: per-step means over N steps
  {"cmd": "loss"}          -> {"loss": float} (sim_jax only: one more step's loss)
  {"cmd": "stats"}         -> {"peak_rss_bytes": int, "train_state_step": int (sim_jax)}
  {"cmd": "quit"}          -> the worker exits
Anything the libraries print goes to the worker's stderr (stdout is kept for the protocol); the
parent keeps it in a temporary file and shows its tail when a worker fails.

  python -m bench.workers '{"framework": "torch", "workload": "lenet5", "batch": 8}'  # by hand
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
import traceback

import jax

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # `python bench/workers.py` puts bench/, not the repo, on the path

from bench import workloads  # noqa: E402

FRAMEWORKS = ("sim_jax", "torch")
# Variables that choose the allocator: cleared for a worker whose environment is a named
# allocator preset, so "glibc" means glibc's defaults even when the parent runs under another.
ALLOCATOR_VARS = ("GLIBC_TUNABLES", "LD_PRELOAD")
# Shared objects whose presence in /proc/self/maps shows which malloc a worker really runs.
MALLOC_LIBS = ("libtcmalloc", "libjemalloc", "libmimalloc")


def parse_env(items: list[str] | str | None) -> dict[str, str]:
  """["KEY=VALUE", ...] (or one such string) -> {KEY: VALUE}; VALUE may contain '=' or be ''."""
  if not items:
    return {}
  out = {}
  for item in [items] if isinstance(items, str) else items:
    key, sep, value = item.partition("=")
    if not sep or not key or not key.replace("_", "").isalnum():
      raise ValueError(f"an environment setting must be NAME=VALUE; got {item!r}")
    out[key] = value
  return out


def worker_env(extra: dict[str, str] | None = None, clear_allocator: bool = False
               ) -> dict[str, str]:
  """The parent's environment for a CPU worker, plus `extra` (set last, so it wins)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, env.get("PYTHONPATH", "")) if p)
  if clear_allocator:
    for k in ALLOCATOR_VARS:
      env.pop(k, None)
  env.update(extra or {})
  return env


def describe_env(extra: dict[str, str] | None) -> str:
  """Short text of an environment's settings for tables: 'A=1 B=2' or '(inherited)'."""
  return " ".join(f"{k}={v}" for k, v in sorted((extra or {}).items())) or "(inherited)"


class WorkerError(RuntimeError):
  pass


class Worker:
  """Parent-side handle of one worker process (see the module docstring for the protocol)."""

  def __init__(self, label: str, framework: str, workload: str, batch: int,
               env: dict[str, str], overrides: dict | None = None, matmul_n: int = 0,
               timeout: float = 1800.0):
    if framework not in FRAMEWORKS:
      raise ValueError(f"framework {framework!r}; expected one of {FRAMEWORKS}")
    self.label, self.framework, self.timeout = label, framework, timeout
    spec = {"framework": framework, "workload": workload, "batch": batch,
            "overrides": overrides or {}, "matmul_n": matmul_n}
    self._stderr = tempfile.TemporaryFile(mode="w+b")
    self._buf = b""
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "bench.workers", json.dumps(spec)], cwd=_REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
    self.info: dict | None = None

  def stderr_tail(self, n: int = 4000) -> str:
    self._stderr.seek(0)
    return self._stderr.read().decode(errors="replace")[-n:]

  def _fail(self, what: str):
    self.close(kill=True)
    raise WorkerError(f"worker {self.label} ({self.framework}) {what}; its stderr ends:\n"
                      f"{self.stderr_tail()}")

  def _readline(self) -> dict:
    deadline = time.monotonic() + self.timeout
    fd = self.proc.stdout.fileno()
    while b"\n" not in self._buf:
      left = deadline - time.monotonic()
      if left <= 0:
        self._fail(f"gave no answer within {self.timeout:.0f} s")
      ready, _, _ = select.select([fd], [], [], left)
      if ready:
        chunk = os.read(fd, 65536)
        if not chunk:
          self.proc.wait(timeout=30)
          self._fail(f"exited with code {self.proc.returncode}")
        self._buf += chunk
    line, self._buf = self._buf.split(b"\n", 1)
    msg = json.loads(line)
    if "error" in msg:
      self._fail(f"failed: {msg['error'].strip().splitlines()[-1]}")
    return msg

  def wait_ready(self) -> dict:
    """Blocks until the worker has built, compiled and warmed its step; returns its facts."""
    if self.info is None:
      self.info = self._readline()
    return self.info

  def request(self, cmd: str, **kw) -> dict:
    try:
      self.proc.stdin.write((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
      self.proc.stdin.flush()
    except BrokenPipeError:
      self._fail("closed its input")
    return self._readline()

  def step(self, n: int, rewarm: int = 0) -> dict:
    """Times n steps; with `rewarm`, after that many untimed ones (workloads.REWARM)."""
    if rewarm:
      self.request("step", n=rewarm)
    return self.request("step", n=n)

  def close(self, kill: bool = False) -> None:
    if self.proc.poll() is None:
      if not kill:
        try:
          self.proc.stdin.write(b'{"cmd": "quit"}\n')
          self.proc.stdin.close()
          self.proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
          pass
      if self.proc.poll() is None:
        self.proc.kill()
        self.proc.wait()
    # The stderr file stays open (until garbage collection): a failure report still reads it.

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close(kill=exc[0] is not None)


def start_all(specs: list[dict], concurrency: int = 2) -> list[Worker]:
  """Starts one worker per spec (Worker's keyword arguments); returns when all are ready.

  At most `concurrency` start at once: start-up (imports, compile) is mostly single-threaded, so
  two keep 2 cores busy, while each start-up's warm-up step holds its transient memory (XLA's
  scratch buffer: 4.4 GiB for ViT-Ti), which must not pile up over all the workers. If one
  fails, all are stopped and the error names the failing one.
  """
  workers = []
  try:
    for s in specs:
      if len(workers) >= concurrency:
        workers[len(workers) - concurrency].wait_ready()
      workers.append(Worker(**s))
    for w in workers:
      w.wait_ready()
  except BaseException:
    for w in workers:
      w.close(kill=True)
    raise
  return workers


# ------------------------------------------------------------------------------ worker side


def loaded_malloc_libs() -> list[str]:
  """Malloc replacements mapped into this process (from /proc/self/maps): what really runs."""
  try:
    with open("/proc/self/maps") as f:
      paths = {line.split()[-1] for line in f if "/" in line}
  except OSError:
    return []
  return sorted(p for p in paths if any(m in os.path.basename(p) for m in MALLOC_LIBS))


def _rusage():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime, r.ru_stime, r.ru_minflt


def serve(spec: dict) -> None:
  """Worker main: build the runner, report ready, then answer requests until 'quit' or EOF."""
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # anything printed by the libraries goes to stderr, not into the protocol
  sys.stdout = sys.stderr

  def send(msg):
    proto.write(json.dumps(msg) + "\n")
    proto.flush()

  try:
    fw, name, batch = spec["framework"], spec["workload"], spec["batch"]
    info = {"ready": True, "pid": os.getpid(), "framework": fw,
            "env": {k: os.environ[k] for k in ALLOCATOR_VARS if k in os.environ},
            "malloc_libs": loaded_malloc_libs(), "affinity": len(os.sched_getaffinity(0))}
    if fw == "sim_jax":
      runner = workloads.JaxRunner(name, batch, spec.get("overrides"))
      info.update(compile_s=runner.compile_s, step_flops=runner.flops,
                  xla_temp_bytes=runner.temp_bytes, jax_devices=[str(d) for d in jax.devices()],
                  steps_per_execution=runner.per_execution)
      if spec.get("matmul_n"):
        info["matmul_flops_per_s"] = workloads.matmul_rate(spec["matmul_n"])
    else:
      runner = workloads.TorchRunner(name, batch)
      info.update(first_step_s=runner.first_step_s,
                  torch_threads=runner.torch.get_num_threads())
  except Exception:  # noqa: BLE001 - reported to the parent, which raises it with our stderr
    send({"error": traceback.format_exc()})
    return
  send(info)
  for line in sys.stdin:
    if not line.strip():
      continue
    try:
      msg = json.loads(line)
      cmd = msg.get("cmd")
      if cmd == "quit":
        return
      if cmd == "step":
        n = int(msg.get("n", 1))
        u0, s0, f0 = _rusage()
        t0 = time.perf_counter()
        n = runner.run(n)  # the steps taken: sim_jax runs whole executions of k steps
        t = time.perf_counter() - t0
        u1, s1, f1 = _rusage()
        send({"step_s": t / n, "user_s": (u1 - u0) / n, "sys_s": (s1 - s0) / n,
              "minflt": (f1 - f0) / n})
      elif cmd == "loss" and fw == "sim_jax":
        send({"loss": runner.loss()})
      elif cmd == "stats":
        stats = {"peak_rss_bytes": workloads.peak_rss_bytes()}
        if fw == "sim_jax":  # updates taken, from the train state itself (warm-ups included)
          stats["train_state_step"] = int(runner.state.step)
        send(stats)
      else:
        send({"error": f"unknown request {line.strip()!r} for a {fw} worker"})
    except Exception:  # noqa: BLE001
      send({"error": traceback.format_exc()})


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(f"usage: python -m bench.workers '<json spec>'; got {sys.argv[1:]}")
  serve(json.loads(sys.argv[1]))
