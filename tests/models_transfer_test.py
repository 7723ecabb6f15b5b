"""init_from (merge_pretrained) with in-memory trees of two model configs, and ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sim_jax.models import default_config, get_model
from sim_jax.models.ensemble import ensemble_embed_fn
from sim_jax.models.heads import PairHead
from sim_jax.models.testing import random_variables
from sim_jax.models.transfer import init_from, merge_pretrained


def _cfg(name, **kw):
  c = default_config()
  c.name = name
  c.update(kw)
  return c


def _train_state_variables(cfg, x, seed, pair_head=False):
  """The train state's layout: params {"encoder", "pair_head"?}, batch_stats {"encoder"}."""
  v = random_variables(get_model(cfg), x, seed=seed)
  params = {"encoder": v["params"]}
  if pair_head:
    e = jnp.zeros((1, cfg.embedding_dim))
    params["pair_head"] = random_variables(PairHead(), e, e, seed=seed)["params"]
  return {"params": params, "batch_stats": {"encoder": v.get("batch_stats", {})}}


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_simclr_pretrain_to_siamese_finetune():
  x = jnp.zeros((1, 8, 8, 1))
  source = _train_state_variables(_cfg("resnet_tiny", projection_depth=2), x, seed=1)
  target = _train_state_variables(_cfg("resnet_tiny"), x, seed=2, pair_head=True)
  merged, report = merge_pretrained(target, source, source_name="runs/simclr")
  src, tgt, out = _flat(source), _flat(target), _flat(merged)
  assert set(out) == set(tgt)
  # Hand-written expectation: encoder leaves present in both come from the source, the rest
  # (pair head) keep the target's values; the projection head exists only in the source.
  for name in tgt:
    expected = src[name] if name.startswith(("params/encoder/", "batch_stats/encoder/")) \
        and name in src else tgt[name]
    np.testing.assert_array_equal(out[name], expected, err_msg=name)
  assert sorted(report["initialised"]) == sorted(n for n in tgt if "pair_head" in n)
  assert sorted(report["skipped"]) == sorted(n for n in src if "/projection/" in n)
  assert len(report["loaded"]) == len(tgt) - len(report["initialised"])
  assert "batch_stats/encoder/backbone/bn1/mean" in report["loaded"]


def test_shape_mismatch_names_every_parameter_and_both_shapes():
  source = _train_state_variables(_cfg("resnet_tiny", embedding_dim=32), jnp.zeros((1, 8, 8, 1)),
                                  seed=1)
  target = _train_state_variables(_cfg("resnet_tiny", embedding_dim=16), jnp.zeros((1, 8, 8, 3)),
                                  seed=2)
  with pytest.raises(ValueError) as err:
    merge_pretrained(target, source, source_name="/ckpt/run7")
  msg = str(err.value)
  assert "/ckpt/run7" in msg and "3 parameter shape mismatch" in msg
  assert "params/encoder/backbone/conv1/kernel: target (3, 3, 3, 8) vs source (3, 3, 1, 8)" in msg
  assert "params/encoder/embed/kernel: target (64, 16) vs source (64, 32)" in msg
  assert "params/encoder/embed/bias: target (16,) vs source (32,)" in msg


def test_checkpoint_of_another_model_fails_clearly():
  x = jnp.zeros((1, 8, 8, 1))
  source = _train_state_variables(_cfg("lenet5"), x, seed=1)
  target = _train_state_variables(_cfg("resnet_tiny"), x, seed=2)
  expected = (r"(?s)cannot initialise from other/run: .*"
              r"conv1/kernel: target \(3, 3, 1, 8\) vs source \(5, 5, 1, 6\)")
  with pytest.raises(ValueError, match=expected):
    # lenet5 and resnet_tiny share the names conv1 and embed but not their shapes.
    merge_pretrained(target, source, source_name="other/run")
  source_vit = _train_state_variables(_cfg("vit_tiny", patch_size=4), jnp.zeros((1, 8, 8, 1)), 1)
  source_vit["params"]["encoder"].pop("embed")
  with pytest.raises(ValueError, match="none of the target's .* encoder parameters"):
    merge_pretrained(target, source_vit, source_name="vit/run")


def test_ensemble_mean_and_concat_match_numpy():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 1)), jnp.float32)
  members = []
  for seed, name in ((1, "lenet5"), (2, "multiscale_tiny")):
    model = get_model(_cfg(name, embedding_dim=8, normalize=False))
    members.append((model, random_variables(model, x, seed=seed)))
  raw = [np.asarray(jax.jit(m.apply)(v, x)[0], np.float64) for m, v in members]
  unit = [r / np.linalg.norm(r, axis=1, keepdims=True) for r in raw]
  mean = (unit[0] + unit[1]) / 2
  np.testing.assert_allclose(ensemble_embed_fn(members, "mean")(x),
                             mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5,
                             atol=1e-7)
  concat = ensemble_embed_fn(members, "concat")(x)
  np.testing.assert_allclose(concat, np.concatenate(unit, 1) / np.sqrt(2), rtol=1e-5)
  # Cosine of concatenated ensemble embeddings = mean of the members' cosines.
  cos = np.asarray(concat) @ np.asarray(concat).T
  np.testing.assert_allclose(cos, (unit[0] @ unit[0].T + unit[1] @ unit[1].T) / 2, rtol=1e-5)


def test_ensemble_bad_input():
  with pytest.raises(ValueError, match="mode must be one of .*'median'"):
    ensemble_embed_fn([(None, None)], "median")
  with pytest.raises(ValueError, match="at least one"):
    ensemble_embed_fn([], "mean")
  x = jnp.zeros((1, 8, 8, 1))
  models = [get_model(_cfg("lenet5", embedding_dim=d)) for d in (4, 6)]
  members = [(m, random_variables(m, x)) for m in models]
  with pytest.raises(ValueError, match=r"equal embedding sizes; got \[4, 6\]"):
    ensemble_embed_fn(members, "mean")(x)


def test_init_from_names_missing_path_and_reads_an_existing_one(tmp_path):
  x = jnp.zeros((1, 8, 8, 1))
  source = _train_state_variables(_cfg("resnet_tiny", projection_depth=1), x, seed=1)
  target = _train_state_variables(_cfg("resnet_tiny"), x, seed=2)
  saved = tmp_path / "pretrain" / "variables.npz"
  saved.parent.mkdir()
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(source, sep="/").items()}
  np.savez(saved, **flat)

  def load_npz(path):  # stands in for sim_jax.checkpointing.load_variables: a real file read
    with np.load(path) as f:
      return traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")

  with pytest.raises(ValueError, match="init_from='/no/such/run' does not exist"):
    init_from(target, "/no/such/run", load_npz)
  merged, report = init_from(target, str(saved), load_npz)
  np.testing.assert_array_equal(merged["params"]["encoder"]["embed"]["kernel"],
                                source["params"]["encoder"]["embed"]["kernel"])
  assert report["skipped"] and all("/projection/" in n for n in report["skipped"])
