"""glibc malloc tuning for XLA:CPU runs: the huge-page tunables, set before Python starts.

Why: XLA:CPU mallocs one large scratch buffer per executable run (4.4 GiB for the ViT-Ti step at
batch 128 x 2 views). glibc serves allocations that large with mmap and unmaps them on free, so
every step page-faults and zeroes the whole buffer again in 4 KiB pages (1.12 M minor faults per
ViT-Ti step, 2 s of system time). With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35)
malloc madvises its mmap'd chunks for transparent huge pages, which this kind of kernel
(`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`) then backs with 2 MiB pages: the
faults drop ~500x. Measured on this 2-core VM (docs/performance.md): a ViT-Ti step alone ran
1.26x faster (median 5.84 -> 4.64 s, interleaved processes), but with a second process stepping
in between (the benchmark's PyTorch worker) the same setting made it 1.5-2x *slower* (system
time 4.5-7.5 s a step, no compaction stalls in /proc/vmstat; cause not found). So it is opt-in.

glibc reads its tunables once, when the process starts, so with `SIM_JAX_HUGEPAGES=1`
`launch.py` re-executes itself with the tunable added (`maybe_reexec`) before JAX or anything
else heavy is imported. A `glibc.malloc.hugetlb` already in `GLIBC_TUNABLES` (any value) is
respected and nothing is re-executed.

This module imports only the standard library: it runs before everything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
OPT_IN_VAR = "SIM_JAX_HUGEPAGES"
# SIM_JAX_HUGEPAGES=resident: huge pages *and* the scratch buffer kept mapped between steps.
# mmap_max=0 makes every allocation come from the brk heap (no per-step mmap/munmap), arena_max=1
# keeps XLA's worker threads on that one heap (other arenas are 64 MiB mmap'd heaps), and a
# 64 GiB trim threshold stops free() from handing the freed top of the heap back to the kernel.
# The next step's malloc of the same size then reuses already-faulted huge pages: 0 minor faults
# and ~0 s of system time per ViT-Ti step (bench/results/train_step_vit_resident_scratch.json).
# Cost: the heap never shrinks below its peak while the process lives.
RESIDENT_TUNABLES = (("glibc.malloc.mmap_max", "0"),
                     ("glibc.malloc.trim_threshold", str(64 << 30)),
                     ("glibc.malloc.arena_max", "1"))
OPT_IN_VALUES = ("1", "resident")
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def glibc_version(libc_version: str | None) -> tuple[int, int] | None:
  """(major, minor) of a `CS_GNU_LIBC_VERSION` string such as "glibc 2.36"; None if not glibc."""
  if not libc_version:
    return None
  name, _, version = libc_version.strip().partition(" ")
  if name != "glibc":
    return None
  try:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def _tunable_keys(tunables: str) -> set[str]:
  return {t.split("=", 1)[0] for t in tunables.split(":") if t}


def _has_hugetlb(tunables: str) -> bool:
  return HUGETLB_TUNABLE in _tunable_keys(tunables)


def malloc_env(environ: Mapping[str, str], libc_version: str | None) -> dict[str, str] | None:
  """The environment to re-execute with, or None when the current process needs no re-exec.

  `environ` is the current environment, `libc_version` the value of
  `os.confstr("CS_GNU_LIBC_VERSION")` (None off glibc). Returns a copy of `environ` whose
  `GLIBC_TUNABLES` has `glibc.malloc.hugetlb=1` appended to the tunables already there
  (':'-separated) when `SIM_JAX_HUGEPAGES=1` asks for it (with `SIM_JAX_HUGEPAGES=resident`
  also `RESIDENT_TUNABLES`, each one the user has not set already), unless: glibc is missing
  or older than 2.35 (the tunable would be ignored), or `glibc.malloc.hugetlb` is already set
  (by the user, or by the re-exec itself: this is what stops a second re-exec).
  """
  version = glibc_version(libc_version)
  if version is None or version < MIN_GLIBC:
    return None
  mode = environ.get(OPT_IN_VAR, "").strip()
  if mode not in OPT_IN_VALUES:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if _has_hugetlb(tunables):
    return None
  added = [f"{HUGETLB_TUNABLE}=1"]
  if mode == "resident":
    have = _tunable_keys(tunables)
    added += [f"{k}={v}" for k, v in RESIDENT_TUNABLES if k not in have]
  new = dict(environ)
  new["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, *added) if t)
  return new


def current_libc_version() -> str | None:
  """`CS_GNU_LIBC_VERSION` on Linux (e.g. "glibc 2.36"); None on other platforms or libcs."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    return os.confstr("CS_GNU_LIBC_VERSION")
  except (AttributeError, ValueError, OSError):  # musl and others do not define the name
    return None


def describe(environ: Mapping[str, str] | None = None) -> str:
  """One log line: whether malloc asks for transparent huge pages in this process, and why."""
  environ = os.environ if environ is None else environ
  tunables = environ.get("GLIBC_TUNABLES", "")
  for t in tunables.split(":"):
    key, _, value = t.partition("=")
    if key == HUGETLB_TUNABLE:
      state = "off" if value.strip() == "0" else "on"
      return f"transparent huge pages for malloc: {state} (GLIBC_TUNABLES={tunables})"
  if environ.get(OPT_IN_VAR, "").strip() not in OPT_IN_VALUES:
    return f"transparent huge pages for malloc: off (opt in with {OPT_IN_VAR}=1)"
  version = glibc_version(current_libc_version())
  if version is None or version < MIN_GLIBC:
    return (f"transparent huge pages for malloc: off (needs glibc >= 2.35; this libc: "
            f"{current_libc_version() or 'not glibc'})")
  return "transparent huge pages for malloc: off (GLIBC_TUNABLES has no glibc.malloc.hugetlb)"


def maybe_reexec() -> None:
  """Re-executes this Python process with the huge-page tunable when `malloc_env` asks for it.

  Call it first thing in a `__main__` guard, before importing JAX: the argv and the rest of the
  environment are kept (multi-process flags included), so the new process runs the same command.
  Returns normally when no re-exec is needed or when exec fails (the run goes on, only without
  huge pages).
  """
  env = malloc_env(os.environ, current_libc_version())
  if env is None or not sys.executable:
    return
  # sys.orig_argv (Python >= 3.10) is the full command line, interpreter options and `-m` /
  # `-c` included, so any entry point re-runs as it was started; sys.argv alone loses those.
  argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError as e:
    print(f"sim_jax: could not re-execute with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} ({e}); "
          f"continuing without transparent huge pages for malloc", file=sys.stderr)
