"""What a run holds from its first moment: the workdir lock and the early SIGTERM latch.

Standard library only, so `launch.py` can use it before JAX or TensorFlow is imported.

- `lock(workdir, process_index)`: an exclusive `fcntl.flock` on `<workdir>/.lock` (process 0;
  process i > 0 locks `.lock.<i>`, so a second multi-process launch is refused on every
  process) held for the life of the run. A second run on the workdir gets
  `WorkdirLockedError` (a `ValueError`: exit 2) naming the pid and host recorded by the holder.
  The kernel drops the lock when its holder dies (kill -9 included), so a stale `.lock` file
  never blocks. A workdir that cannot be created or written is a `ValueError` too.
- `latch_sigterm()` / `sigterm_latched()`: from the first line of `launch.py` until the trainer's
  `PreemptionWatcher` takes over, a SIGTERM is remembered instead of killing the process, and
  the trainer honours it at its first step boundary (checkpoint and exit 0).
  `release_sigterm()` restores the default action for modes with nothing to save, re-raising a
  latched signal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator

LOCK_FILE = ".lock"

_latched = False


class WorkdirLockedError(ValueError):
  """Another live process holds the workdir's lock."""


def lock_path(workdir: str, process_index: int = 0) -> str:
  name = LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}"
  return os.path.join(workdir, name)


@contextlib.contextmanager
def lock(workdir: str, process_index: int = 0) -> Iterator[str]:
  """Holds the exclusive lock of `workdir` (created if need be) for the `with` block."""
  path = lock_path(workdir, process_index)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ValueError(f"--workdir={workdir!r} cannot be created or written: "
                     f"{type(e).__name__}: {e.strerror or e}") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
      raise WorkdirLockedError(
          f"--workdir={workdir!r} is in use by another run ({holder}; lock {path}). Wait for it "
          f"to finish or stop it, or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
    yield path
  finally:
    os.close(fd)  # Releases the flock; the file stays (harmless: only a live flock blocks).


def _latch(signum, frame):
  del signum, frame
  global _latched
  _latched = True


def latch_sigterm() -> None:
  """Remembers a SIGTERM instead of dying, until a real handler is installed."""
  signal.signal(signal.SIGTERM, _latch)


def sigterm_latched() -> bool:
  """Whether a SIGTERM arrived while only the latch was installed."""
  return _latched


def release_sigterm() -> None:
  """Back to the default SIGTERM action; a latched signal is delivered again now."""
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  if _latched:
    os.kill(os.getpid(), signal.SIGTERM)
