"""sim_jax.losses public surface: input validation, no recompilation, config, exports, and a
one-way module graph (no import cycle, no function-local import)."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from sim_jax import losses
from sim_jax.losses import objective

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
Y = jnp.array([0, 0, 1, 1, 2, 2], jnp.int32)
ALL_PAIRS = {
    "nt_xent": losses.nt_xent,
    "supcon": losses.supcon,
    "triplet": losses.triplet,
    "snr_contrastive": losses.snr_contrastive,
    "recall_at_k_surrogate": losses.recall_at_k_surrogate,
    "diagnostics": losses.diagnostics,
}


@pytest.mark.parametrize("name", sorted(ALL_PAIRS))
def test_labels_are_checked(name):
  fn = ALL_PAIRS[name]
  with pytest.raises(ValueError, match=r"labels must have shape \[6\].*\(5,\)"):
    fn(X, Y[:5])
  with pytest.raises(ValueError, match=r"labels must have shape \[6\].*\(6, 1\)"):
    fn(X, Y[:, None])
  with pytest.raises(ValueError, match="labels must be an integer array.*float32"):
    fn(X, Y.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"embeddings must have shape \[N, D\].*\(6,\)"):
    fn(X[:, 0], Y)
  with pytest.raises(ValueError, match="embeddings must be a floating-point array.*int32"):
    fn(Y[:, None] * jnp.ones((1, 3), jnp.int32), Y)


@pytest.mark.parametrize("fn", [losses.nt_xent, losses.supcon])
@pytest.mark.parametrize("t", [0.0, -0.1])
def test_non_positive_temperature(fn, t):
  with pytest.raises(ValueError, match=f"temperature must be > 0, got {t}"):
    fn(X, Y, temperature=t)


def test_names_and_scalars_are_checked():
  with pytest.raises(ValueError, match="mining must be one of .*got 'hardest'"):
    losses.triplet(X, Y, mining="hardest")
  with pytest.raises(ValueError, match="distance must be one of .*got 'manhattan'"):
    losses.triplet(X, Y, distance="manhattan")
  with pytest.raises(ValueError, match="distance must be one of .*got 'squared_euclidean'"):
    losses.contrastive(X, X, Y % 2, distance="squared_euclidean")
  with pytest.raises(ValueError, match="reduction must be one of .*got 'avg'"):
    losses.nt_xent(X, Y, reduction="avg")
  with pytest.raises(ValueError, match="reduction must be one of .*got 'avg'"):
    losses.pair_bce(X[:, 0], Y % 2, reduction="avg")
  with pytest.raises(ValueError, match="margin must be >= 0, got -0.1"):
    losses.triplet(X, Y, margin=-0.1)
  with pytest.raises(ValueError, match="margin must be > 0, got 0.0"):
    losses.contrastive(X, X, Y % 2, margin=0.0)
  with pytest.raises(ValueError, match="block_size must be None .*got 0"):
    losses.nt_xent(X, Y, block_size=0)
  with pytest.raises(ValueError, match="k_values must be .*got \\(\\)"):
    losses.recall_at_k_surrogate(X, Y, k_values=())
  with pytest.raises(ValueError, match="rank_temperature must be > 0"):
    losses.recall_at_k_surrogate(X, Y, rank_temperature=0.0)


def test_pair_inputs_are_checked():
  with pytest.raises(ValueError, match=r"emb_a and emb_b must have the same shape.*\(6, 3\).*"
                                       r"\(5, 3\)"):
    losses.contrastive(X, X[:5], Y % 2)
  with pytest.raises(ValueError, match=r"same must have shape \[6\].*\(5,\)"):
    losses.contrastive(X, X, Y[:5] % 2)
  with pytest.raises(ValueError, match="same must be a bool or integer array.*float32"):
    losses.contrastive(X, X, (Y % 2).astype(jnp.float32))
  with pytest.raises(ValueError, match=r"logits must have shape \[B\] or \[B, 1\].*\(6, 2\)"):
    losses.pair_bce(X[:, :2], Y % 2)
  with pytest.raises(ValueError, match=r"same must have shape \[6\].*\(4,\)"):
    losses.pair_bce(X[:, 0], Y[:4])
  with pytest.raises(ValueError, match=r"z1 and z2 must have the same shape"):
    losses.nt_xent_pairs(X, X[:4])


def test_validation_runs_under_jit():
  """Shapes and dtypes are static: the same ValueError is raised while tracing."""
  with pytest.raises(ValueError, match="labels must be an integer array"):
    jax.jit(losses.nt_xent)(X, Y.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"labels must have shape \[6\]"):
    jax.jit(losses.triplet)(X, Y[:3])


CALLS = {  # loss -> (jitted function, args for call 1, args for call 2 with the same shapes)
    "contrastive": (jax.jit(losses.contrastive), (X, X[::-1], Y % 2), (X * 2, X, 1 - Y % 2)),
    "learnable_margin_contrastive": (jax.jit(losses.learnable_margin_contrastive),
                                     (X, X[::-1], Y % 2, 1.0), (X * 2, X, Y % 2, 0.5)),
    "pair_bce": (jax.jit(losses.pair_bce), (X[:, 0], Y % 2), (X[:, 1], 1 - Y % 2)),
    "nt_xent": (jax.jit(losses.nt_xent), (X, Y, 0.1), (X * 3, Y[::-1], 0.5)),
    "nt_xent_pairs": (jax.jit(losses.nt_xent_pairs), (X, X * 2, 0.1), (X[::-1], X, 0.2)),
    "supcon": (jax.jit(losses.supcon), (X, Y, 0.1), (X * 3, Y[::-1], 0.5)),
    "triplet": (jax.jit(losses.triplet), (X, Y, 0.2), (X * 3, Y[::-1], 0.1)),
    "snr_contrastive": (jax.jit(losses.snr_contrastive), (X, Y), (X * 3, Y[::-1])),
    "recall_at_k_surrogate": (jax.jit(losses.recall_at_k_surrogate), (X, Y), (X * 3, Y[::-1])),
    "diagnostics": (jax.jit(losses.diagnostics), (X, Y), (X * 3, Y[::-1])),
    "softmax_ce": (jax.jit(losses.softmax_ce), (X, Y), (X * 3, Y[::-1])),
    "multi_similarity": (jax.jit(losses.multi_similarity), (X, Y, 2.0), (X * 3, Y[::-1], 3.0)),
    "vicreg": (jax.jit(losses.vicreg), (X, X[::-1]), (X * 3, X)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_second_call_with_same_shapes_does_not_recompile(name):
  fn, first, second = CALLS[name]
  jax.block_until_ready(fn(*first))
  # jit caches are shared by every jax.jit of the same function, so compare before / after.
  size = fn._cache_size()
  out = fn(*second)                      # new values (temperature / margin too), same shapes
  jax.block_until_ready(out)
  assert fn._cache_size() == size, f"{name} recompiled for new values of the same shapes"
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(out))


def test_default_config_holds_every_field_the_trainer_reads():
  c = losses.default_config()
  assert c.name in objective.NAMES
  assert set(objective.NAMES) == {
      "contrastive", "learnable_margin_contrastive", "pair_bce", "nt_xent", "supcon", "triplet",
      "snr_contrastive", "recall_at_k_surrogate", "softmax_ce", "sigmoid_contrastive"} | {
      "arcface", "subcenter_arcface", "cosface", "large_margin_softmax", "sphereface",
      "normalized_softmax", "proxy_nca", "proxy_anchor", "soft_triple", "p2sgrad",
      "pool_triplet", "adaptive_margin_contrastive", "manifold"} | set(objective.TUPLE_LOSSES)
  for field in ("temperature", "learnable_temperature", "margin", "learnable_margin", "squared",
                "distance", "mining", "soft", "block_size", "pos_margin", "snr_regularization",
                "k_values", "rank_temperature", "k_temperature", "siglip_bias",
                "siglip_log_temperature", "num_classes", "class_margin", "class_scale",
                "centers_per_class", "angle_multiplier", "soft_triple_gamma", "soft_triple_tau",
                "max_positives", "manifold_proxies", "manifold_lambda_c", "manifold_alpha"):
    assert field in c, field
  assert c.block_size is None                     # dense by default
  c.block_size = 256                              # typed placeholder: an int override works
  assert c.block_size == 256
  with pytest.raises(TypeError):
    c.block_size = "256"
  with pytest.raises(AttributeError):             # locked: typos fail loudly
    c.temprature = 0.2
  assert isinstance(losses.default_config().get_ref("block_size"), config_dict.FieldReference)
  # Every configured choice is accepted by the losses.
  losses.triplet(X, Y, mining=c.mining, distance=c.distance, soft=c.soft)
  losses.contrastive(X, X, Y % 2, margin=c.margin, squared=c.squared, distance=c.distance)


def test_exports():
  for name in losses.__all__:
    assert callable(getattr(losses, name)), name
  for name in objective.NAMES + ("clip_infonce", "siglip"):
    assert callable(getattr(losses, name)), name
  for name in ("nt_xent_stats_dense", "supcon_stats_dense", "triplet_stats_dense", "diagnostics",
               "nt_xent_stats", "supcon_stats", "triplet_stats", "l2_normalize"):
    assert name in losses.__all__


def _losses_import_graph():
  """{module: {sim_jax.losses submodules it imports}} read from the source files, plus the
  function-local imports found (as "module:line")."""
  package = pathlib.Path(losses.__file__).parent
  graph, local = {}, []
  for path in sorted(package.glob("*.py")):
    module = path.stem
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    graph[module] = set()
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      if id(node) not in top:
        local.append(f"{module}:{node.lineno}")
      if isinstance(node, ast.ImportFrom) and node.module == "sim_jax.losses":
        graph[module] |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sim_jax.losses."):
        graph[module].add(node.module.rsplit(".", 1)[1])
  return graph, local


def test_losses_modules_import_one_way_at_the_top():
  graph, local = _losses_import_graph()
  assert not local, f"function-local imports: {local}"
  assert {"sweep", "infonce_streaming", "triplet_streaming", "distributed"} <= set(graph)
  assert "streaming" not in graph   # split into sweep / infonce_streaming / triplet_streaming
  # Depth-first search for a back edge: a module reachable from itself is an import cycle.
  done, active = set(), []

  def visit(module):
    assert module not in active, "import cycle: " + " -> ".join(active + [module])
    if module in done:
      return
    active.append(module)
    for dep in sorted(graph.get(module, ())):
      visit(dep)
    active.pop()
    done.add(module)

  for module in sorted(graph):
    if module != "__init__":
      visit(module)
  # The sweep machinery is a leaf of the streaming losses: it imports no loss.
  assert graph["sweep"] == set()
  assert graph["distributed"] == {"sweep"}
