"""The layout docs/architecture.md promises, read from the source files (nothing is imported).

- sim_jax's modules import each other one way: no cycle, counting every module-level import.
- Imports sit at the top of each module; the only function-local ones are the documented
  optional dependencies in `ALLOWED_LOCAL`.
- Leaf packages (models, losses, data, eval, cpu, the numerics) never import the trainer, the
  inference modes, the experiment runner or the checkpoint layer.
- No module is longer than `MAX_LINES`.
"""

import ast
import pathlib

from tests import helpers

PACKAGE = pathlib.Path(helpers.REPO_ROOT) / "sim_jax"
MAX_LINES = 700
# module -> the names it may import inside a function, and why.
ALLOWED_LOCAL = {
    "sim_jax.models.convert": {"torch", "safetensors.numpy"},  # optional: weight conversion only
    "sim_jax.experiments.search": {"optuna"},  # optional (the `search` extra): one try at the top
    # The command line: `malloc.maybe_reexec()` may re-exec the process before JAX / TF load, and
    # `--help` / `--mode=config` / a bad flag must answer without loading them (seconds).
    "sim_jax.main": {"jax", "tensorflow", "tensorflow_datasets", "sim_jax"},
}
LEAVES = ("sim_jax.models", "sim_jax.losses", "sim_jax.data", "sim_jax.eval", "sim_jax.cpu",
          "sim_jax.numerics", "sim_jax.sharding")
UPPER = ("sim_jax.train", "sim_jax.inference", "sim_jax.experiments", "sim_jax.checkpointing")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
  path = PACKAGE.parent.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _targets(node) -> set[str]:
  """The sim_jax modules an import statement loads (a `from pkg import sub` names `pkg.sub`)."""
  if isinstance(node, ast.Import):
    return {a.name for a in node.names if a.name.split(".")[0] == "sim_jax"}
  if node.level or not (node.module or "").startswith("sim_jax"):
    return set()
  subs = {f"{node.module}.{a.name}" for a in node.names}
  found = {s for s in subs if _is_module(s)}
  return found if found == subs else found | {node.module}


def _read_package():
  graph, local, lengths = {}, [], {}
  for path in sorted(PACKAGE.rglob("*.py")):
    name = _module_name(path)
    text = path.read_text()
    lengths[name] = len(text.splitlines())
    tree = ast.parse(text)
    top = set(map(id, tree.body))
    graph[name] = set()
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      if id(node) not in top:
        imported = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        if imported not in ALLOWED_LOCAL.get(name, ()):
          local.append(f"{name}:{node.lineno} ({imported})")
        continue
      graph[name] |= _targets(node) - {name}
  return graph, local, lengths


GRAPH, LOCAL, LENGTHS = _read_package()


def test_the_reader_sees_the_package():
  # Guards the test itself: a reader that found nothing would pass everything below.
  assert {"sim_jax.train", "sim_jax.losses.sweep", "sim_jax.cpu.execution"} <= set(GRAPH)
  assert "sim_jax.cpu" in GRAPH["sim_jax.train"]
  assert "sim_jax.losses.objective" in GRAPH["sim_jax.train"]


def test_no_import_cycle():
  done, active = set(), []

  def visit(module):
    assert module not in active, "import cycle: " + " -> ".join(active[active.index(module):]
                                                                 + [module])
    if module in done:
      return
    active.append(module)
    for dep in sorted(GRAPH.get(module, ())):
      # A package's __init__ re-exporting its submodules is not a cycle with them.
      if not (module.startswith(dep + ".") and GRAPH.get(dep)):
        visit(dep)
    active.pop()
    done.add(module)

  for module in sorted(GRAPH):
    visit(module)


def test_imports_are_at_the_top():
  assert not LOCAL, f"function-local imports: {LOCAL}"


def test_leaf_packages_never_import_the_trainer_side():
  offending = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if m.startswith(LEAVES)
                     for d in deps if d.startswith(UPPER))
  assert not offending, offending


def test_no_module_is_longer_than_the_anchor_trainers():
  long = {m: n for m, n in LENGTHS.items() if n > MAX_LINES}
  assert not long, long
