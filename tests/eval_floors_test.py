"""Floors beside chance: raw pixels and the untrained encoder, against a NumPy reference.

References are independent of `sim_jax.eval`: a NumPy retrieval loop (cosine, gallery = another
split) and the untrained encoder's vectors computed with `model.apply` on parameters initialised
directly from the seed's documented key schedule.
"""

import shutil

import numpy as np
import pytest

from configs import default
from sim_jax.eval import floors

pytestmark = pytest.mark.slow


def _reference_retrieval(q, ql, g, gl, ks=(1, 5)):
  """Per query: rank the gallery by cosine similarity (ties: lower index first)."""
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  g = g / np.linalg.norm(g, axis=1, keepdims=True)
  out = {f"retrieval/mrr@{k}": [] for k in ks}
  out.update({f"retrieval/recall@{k}": [] for k in ks})
  for i in range(len(q)):
    sims = g @ q[i]
    order = sorted(range(len(g)), key=lambda j: (-sims[j], j))
    rel = [gl[j] == ql[i] for j in order]
    first = rel.index(True) + 1 if any(rel) else None
    for k in ks:
      out[f"retrieval/mrr@{k}"].append(1.0 / first if first and first <= k else 0.0)
      out[f"retrieval/recall@{k}"].append(1.0 if first and first <= k else 0.0)
  return {k: float(np.mean(v)) for k, v in out.items()}


def _raw_pixels(images):
  return images.reshape(len(images), -1).astype(np.float64)


def test_floors_equal_a_numpy_reference():
  import jax
  import jax.numpy as jnp

  from configs import test as test_config
  from sim_jax import train
  from sim_jax.eval import evaluators as evaluators_lib

  cfg = test_config.get_config()
  setup = train.make_setup(cfg)
  full = train.load_eval_data(cfg)
  eval_data = {"train": {k: v[:120] for k, v in full["train"].items()},
               "test": {k: v[:50] for k, v in full["test"].items()}}
  ev = [evaluators_lib.RetrievalEvaluator("test", "train", (1, 5), "cosine", 8192, 2048)]
  got = train.compute_floors(setup, eval_data, ev)
  assert set(got) == {"raw_pixels", "random_init"}

  # Raw pixels.
  labels = {s: d["label"] for s, d in eval_data.items()}
  want = _reference_retrieval(_raw_pixels(eval_data["test"]["image"]), labels["test"],
                              _raw_pixels(eval_data["train"]["image"]), labels["train"])
  for k, v in want.items():
    np.testing.assert_allclose(got["raw_pixels"][k], v, atol=1e-9, err_msg=k)

  # The untrained encoder: create_train_state splits PRNGKey(seed) into (init, state) keys and
  # the init key into (model, dropout, head) keys; the encoder is model.init with the first two.
  init_key, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
  k_model, k_drop, _ = jax.random.split(init_key, 3)
  model = train.create_model(cfg)
  variables = model.init({"params": k_model, "dropout": k_drop},
                         jnp.zeros((2, *setup.image_shape), jnp.float32), train=False)
  emb = {s: np.asarray(model.apply(variables, jnp.asarray(d["image"], jnp.float32) / 255.0,
                                   train=False)[0], np.float64)
         for s, d in eval_data.items()}
  want = _reference_retrieval(emb["test"], labels["test"], emb["train"], labels["train"])
  for k, v in want.items():
    np.testing.assert_allclose(got["random_init"][k], v, atol=1e-9, err_msg=k)
  # The floors are not chance: raw digits retrieve their class far above 1 in 10.
  assert got["raw_pixels"]["retrieval/recall@1"] > 0.5


def test_raw_pixel_embeddings_are_unit_rows_of_the_flattened_image():
  from sim_jax.eval import floors
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 4, 3, 2), dtype=np.uint8)
  images[2] = 0  # a blank image stays zero instead of dividing by zero
  got = floors.raw_pixel_embeddings(images)
  x = images.reshape(5, -1).astype(np.float64)
  norms = np.sqrt((x ** 2).sum(axis=1))
  for i in range(5):
    want = x[i] / norms[i] if norms[i] else np.zeros(24)
    np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7)


def test_describe_puts_chance_and_floors_beside_the_metric():
  from sim_jax.eval import floors
  line = floors.describe("retrieval/mrr@5", 0.8635, {"retrieval/mrr@5": 0.0014},
                         {"raw_pixels": {"retrieval/mrr@5": 0.52},
                          "random_init": {"retrieval/mrr@5": 0.4}})
  assert line.split() == ["retrieval/mrr@5", "0.8635", "(chance", "0.0014,", "raw", "pixels",
                          "0.5200,", "random", "init", "0.4000)"]


def test_cached_floors_computes_once_per_key(tmp_path, monkeypatch):
  calls = []

  def compute(v):
    calls.append(v)
    return {"raw_pixels": {"retrieval/mrr@5": v}, "random_init": {"retrieval/mrr@5": float("nan")}}

  monkeypatch.delenv(floors.CACHE_ENV, raising=False)
  floors.cached_floors({"a": 1}, lambda: compute(0.25))
  floors.cached_floors({"a": 1}, lambda: compute(0.25))
  assert calls == [0.25, 0.25]  # no cache without the variable
  monkeypatch.setenv(floors.CACHE_ENV, str(tmp_path / "cache"))
  first = floors.cached_floors({"a": 1, "b": [2]}, lambda: compute(0.5))
  again = floors.cached_floors({"b": [2], "a": 1}, lambda: compute(0.75))  # same key, reordered
  other = floors.cached_floors({"a": 2, "b": [2]}, lambda: compute(0.75))
  assert calls == [0.25, 0.25, 0.5, 0.75]
  assert again["raw_pixels"] == first["raw_pixels"] == {"retrieval/mrr@5": 0.5}
  assert np.isnan(again["random_init"]["retrieval/mrr@5"])
  assert other["raw_pixels"]["retrieval/mrr@5"] == 0.75


def test_floors_key_changes_with_the_evaluators_code(tmp_path):
  # A copy of sim_jax/eval digests like the original; one changed byte in any evaluator (here a
  # comment appended to retrieval.py) gives another digest, so cached floors are recomputed.
  copy = tmp_path / "eval"
  shutil.copytree(floors.EVAL_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
  assert floors.code_digest(str(copy)) == floors.code_digest()
  with open(copy / "retrieval.py", "a") as f:
    f.write("# changed\n")
  assert floors.code_digest(str(copy)) != floors.code_digest()
  config = default.get_config()
  assert floors.floors_key(config, "raw_pixels")["code"] == floors.code_digest()
