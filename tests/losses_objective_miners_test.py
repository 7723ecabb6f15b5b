"""Every miner of sim_jax.losses.miners selectable by `config.loss.miner.name` for the pair and
triplet losses of the loss table (random ones with the step's key), and P2SGrad / dynamic soft
margin in the table: values against explicit NumPy loops, pml's pair conversion, and the
miner functions called by hand with the same key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import losses, validation
from sim_jax.losses import miners, objective
from tests.experiments_trace_test import CLASSES, synthetic_batch, trace_train_step
from tests.losses_manifold_test import ref_manifold
from tests.losses_ranked_ssl_test import ref_dsm

LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 4], np.int32)  # label 2 has no positive
M = len(LABELS)
RNG = jax.random.key(3)


def _x(seed, d=5):
  return np.random.default_rng(seed).normal(size=(M, d))


def _config(name, miner="none", **fields):
  config = test_config.get_config()
  config.loss.name = name
  config.data.sampler = "pk"
  config.loss.miner.name = miner
  for k, v in fields.items():
    if k.startswith("miner_"):
      config.loss.miner[k[len("miner_"):]] = v
    else:
      config.loss[k] = v
  objective.validate(config)
  return config


def _table(config, x, rng=RNG, params=None):
  return objective.loss(config, params or {}, jnp.asarray(x), jnp.asarray(LABELS), {},
                        rng=rng)


# ----------------------------------------------------------------------------- NumPy loops
def _ms_loop(x, y, pos_set, neg_set, alpha=2.0, beta=50.0, base=0.5):
  """Multi-similarity over the given pair sets only (cosine of the raw embeddings)."""
  u = x / np.linalg.norm(x, axis=1, keepdims=True)
  total, count = 0.0, 0
  for a in range(len(y)):
    ps = [p for p in range(len(y)) if (a, p) in pos_set]
    ns = [n for n in range(len(y)) if (a, n) in neg_set]
    if not ps and not ns:
      continue
    lp = np.log1p(sum(np.exp(-alpha * (u[a] @ u[p] - base)) for p in ps)) / alpha
    ln = np.log1p(sum(np.exp(beta * (u[a] @ u[n] - base)) for n in ns)) / beta
    total, count = total + lp + ln, count + 1
  return total / max(count, 1)


def _pair_margin_sets(x, y, pos_margin, neg_margin):
  pos, neg = set(), set()
  for a in range(len(y)):
    for j in range(len(y)):
      d = np.linalg.norm(x[a] - x[j])
      if a != j and y[a] == y[j] and d > pos_margin:
        pos.add((a, j))
      if y[a] != y[j] and d < neg_margin:
        neg.add((a, j))
  return pos, neg


def test_pair_miner_selects_the_pairs_of_a_tuple_loss():
  x = _x(0)
  config = _config("multi_similarity", "pair_margin", miner_pos_margin=1.5, miner_neg_margin=3.0)
  pos, neg = _pair_margin_sets(x, LABELS, 1.5, 3.0)
  assert pos and neg and len(neg) < sum(LABELS[:, None] != LABELS[None, :]).sum()
  np.testing.assert_allclose(_table(config, x), _ms_loop(x, LABELS, pos, neg), rtol=1e-5)


def test_triplet_miner_gives_a_tuple_loss_pmls_pairs():
  # A TripletMask reaches the pair losses as pml's convert_to_pairs: (a, p) and (a, n) of every
  # selected triplet.
  lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")
  torch = pytest.importorskip("torch")
  x = _x(1)
  mined = miners.triplet_margin(jnp.asarray(x), jnp.asarray(LABELS), 0.5, "semihard")
  a, p, n = (torch.from_numpy(v) for v in np.nonzero(np.asarray(mined.mask)))
  a1, p1, a2, n2 = lmu.convert_to_pairs((a, p, n), torch.from_numpy(LABELS))
  pos = set(zip(a1.tolist(), p1.tolist()))
  neg = set(zip(a2.tolist(), n2.tolist()))
  pairs = miners.as_pairs(mined)
  assert {tuple(i) for i in np.argwhere(np.asarray(pairs.pos) > 0)} == pos
  assert {tuple(i) for i in np.argwhere(np.asarray(pairs.neg) > 0)} == neg
  config = _config("multi_similarity", "triplet_margin", miner_margin=0.5,
                   miner_type_of_triplets="semihard")
  np.testing.assert_allclose(_table(config, x), _ms_loop(x, LABELS, pos, neg), rtol=1e-5)


@pytest.mark.parametrize("miner,fields", [
    ("uniform_histogram", dict(miner_num_bins=4, miner_pos_per_bin=3, miner_neg_per_bin=5)),
    ("distance_weighted", dict(miner_cutoff=0.3)),
    ("maximum_loss", dict(miner_output_batch_size=6, miner_num_trials=3)),
])
def test_random_miners_draw_with_the_step_key(miner, fields):
  x = jnp.asarray(_x(2))
  y = jnp.asarray(LABELS)
  config = _config("triplet", miner, mining="batch_all", **fields)
  key = jax.random.fold_in(RNG, objective._MINER_STREAM)
  c = config.loss.miner
  trip = lambda x_, y_, mask: losses.triplet(x_, y_, margin=config.loss.margin,
                                             mining="batch_all", mask=mask)
  if miner == "uniform_histogram":
    mined = miners.uniform_histogram(x, y, key, 4, 3, 5)
  elif miner == "distance_weighted":
    mined = miners.distance_weighted(x / jnp.linalg.norm(x, axis=1, keepdims=True), y, key,
                                     0.3, c.nonzero_loss_cutoff)
  else:
    mined = miners.maximum_loss(x, y, key, trip, 6, 3)
  np.testing.assert_allclose(_table(config, x), trip(x, y, mined), rtol=1e-6)
  # Another step's key draws another selection (same value only by chance: not here).
  assert float(_table(config, x, rng=jax.random.key(4))) != float(_table(config, x))
  with pytest.raises(ValueError, match=f"miner.name='{miner}' draws at random"):
    _table(config, x, rng=None)


# One loss per kind of mask use (row cores, O(M^3) tuples, ranking, the triplet loss itself),
# each with a pair miner, a triplet miner and a random miner: traced (every miner is checked
# against its NumPy loop in losses_miners_test.py).
@pytest.mark.parametrize("name", ["circle", "angular", "fast_ap", "margin_loss",
                                  "dynamic_soft_margin", "triplet"])
@pytest.mark.parametrize("miner", ["hdc", "angular", "uniform_histogram"])
def test_mined_losses_take_every_kind_of_miner(name, miner):
  extra = dict(mining="batch_all") if name == "triplet" else {}
  config = _config(name, miner, **extra)
  out = jax.eval_shape(lambda x: _table(config, x), jnp.zeros((M, 5), jnp.float32))
  assert out.shape == ()


def test_every_miner_is_a_config_choice_and_mined_losses_read_it():
  public = {n for n in dir(miners) if callable(getattr(miners, n)) and not n.startswith("_")
            and getattr(miners, n).__annotations__.get("return") in ("PairMask", "TripletMask")}
  assert public == set(miners.CONFIG_MINERS) - {"none"}
  for name in objective.MINED_LOSSES:
    assert "miner" in objective.spec(name).fields, name


def test_miner_config_errors_name_the_key():
  with pytest.raises(ValueError,
                     match=r"config\.loss\.miner\.name must be one of .*got 'maximum_loss'"):
    config = test_config.get_config()
    config.loss.name, config.data.sampler = "contrastive", "pairs"
    config.loss.miner.name = "maximum_loss"
    objective.validate(config)
  with pytest.raises(ValueError, match=r"config\.loss\.block_size=4"):
    _config("nca", "hdc", block_size=4)
  with pytest.raises(ValueError, match=r"config\.loss\.miner\.num_trials=3 is not read"):
    _config("instance_loss", miner_num_trials=3)


def test_a_train_step_with_a_random_miner_traces():
  config = _config("triplet", "distance_weighted", mining="batch_all")
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), synthetic_batch(config))
  state, new_state = trace_train_step(config, batch, CLASSES)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


# ------------------------------------------------------------------ P2SGrad, dynamic soft margin
def test_p2sgrad_in_the_table_uses_the_proxies_as_class_weights():
  config = _config("p2sgrad", num_classes=6)
  params = {"loss": objective.init_params(config.loss, embedding_dim=5, num_classes=6,
                                          rng=jax.random.key(0))}
  w = np.asarray(params["loss"]["proxies"], np.float64)
  assert w.shape == (6, 5)
  x = _x(3)
  u = x / np.linalg.norm(x, axis=1, keepdims=True)
  v = w / np.linalg.norm(w, axis=1, keepdims=True)
  ref = np.mean([(u[i] @ v[c] - (c == LABELS[i])) ** 2 for i in range(M) for c in range(6)])
  np.testing.assert_allclose(_table(config, x, params=params), ref, rtol=1e-5)
  grads = jax.grad(lambda p: _table(config, x, params=p))(params)
  assert np.all(np.isfinite(grads["loss"]["proxies"]))
  assert np.any(grads["loss"]["proxies"] != 0)


def test_dynamic_soft_margin_in_the_table_uses_the_batch_histogram():
  config = _config("dynamic_soft_margin", dsm_num_bins=8, dsm_min_val=-2.5)
  x = _x(4)
  ref, _ = ref_dsm(x, LABELS, np.zeros(8), min_val=-2.5)  # x >= -2 > min_val
  np.testing.assert_allclose(_table(config, x), ref, rtol=1e-5)
  with pytest.raises(ValueError, match=r"config\.loss\.dsm_min_val"):
    config.loss.dsm_min_val = 0.0
    validation.check_ranges(config)


def test_manifold_in_the_table_draws_meta_classes_from_the_step_key():
  # The table's manifold equals the NumPy loop of tests/losses_manifold_test.py on the proxies in
  # params["loss"] and the meta classes pml's rule draws from the step key's loss stream; another
  # step key draws other meta classes (another value); no key is refused by name.
  config = _config("manifold", manifold_proxies=3, manifold_lambda_c=0.7)
  params = {"loss": objective.init_params(config.loss, embedding_dim=5, num_classes=5,
                                          rng=jax.random.key(0))}
  p = np.asarray(params["loss"]["proxies"], np.float64)
  assert p.shape == (3, 5)
  x = _x(5)
  meta = np.asarray(losses.random_meta_classes(jax.random.fold_in(RNG, objective._LOSS_STREAM),
                                               M, 3))
  assert sorted(set(meta.tolist())) == [0, 1, 2]
  ref = ref_manifold(x.astype(np.float64), p, meta, lambda_c=0.7)
  np.testing.assert_allclose(_table(config, x, params=params), ref, rtol=1e-4)
  other = _table(config, x, rng=jax.random.key(123), params=params)
  other_meta = np.asarray(losses.random_meta_classes(
      jax.random.fold_in(jax.random.key(123), objective._LOSS_STREAM), M, 3))
  np.testing.assert_allclose(other, ref_manifold(x.astype(np.float64), p, other_meta,
                                                 lambda_c=0.7), rtol=1e-4)
  grads = jax.grad(lambda q: _table(config, x, params=q))(params)
  assert np.all(np.isfinite(grads["loss"]["proxies"])) and np.any(grads["loss"]["proxies"] != 0)
  with pytest.raises(ValueError, match="manifold"):
    _table(config, x, rng=None, params=params)
