"""The `--config` flag as a user meets it: where the file is found, what a bad key says, the fields.

- `resolve_config_path("configs/default.py:small")` finds a config file from a clone (relative to
  the current directory) or, when that path does not exist, the copy shipped inside the installed
  package (`sim_jax/configs`, built from the repository's `configs/`), so `pip install sim_jax`
  users pass the same `--config=configs/default.py` (or just `--config=default`).
- `override_errors(config, argv)` names each `--config.KEY=VALUE` whose KEY is not a field, with
  the closest field ("Did you mean ..."): absl parses these flags before `main` runs, and its own
  message is a multi-line traceback.
- `field_lines(config, sources)` lists every field with its value and the one-line comment it has
  in the config files (what `--mode=config` prints).

Only the standard library and ml_collections: this runs before JAX or TensorFlow is imported.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import os
import sys
import tokenize
from collections.abc import Iterable, Mapping, Sequence

import ml_collections

# The package that ships configs/ (setup.py maps the repository's configs/ onto it).
PACKAGED = "sim_jax.configs"
# Sections whose fields (and comments) are declared by a library module, not the config file:
# dotted prefix -> (module, function). configs/default.py builds `config.data = data_config()`...
SECTIONS = {
    "data": ("sim_jax.data.config", "default_config"),
    "data.augment": ("sim_jax.data.config", "augment_config"),
    "eval": ("sim_jax.eval.config", "default_config"),
    "loss": ("sim_jax.losses.config", "default_config"),
    "model": ("sim_jax.models.config", "default_config"),
}


def _packaged_dir() -> str | None:
  """The installed package's configs directory, or None in a clone without an install."""
  try:
    spec = importlib.util.find_spec(PACKAGED)
  except ImportError:
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def shipped_configs() -> list[str]:
  """Names of the configs shipped with the installed package (empty in a bare clone)."""
  directory = _packaged_dir()
  if directory is None:
    return []
  return sorted(f[:-3] for f in os.listdir(directory)
                if f.endswith(".py") and not f.startswith("_"))


def _alias_configs_package() -> None:
  # Experiment configs do `from configs import default`; outside a clone `configs` is the
  # installed sim_jax.configs. A clone's own configs/ package (importable) always wins.
  if "configs" in sys.modules:
    return
  try:
    if importlib.util.find_spec("configs") is not None:
      return
  except ImportError:
    pass
  sys.modules["configs"] = importlib.import_module(PACKAGED)


def _make_configs_importable(path: str) -> None:
  # `python launch.py` puts the clone on sys.path (the script's directory), so a config's
  # `from configs import default` works; the `sim-jax` console script does not: add the
  # directory above a `configs/` package the file lives in, unless `configs` is importable.
  directory = os.path.dirname(os.path.abspath(path))
  if os.path.basename(directory) != "configs" or not os.path.isfile(
      os.path.join(directory, "__init__.py")):
    return
  try:
    if "configs" in sys.modules or importlib.util.find_spec("configs") is not None:
      return
  except ImportError:
    pass
  sys.path.insert(0, os.path.dirname(directory))


def resolve_config_path(value: str) -> str:
  """`--config`'s value with the file part made to exist: the path as given when it is a file,
  else the installed copy of `configs/<name>.py` (`<name>` alone works too). The `:arg` suffix
  (passed to `get_config(arg)`) is kept.

  Raises ValueError naming the path and the shipped configs when neither exists.
  """
  path, sep, arg = value.partition(":")
  if os.path.isfile(path):
    _make_configs_importable(path)
    return value
  name = os.path.basename(path)
  name = name[:-3] if name.endswith(".py") else name
  directory = _packaged_dir()
  if directory is not None and os.path.isfile(os.path.join(directory, name + ".py")):
    _alias_configs_package()
    return os.path.join(directory, name + ".py") + sep + arg
  shipped = shipped_configs()
  where = f"; the installed package ships: {', '.join(shipped)}" if shipped else ""
  raise ValueError(f"--config={value}: no such config file {path!r} (relative to "
                   f"{os.getcwd()}){where}")


