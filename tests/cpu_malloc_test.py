"""sim_jax.cpu.malloc: when launch.py re-executes itself with glibc's huge-page malloc tunable."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from sim_jax.cpu import malloc
from tests import helpers

GLIBC = "glibc 2.36"
TUNE = "glibc.malloc.hugetlb=1"
ON = {"SIM_JAX_HUGEPAGES": "1"}


def test_appends_the_tunable_when_none_is_set():
  env = malloc.malloc_env({"PATH": "/bin", **ON}, GLIBC)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNE, **ON}


def test_keeps_existing_tunables_in_order():
  env = malloc.malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.pthread.x=2",
                            **ON}, GLIBC)
  assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=1:glibc.pthread.x=2:{TUNE}"


def test_does_not_modify_the_callers_mapping():
  environ = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1", **ON}
  malloc.malloc_env(environ, GLIBC)
  assert environ == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1", **ON}


@pytest.mark.parametrize("tunables", [TUNE, "glibc.malloc.hugetlb=0",
                                      "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2"])
def test_already_set_means_no_reexec(tunables):
  """A user's own choice (hugetlb=0 included) wins, and the re-exec'd process stops here."""
  assert malloc.malloc_env({"GLIBC_TUNABLES": tunables, **ON}, GLIBC) is None


def test_a_tunable_that_only_starts_alike_is_not_mistaken_for_it():
  env = malloc.malloc_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlbx=1", **ON}, GLIBC)
  assert env["GLIBC_TUNABLES"] == f"glibc.malloc.hugetlbx=1:{TUNE}"


def test_opt_in_only():
  # Off by default: measured slower when another process steps in between (malloc docstring).
  assert malloc.malloc_env({}, GLIBC) is None
  assert malloc.malloc_env({"SIM_JAX_HUGEPAGES": "0"}, GLIBC) is None
  assert malloc.malloc_env({"SIM_JAX_HUGEPAGES": "yes"}, GLIBC) is None
  assert malloc.malloc_env({"SIM_JAX_HUGEPAGES": "1"}, GLIBC)["GLIBC_TUNABLES"] == TUNE


@pytest.mark.parametrize("libc", ["glibc 2.34", "glibc 2.17", "glibc 1.99"])
def test_glibc_older_than_2_35_is_left_alone(libc):
  assert malloc.malloc_env(ON, libc) is None


@pytest.mark.parametrize("libc", [None, "", "musl 1.2.4", "glibc", "glibc two.x"])
def test_non_glibc_is_left_alone(libc):
  assert malloc.malloc_env(ON, libc) is None


def test_newer_glibc_versions_compare_numerically():
  assert malloc.malloc_env(ON, "glibc 2.35")["GLIBC_TUNABLES"] == TUNE
  assert malloc.malloc_env(ON, "glibc 2.100")["GLIBC_TUNABLES"] == TUNE  # not a string compare
  assert malloc.malloc_env(ON, "glibc 3.0")["GLIBC_TUNABLES"] == TUNE


def test_describe_says_on_or_off_and_why():
  assert malloc.describe({"GLIBC_TUNABLES": f"a=1:{TUNE}"}) == (
      f"transparent huge pages for malloc: on (GLIBC_TUNABLES=a=1:{TUNE})")
  assert ": off (GLIBC_TUNABLES=glibc.malloc.hugetlb=0)" in malloc.describe(
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert "off (opt in with SIM_JAX_HUGEPAGES=1)" in malloc.describe({"SIM_JAX_HUGEPAGES": "0"})
  assert "off (opt in with SIM_JAX_HUGEPAGES=1)" in malloc.describe({})


# A tiny entry point as launch.py uses it: re-exec first, then allocate like XLA does (one big
# malloc, touched). ctypes' malloc, not numpy: numpy madvises its own large arrays for huge
# pages whatever the tunable says, which would make the control run pass for the wrong reason.
ENTRY = textwrap.dedent("""
    import ctypes, os, sys
    from sim_jax.cpu import malloc
    print("argv", sys.argv[1:], flush=True)
    malloc.maybe_reexec()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    n = 256 << 20
    p = libc.malloc(ctypes.c_size_t(n))
    ctypes.memset(p, 1, n)
    with open("/proc/self/smaps_rollup") as f:
      huge = [line.split()[1] for line in f if line.startswith("AnonHugePages:")][0]
    print("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES", ""))
    print("AnonHugePages_kB", huge)
    print("describe", malloc.describe())
