"""Ensembles from the command line (`--ensemble=a,b` / config.eval.ensemble): the embeddings
--mode=embed and --mode=evaluate compare are the documented combination of the members' own."""

import json
import os

import jax
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import checkpointing, data, inference, train
from tests import helpers


def _save_member(config, workdir, seed):
  """A checkpoint at step 0 of the encoder initialised from `seed` (what a run starts from)."""
  setup = train.make_setup(config)
  state = setup.init_fn(jax.random.PRNGKey(seed))
  it = data.create_train_iterator(config.data, global_batch_size=config.train.batch_size,
                                  seed=seed, process_index=0, process_count=1)
  manager = checkpointing.create_manager(workdir, async_save=False)
  checkpointing.save(manager, 0, train.state_to_save(state), it,
                     checkpointing.written_with(config))
  checkpointing.finalize(manager)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  root = tmp_path_factory.mktemp("ensemble")
  config = test_config.get_config()
  config.model.normalize = False  # raw embeddings: the combination's normalisation must show
  dirs = [str(root / f"seed_{s}") for s in (0, 1)]
  for seed, d in zip((0, 1), dirs):
    _save_member(config, d, seed)
  embs = []
  for d in dirs:
    out = inference.export_embeddings(config, d, os.path.join(d, "emb.npz"), "test")
    with np.load(out) as z:
      embs.append(z["embeddings"])
  return config, root, dirs, embs


@pytest.mark.parametrize("mode", ["concat", "mean"])
def test_ensemble_embeddings_are_the_documented_combination(members, mode):
  config, root, dirs, (e0, e1) = members
  assert not np.allclose(e0, e1)  # two different encoders
  cfg = config.copy_and_resolve_references()
  cfg.eval.ensemble, cfg.eval.ensemble_mode = ",".join(dirs), mode
  out = inference.export_embeddings(cfg, str(root / "ens"), str(root / f"ens_{mode}.npz"),
                                    "test")
  with np.load(out) as z:
    got = z["embeddings"]
  if mode == "concat":  # [u0, u1] / sqrt(2)
    expected = np.concatenate([_unit(e0), _unit(e1)], axis=1) / np.sqrt(2.0)
  else:  # normalize((u0 + u1) / 2)
    expected = _unit((_unit(e0) + _unit(e1)) / 2.0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ensemble_evaluation_reports_the_members_and_the_combined_metrics(members):
  config, root, dirs, _ = members
  cfg = config.copy_and_resolve_references()
  cfg.eval.ensemble = ",".join(dirs)
  cfg.eval.protocols = "retrieval"  # one protocol is enough: the combination is tested above
  out_dir = str(root / "ens_eval")
  rep = inference.evaluate_checkpoint(cfg, out_dir)
  with open(os.path.join(out_dir, "eval_step0.json")) as f:
    saved = json.load(f)
  assert saved["ensemble"] == {"members": dirs, "mode": "concat"}
  assert saved["metrics"] == pytest.approx(rep["metrics"])
  assert "retrieval/mrr@5" in saved["metrics"] and "retrieval/mrr@5" in saved["chance"]
  cfg.eval.ensemble = f"{dirs[0]},{dirs[0]}"
  with pytest.raises(ValueError, match="lists a workdir twice"):
    inference.evaluate_checkpoint(cfg, out_dir)
  cfg.eval.ensemble, cfg.eval.ensemble_mode = dirs[0], "median"
  with pytest.raises(ValueError, match="'median'"):
    inference.evaluate_checkpoint(cfg, out_dir)


def test_ensemble_flag_outside_evaluate_or_embed_exits_2(tmp_path):
  proc = helpers.run_launch(str(tmp_path / "x"), "--mode=search", "--ensemble=a,b")
  assert proc.returncode == 2 and "--ensemble is for --mode=evaluate" in proc.stderr, \
      helpers.describe(proc)