def resolve_config_argv(argv: Sequence[str]) -> list[str]:
  """argv with every `--config=FILE[:arg]` (or `--config FILE`) resolved by resolve_config_path."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      a = "--config=" + resolve_config_path(a[len("--config="):])
    elif a == "--config" and i + 1 < len(argv):
      out += [a, resolve_config_path(argv[i + 1])]
      i += 2
      continue
    out.append(a)
    i += 1
  return out


def _as_dict(config) -> Mapping:
  # ConfigDict is not a Mapping, and its items() can yield FieldReferences (placeholders).
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config


def flat_keys(config, prefix: str = "") -> list[str]:
  """Dotted names of every field (leaves and sub-sections) of a (nested) config."""
  config = _as_dict(config)
  out = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    out.append(name)
    if isinstance(value, Mapping):
      out += flat_keys(value, name + ".")
  return out


def _override_keys(argv: Iterable[str]) -> list[str]:
  keys = []
  for a in argv:
    if a.startswith("--config.") or a.startswith("--noconfig."):
      key = a.split("=", 1)[0].removeprefix("--no").removeprefix("--").removeprefix("config.")
      keys.append(key)
  return keys


def override_errors(config, argv: Iterable[str]) -> list[str]:
  """One message per `--config.KEY=...` in argv whose KEY is not a field of `config`.

  "unknown config key 'train.stepz' (Did you mean 'train.steps'?)": the suggestion is the
  closest dotted key (difflib ratio >= 0.6), none when nothing is that close.
  """
  known = flat_keys(config)
  errors = []
  for key in _override_keys(argv):
    if key in known:
      continue
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (Did you mean {close[0]!r}?)" if close else ""
    errors.append(f"unknown config key {key!r}{hint}")
  return errors


def first_line(error: BaseException) -> str:
  """The informative line of an absl / ml_collections error (they nest tracebacks in messages)."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  # config_flags wraps a failing get_config in "Error whilst parsing config file: <traceback>":
  # the last line is the exception that get_config raised.
  if len(lines) > 1 and lines[-1] != lines[0] and "Traceback" in str(error):
    return f"{lines[0].rstrip(':')} {lines[-1]}"
  return lines[0]


# ---------------------------------------------------------------------------------------------
# Fields with their comments (--mode=config).


def _target(node: ast.AST) -> list[str] | None:
  """`config.data.name` -> ['config', 'data', 'name']; None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name) or not parts:
    return None
  return [node.id, *reversed(parts)]


def source_comments(source: str, function: str | None = None) -> dict[str, str]:
  """{dotted field: comment} for the assignments `x.a.b = ...` in `source` (inside `function`
  when given), keys relative to `x`. The comment is the one on the assignment's line, else the
  block of full-line comments right above it, joined into one line."""
  comments = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = (tok.string.lstrip("#").strip(), tok.line.strip().startswith("#"),
                                tok.string.startswith("#   "))
  tree = ast.parse(source)
  scope = tree
  if function is not None:
    scope = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                 and n.name == function)
  out = {}
  assigns = sorted((n for n in ast.walk(scope) if isinstance(n, ast.Assign)
                    and len(n.targets) == 1 and _target(n.targets[0]) is not None),
                   key=lambda n: n.lineno)
  continued = set()  # comment lines that continue the assignment above them
  for node in assigns:
    parts = _target(node.targets[0])
    text = next((comments[n][0] for n in range(node.lineno, node.end_lineno + 1)
                 if n in comments and not comments[n][1]), None)
    if text is None:  # the full-line comments directly above
      block, n = [], node.lineno - 1
      while n in comments and comments[n][1] and n not in continued:
        block.insert(0, comments[n][0])
        n -= 1
      text = " ".join(block) or None
    # Continuation lines below the assignment, indented past the '#' ("#      the same ...").
    n = node.end_lineno + 1
    while text is not None and n in comments and comments[n][1] and comments[n][2]:
      text += " " + comments[n][0]
      continued.add(n)
      n += 1
    if text:
      out[".".join(parts[1:])] = _one_line(text)
  return out


def _one_line(text: str, limit: int = 160) -> str:
  """A long comment block cut to its first sentence (the rest is in the file)."""
  if len(text) <= limit or ". " not in text:
    return text
  return text[:text.index(". ") + 1]


def _module_source(module: str) -> str | None:
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.origin or not os.path.isfile(spec.origin):
    return None
  with open(spec.origin) as f:
    return f.read()


def field_comments(config_files: Sequence[str]) -> dict[str, str]:
  """{dotted field: comment}: what a library section says of its field (`sim_jax/data/config.py`
  ...) wins, since a config file's comment on the same line explains the value it chose; the
  other fields (train, optimizer, ...) take the config files' comments, later files first (pass
  configs/default.py before an experiment config that overrides it)."""
  out = {}
  for path in config_files:
    with open(path) as f:
      comments = source_comments(f.read())
    out.update({k: v for k, v in comments.items() if not v.startswith("fields:")})
  for prefix, (module, function) in SECTIONS.items():
    source = _module_source(module)
    if source is not None:
      out.update({f"{prefix}.{k}": v for k, v in source_comments(source, function).items()})
  return out


def field_lines(config, comments: Mapping[str, str]) -> list[str]:
  """`key = value  # comment` for every leaf field of `config`, in the config's order."""
  lines = []

  def visit(c, prefix):
    for key, value in c.items():
      name = f"{prefix}{key}"
      if isinstance(value, Mapping):
        visit(value, name + ".")
        continue
      comment = comments.get(name)
      lines.append(f"{name} = {value!r}" + (f"  # {comment}" if comment else ""))

  visit(_as_dict(config), "")
  return lines


def config_sources(config_path: str) -> list[str]:
  """The files whose comments describe `config_path`'s fields: its sibling default.py (which
  experiment configs import and change) and the file itself."""
  path = config_path.partition(":")[0]
  default = os.path.join(os.path.dirname(path), "default.py")
  return [default, path] if os.path.isfile(default) and default != path else [path]