""")


def _thp_mode() -> str:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return re.search(r"\[(\w+)\]", f.read()).group(1)
  except (OSError, AttributeError):
    return "unavailable"


def _run_script(tmp_path, text, args=(), **env_extra) -> str:
  """stdout of `text` run as a script, in this environment minus any malloc settings."""
  script = tmp_path / "script.py"
  script.write_text(text)
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "SIM_JAX_HUGEPAGES", "LD_PRELOAD")}
  env.update(env_extra)
  proc = subprocess.run([sys.executable, str(script), *args],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _run_entry(tmp_path, **env_extra):
  stdout = _run_script(tmp_path, ENTRY, ("--flag=x", "--coordinator_address=h:1"), **env_extra)
  out = dict(line.split(" ", 1) for line in stdout.splitlines())
  # "argv" is printed before and after the re-exec; the dict keeps the last (the new process).
  return stdout, out


@pytest.mark.skipif(malloc.malloc_env(ON, malloc.current_libc_version()) is None,
                    reason=f"needs Linux with glibc >= 2.35 (this libc: "
                           f"{malloc.current_libc_version()})")
def test_reexec_gives_malloc_transparent_huge_pages(tmp_path):
  """The real thing: the re-exec'd process has the tunable, the same argv, and the kernel backs
  a 256 MiB malloc with huge pages (read from /proc/self/smaps_rollup, not from our code)."""
  mode = _thp_mode()
  if mode not in ("madvise", "always"):
    pytest.skip(f"transparent huge pages are {mode!r} on this kernel "
                f"(/sys/kernel/mm/transparent_hugepage/enabled)")
  stdout, out = _run_entry(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2", **ON)
  assert stdout.count("argv ['--flag=x', '--coordinator_address=h:1']") == 2, stdout
  assert out["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNE}"
  assert out["describe"].startswith("transparent huge pages for malloc: on")
  assert int(out["AnonHugePages_kB"]) >= 128 << 10, out  # most of the 256 MiB
  if mode == "madvise":
    # Control: not opted in, nothing madvises the chunk, so the kernel gives it no huge pages.
    stdout, off = _run_entry(tmp_path)
    assert stdout.count("argv") == 1 and off["GLIBC_TUNABLES"] == ""
    assert int(off["AnonHugePages_kB"]) < 16 << 10, off


@pytest.mark.slow
@pytest.mark.skipif(malloc.malloc_env(ON, malloc.current_libc_version()) is None,
                    reason=f"needs Linux with glibc >= 2.35 (this libc: "
                           f"{malloc.current_libc_version()})")
def test_launch_py_runs_with_the_tunable_and_logs_it(tmp_path):
  """launch.py itself re-executes when opted in: started without the tunable, its log shows it
  set (the variable can only come from the re-exec); not opted in, it stays off. --mode=embed
  without --output stops right after."""
  for extra, line in ((ON, f"transparent huge pages for malloc: on (GLIBC_TUNABLES={TUNE})"),
                      ({}, "transparent huge pages for malloc: off (opt in with "
                           "SIM_JAX_HUGEPAGES=1)")):
    env = helpers.subprocess_env()
    for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "SIM_JAX_HUGEPAGES"):
      env.pop(k, None)
    env.update(extra)
    proc = subprocess.run(helpers.launch_cmd(str(tmp_path / "w"), "--mode=embed"), env=env,
                          capture_output=True, text=True, timeout=300, cwd=helpers.REPO_ROOT)
    assert proc.returncode == 2 and "--mode=embed needs --output" in proc.stderr, (
        helpers.describe(proc))
    assert line in proc.stderr, helpers.describe(proc)


RESIDENT = {"SIM_JAX_HUGEPAGES": "resident"}
RESIDENT_TUNE = (f"{TUNE}:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={64 << 30}:"
                 "glibc.malloc.arena_max=1")


def test_resident_adds_the_keep_mapped_tunables():
  assert malloc.malloc_env(RESIDENT, GLIBC)["GLIBC_TUNABLES"] == RESIDENT_TUNE


def test_resident_keeps_the_users_own_values():
  env = malloc.malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4", **RESIDENT}, GLIBC)
  assert env["GLIBC_TUNABLES"] == (f"glibc.malloc.arena_max=4:{TUNE}:glibc.malloc.mmap_max=0:"
                                   f"glibc.malloc.trim_threshold={64 << 30}")
  assert malloc.malloc_env({"GLIBC_TUNABLES": TUNE, **RESIDENT}, GLIBC) is None


# XLA's pattern: one big buffer malloc'd, written and freed every step. Minor page faults of the
# 2nd and 3rd cycle are read from the kernel (getrusage), not from anything sim_jax computes.
REUSE = textwrap.dedent("""
    import ctypes, resource
    from sim_jax.cpu import malloc
    malloc.maybe_reexec()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    n = 256 << 20
    faults = []
    for _ in range(3):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      p = libc.malloc(ctypes.c_size_t(n))
      ctypes.memset(p, 1, n)
      libc.free(p)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")


@pytest.mark.skipif(malloc.malloc_env(ON, malloc.current_libc_version()) is None,
                    reason=f"needs Linux with glibc >= 2.35 (this libc: "
                           f"{malloc.current_libc_version()})")
def test_resident_reuses_the_freed_buffer_without_page_faults(tmp_path):
  def faults(**extra):
    return [int(f) for f in _run_script(tmp_path, REUSE, **extra).split()]

  default = faults()
  # glibc's default unmaps the 256 MiB chunk on free: every cycle faults its 65536 4 KiB pages.
  assert min(default) > (256 << 20) // 4096 // 2, default
  resident = faults(**RESIDENT)
  assert max(resident[1:]) < 1000, resident  # reused: no page is faulted again


def test_importing_malloc_loads_no_jax_or_numpy(tmp_path):
  # launch.py imports it before the re-exec: JAX or NumPy loaded there would be loaded twice
  # (and sim_jax/cpu/__init__.py runs first, so it must stay as light as this module).
  stdout = _run_script(tmp_path, textwrap.dedent("""
      import sys
      from sim_jax.cpu import malloc
      print(sorted(m for m in ("jax", "jaxlib", "numpy", "flax") if m in sys.modules))
  """))
  assert stdout.strip() == "[]", stdout
