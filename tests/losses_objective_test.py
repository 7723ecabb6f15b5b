"""The loss table (sim_jax.losses.objective): what each loss reads, and what config it refuses.

The reference for "fields a loss reads" is the loss itself: each entry's function is traced with
a config that records every field it touches, so a table that lies about a loss fails here.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sim_jax import models
from sim_jax.losses import config as loss_config
from sim_jax.losses import objective


class _Recorder:
  """A loss config that records the fields read from it."""

  def __init__(self, cfg):
    self._cfg, self.read = cfg, set()

  def __getattr__(self, key):
    self.read.add(key)
    return self._cfg[key]


def _params(name, cfg):
  params = {}
  loss_params = objective.init_params(cfg, embedding_dim=4, num_classes=3,
                                      rng=jax.random.PRNGKey(0))
  if loss_params:
    params["loss"] = loss_params
  return params


@pytest.mark.parametrize("name", objective.NAMES)
def test_each_loss_reads_only_the_fields_its_entry_lists(name):
  cfg = loss_config.default_config()
  cfg.name = name
  if name == "manifold":
    cfg.manifold_proxies = 4  # pml's rule uses every proxy once: K <= the 8 samples
  spec = objective.LOSSES[name]
  rec = _Recorder(cfg)
  z = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
  labels = jnp.array([0, 0, 1, 1, 2, 2, 0, 1])
  params = _params(name, cfg)
  if spec.inputs == "pairs":
    head = None
    if "pair_head" in spec.params:
      head = models.get_pair_head(models.default_config())
      params["pair_head"] = head.init(jax.random.PRNGKey(2), z[:4], z[4:])["params"]
    extra = {"labels": labels.reshape(4, 2)} if spec.pair_labels else {}  # the pairs' classes
    value = spec.fn(rec, params, z[:4], z[4:], jnp.array([1, 0, 1, 0]), head, **extra)
  elif spec.inputs == "pools":  # 2 pools of [query, true match, 2 foils]
    value = spec.fn(rec, params, z.reshape(2, 4, 4), labels, None)
  else:
    rng = {"rng": jax.random.PRNGKey(3)} if spec.needs_rng else {}
    value = spec.fn(rec, params, z, labels, None, **rng)
  assert jnp.isfinite(value)
  assert rec.read <= set(spec.fields), (name, rec.read - set(spec.fields))
  assert set(spec.fields) <= set(cfg.keys())


def _config(**loss):
  from configs import test as test_config
  cfg = test_config.get_config()
  for k, v in loss.items():
    if k == "sampler":
      cfg.data.sampler = v
    else:
      cfg.loss[k] = v
  return cfg


def test_a_field_the_loss_does_not_read_is_refused_with_its_key():
  with pytest.raises(ValueError, match=r"config\.loss\.margin=0\.5 is not read by "
                                       r"config\.loss\.name='nt_xent'"):
    objective.validate(_config(margin=0.5))
  with pytest.raises(ValueError, match=r"config\.loss\.k_values=\(1, 2\)"):
    objective.validate(_config(name="triplet", k_values=(1, 2)))
  # Back at its default, or read by the loss: accepted.
  objective.validate(_config(margin=1.0))
  objective.validate(_config(name="triplet", margin=0.5, mining="semi_hard"))


def test_an_unknown_field_is_refused_with_its_key():
  cfg = _config()
  with cfg.unlocked():
    cfg.loss.temprature = 0.2
  with pytest.raises(ValueError, match=r"config\.loss\.temprature=0\.2 is not a loss field"):
    objective.validate(cfg)


def test_contrastive_refuses_squared_euclidean_instead_of_mapping_it():
  with pytest.raises(ValueError, match=r"config\.loss\.distance='squared_euclidean'"):
    objective.validate(_config(name="contrastive", sampler="pairs",
                               distance="squared_euclidean"))
  objective.validate(_config(name="triplet", distance="squared_euclidean"))


def test_samplers_and_names():
  with pytest.raises(ValueError, match="trains on pairs"):
    objective.validate(_config(name="contrastive"))
  with pytest.raises(ValueError, match="needs labelled batches"):
    objective.validate(_config(name="nt_xent", sampler="pairs"))
  objective.validate(_config(name="snr_contrastive", sampler="pairs"))  # labels of pair images
  with pytest.raises(ValueError, match=r"config\.loss\.name='siglip'"):
    objective.validate(_config(name="siglip"))


def test_snr_contrastive_on_pairs_is_the_label_loss_of_the_flattened_pair_images():
  """The configs/embeddings.py 'snr' variant: pairs sampler, snr_contrastive."""
  from sim_jax import losses
  cfg = _config(name="snr_contrastive", sampler="pairs", pos_margin=0.1)
  z = jax.random.normal(jax.random.PRNGKey(3), (8, 4))
  labels = jnp.array([0, 0, 1, 2, 2, 2, 3, 1])
  got = objective.loss(cfg, {}, z, labels, {"same": jnp.array([1, 0, 1, 0])})
  want = losses.snr_contrastive(z, labels, pos_margin=0.1, neg_margin=1.0)
  assert jnp.allclose(got, want)


def test_learnable_parameters_start_at_their_configured_values():
  cfg = ml_collections.ConfigDict(loss_config.default_config().to_dict())
  cfg.name, cfg.margin, cfg.learnable_margin = "triplet", 0.3, True
  params = {"loss": objective.init_params(cfg)}
  assert jnp.allclose(objective.margin(cfg, params), 0.3)  # softplus(softplus^-1(0.3))
  assert objective.temperature(cfg, params) == cfg.temperature


def test_sigmoid_contrastive_entry_is_the_seed_002_chain():
  """objective.loss with the Euclidean PairHead: s = sigmoid(b - w ||a - c||), then
  y (1 - s)^2 + (1 - y) s^2 (margin 1), against a NumPy loop over the pairs."""
  cfg = _config(name="sigmoid_contrastive", sampler="pairs")
  head = models.get_pair_head(_euclidean_model_config())
  z = jax.random.normal(jax.random.PRNGKey(4), (8, 3))
  params = {"pair_head": {"scale": jnp.asarray(0.7), "bias": jnp.asarray(1.3)}}
  same = jnp.array([1, 0, 0, 1])
  got = objective.loss(cfg, params, z, None, {"same": same}, pair_head=head)
  zn = np.asarray(z, np.float64).reshape(4, 2, 3)
  want = []
  for (a, c), y in zip(zn, np.asarray(same)):
    s = 1 / (1 + np.exp(-(1.3 - 0.7 * np.sqrt(np.sum((a - c) ** 2)))))
    want.append((1 - s) ** 2 if y else s ** 2)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)


def _euclidean_model_config():
  c = models.default_config()
  c.pair_head = "euclidean"
  return c


def test_margin_reward_reaches_the_learnt_contrastive_and_is_refused_on_a_fixed_margin():
  """objective.loss of learnable_margin_contrastive with margin_reward = lambda is the seed's
  contrastive loss (sim_jax.losses.contrastive at the learnt m) minus lambda m."""
  from sim_jax import losses
  cfg = _config(name="learnable_margin_contrastive", sampler="pairs", margin=0.8,
                margin_reward=0.2)
  objective.validate(cfg)
  params = {"loss": objective.init_params(cfg.loss)}
  z = jax.random.normal(jax.random.PRNGKey(6), (8, 3))
  same = jnp.array([1, 0, 0, 1])
  got = objective.loss(cfg, params, z, None, {"same": same})
  want = losses.contrastive(z[0::2], z[1::2], same, margin=0.8) - 0.2 * 0.8
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match=r"config\.loss\.margin_reward=0\.2"):
    objective.validate(_config(name="contrastive", sampler="pairs", margin_reward=0.2))
