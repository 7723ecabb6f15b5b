"""Baselines every evaluation reports next to its metrics, scored by the same evaluators.

  chance_levels(evaluators, embeddings, labels)   random Gaussian vectors of the same shapes
  raw_pixel_embeddings(images)                    flattened images as float32, L2-normalised
  floors(evaluators, eval_data, random_init)      {"raw_pixels": {...}, "random_init": {...}}
  describe / report_lines                         "name value (chance, raw pixels, random init)"

The random-init floor is the configured encoder, untrained: its initial parameters from the
run's seed (the trainer embeds the eval splits with them and passes the vectors in). Neither
floor depends on training, so a resumed run recomputes the same numbers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping

import numpy as np

from sim_jax.eval.distances import DISTRIBUTION_DISTANCES
from sim_jax.eval.evaluators import run_evaluators

FLOORS = ("raw_pixels", "random_init")
# Opt-in directory memoising floors across runs (`cached_floors`); unset: computed every run.
CACHE_ENV = "SIM_JAX_FLOORS_CACHE"
FLOOR_LABELS = {"raw_pixels": "raw pixels", "random_init": "random init"}
# The evaluators' sources: a cached floor is only valid for the code that computed it.
EVAL_DIR = os.path.dirname(os.path.abspath(__file__))


def chance_levels(evaluators, embeddings: Mapping[str, np.ndarray],
                  labels: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, float]:
  """Each metric on random Gaussian embeddings of the same shapes: the baseline to beat."""
  rng = np.random.default_rng(seed)
  rand = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in embeddings.items()}
  return run_evaluators(evaluators, rand, labels)


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C] images -> [N, H*W*C] float32 rows x / max(|x|, 1e-12).

  uint8 pixels are scaled to [0, 1] first (a constant factor: the normalised rows do not
  depend on it).
  """
  x = np.asarray(images)
  x = x.reshape(len(x), -1).astype(np.float32)
  if np.asarray(images).dtype == np.uint8:
    x = x / np.float32(255.0)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norm, np.float32(1e-12))


def floors(evaluators, eval_data: Mapping[str, Mapping[str, np.ndarray]],
           random_init: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
  """The metrics of raw pixels and of the untrained encoder's vectors (`random_init`, per
  split), both through `evaluators` on `eval_data[split]["label"]`."""
  return {"raw_pixels": _raw_pixel_metrics(evaluators, eval_data),
          "random_init": _vector_metrics(evaluators, eval_data, random_init)}


def _raw_pixel_metrics(evaluators, eval_data) -> dict[str, float]:
  pixels = {s: raw_pixel_embeddings(d["image"]) for s, d in eval_data.items()}
  return _vector_metrics(evaluators, eval_data, pixels)


def _vector_metrics(evaluators, eval_data, vectors: Mapping[str, np.ndarray]) -> dict[str, float]:
  return run_evaluators(evaluators, dict(vectors), {s: d["label"] for s, d in eval_data.items()})


def describe(name: str, value: float, chance: Mapping[str, float],
             floor_values: Mapping[str, Mapping[str, float]]) -> str:
  """One line: "retrieval/mrr@5 0.8635 (chance 0.0014, raw pixels 0.5200, random init 0.4000)"."""
  parts = [f"chance {chance.get(name, np.nan):.4f}"]
  parts += [f"{FLOOR_LABELS[f]} {floor_values.get(f, {}).get(name, np.nan):.4f}" for f in FLOORS
            if f in floor_values]
  return f"{name:<32s} {value:.4f}   ({', '.join(parts)})"


def report_lines(report: Mapping) -> list[str]:
  """`describe` of every metric of a {"metrics", "chance", "floors"} report, sorted by name."""
  return [describe(k, report["metrics"][k], report["chance"], report.get("floors") or {})
          for k in sorted(report["metrics"])]


def cached_floors(key: Mapping, compute: Callable[[], dict]) -> dict:
  """`compute()`, memoised in `$SIM_JAX_FLOORS_CACHE/<sha256 of key>.json` when that variable
  names a directory, else `compute()` every time.

  The floors cost several full evaluations (raw pixels are H*W*C-dimensional) and are the same
  for every run of an ablation that shares data, evaluation, model and seed, so `key` must hold
  everything they depend on (JSON-serialisable; compared as sorted JSON).
  """
  directory = os.environ.get(CACHE_ENV, "")
  if not directory:
    return compute()
  digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
  path = os.path.join(directory, f"floors_{digest[:24]}.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)["floors"]
  value = compute()
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump({"key": key, "floors": value}, f, sort_keys=True, default=str)
  os.replace(tmp, path)  # atomic: a concurrent run reads the whole file or none
  return value


def code_digest(directory: str = EVAL_DIR) -> str:
  """sha256 over the names and bytes of `directory`'s *.py files (sorted by name).

  Part of every floors key: an evaluator that gains a metric, or computes one differently, must
  not be served floors that an older version cached (they would read "n/a", or be wrong).
  """
  h = hashlib.sha256()
  for name in sorted(n for n in os.listdir(directory) if n.endswith(".py")):
    with open(os.path.join(directory, name), "rb") as f:
      h.update(name.encode() + b"\0" + f.read() + b"\0")
  return h.hexdigest()


@functools.cache
def _eval_code_digest() -> str:
  return code_digest(EVAL_DIR)  # the sources do not change within a process


def floors_key(config, what: str) -> dict:
  """What a floor or the chance level depends on, never the training (the key of their opt-in
  cache, CACHE_ENV): raw pixels on the data, the evaluation and the evaluators' code; chance
  (random vectors of the embeddings' shapes, seed 0) and the untrained encoder also on the model
  (not init_from), the encoder on the seed, and both on the loss where the metric ranks
  classifier logits."""
  c = json.loads(config.to_json_best_effort())
  key = {"what": what, "data": c["data"], "eval": c["eval"], "code": _eval_code_digest()}
  if what != "raw_pixels":
    key["model"] = {k: v for k, v in c["model"].items() if k != "init_from"}
    if config.eval.metric in DISTRIBUTION_DISTANCES:
      key["loss"] = c["loss"]
  if what == "random_init":
    key["seed"] = c["seed"]
  return key


def cached_run_floors(config, evaluators, eval_data: Mapping[str, Mapping[str, np.ndarray]],
                      random_init: Callable[[], Mapping[str, np.ndarray]]
                      ) -> dict[str, dict[str, float]]:
  """`floors` of `config`'s evaluation, each memoised under `floors_key` when the cache is on;
  `random_init()` gives the untrained encoder's vectors per split (called only on a miss)."""
  return {"raw_pixels": cached_floors(floors_key(config, "raw_pixels"),
                                      lambda: _raw_pixel_metrics(evaluators, eval_data)),
          "random_init": cached_floors(floors_key(config, "random_init"),
                                       lambda: _vector_metrics(evaluators, eval_data,
                                                               random_init()))}
