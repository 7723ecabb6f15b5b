"""launch.py command lines for a run, and the config launch.py builds from one.

A run is launched as `python launch.py --config=FILE --workdir=DIR --config.KEY=VALUE ...` from
the repository root; `child_config` parses those flags with the same parser launch.py uses, so a
variant whose flags launch.py would refuse is refused before anything starts.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

LAUNCH = "launch.py"


def flag_value(value: Any) -> str:
  """`value` as ml_collections' config_flags parses it back from `--config.KEY=<text>`.

  Bools as true/false (absl's BooleanParser), tuples as a Python literal (TupleParser runs
  ast.literal_eval), strings as they are (a str field keeps the text verbatim). None cannot be
  written: the int / float / str parsers of a placeholder field refuse or keep the text "None".
  """
  if value is None:
    raise ValueError("None cannot be passed on the command line (config_flags parses the text "
                     "'None' with the field's type); leave the field at the config's default")
  if isinstance(value, bool):  # before int: bool is an int
    return "true" if value else "false"
  if isinstance(value, (int, str)):
    return str(value)
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  raise TypeError(f"cannot write {type(value).__name__} {value!r} as a config flag")


def parse_sets(sets: Iterable[str]) -> list[tuple[str, str]]:
  """`--set KEY=VALUE` strings -> [(KEY, VALUE)]; VALUE stays text for launch.py to parse."""
  out = []
  for item in sets:
    key, sep, value = item.partition("=")
    key = key.strip().removeprefix("--config.").removeprefix("config.")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
      raise ValueError(f"--set {item!r}: expected KEY=VALUE with a dotted config key, e.g. "
                       "--set train.steps=300")
    out.append((key, value))
  return out


def launch_command(config_path: str, run_dir: str, overrides: Mapping[str, Any],
                   sets: Sequence[tuple[str, str]] = (), evaluate: bool = False,
                   extra: Sequence[str] = ()) -> list[str]:
  """launch.py's argv (without the interpreter) for one run; `overrides` already resolved.

  The run's overrides come before the `--set` ones: for a flag given twice, absl keeps the
  last, so `--set` has the last word.
  """
  cmd = [LAUNCH, f"--config={config_path}", f"--workdir={run_dir}"]
  if evaluate:
    cmd.append("--mode=evaluate")
  cmd += [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]
  cmd += [f"--config.{k}={v}" for k, v in sets]
  return cmd + list(extra)


def shell_command(cmd: Sequence[str]) -> str:
  """The command as one would type it (from the repository root)."""
  return " ".join(["python", *(shlex.quote(a) for a in cmd)])


def display_path(path: str, root: str) -> str:
  """Relative to `root` when inside it (commands then read naturally), else absolute."""
  path = os.path.abspath(path)
  rel = os.path.relpath(path, root)
  return path if rel == ".." or rel.startswith(".." + os.sep) else rel


def child_config(cmd: Sequence[str], root: str = ""):
  """The ConfigDict that launch.py builds from `cmd`'s --config flags (same parser, same file).

  A relative config file path is read from `root` (where launch.py runs), else from the
  current directory.
  """
  argv = [LAUNCH] + [a for a in cmd if a.startswith("--config")]
  if root:
    argv = [f"--config={os.path.join(root, a[len('--config='):])}"
            if a.startswith("--config=") else a for a in argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  try:
    fv(argv)
  except Exception as e:  # noqa: BLE001  (absl, KeyError, TypeError: name the flags instead)
    raise ValueError(f"launch.py would refuse these flags: {type(e).__name__}: {e}") from e
  return fv.config
