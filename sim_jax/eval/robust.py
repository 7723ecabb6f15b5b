"""Robust pair accuracy: verification accuracy when every test pair is attacked (FGSM / PGD).

The clean decision rule is the verification protocol's: pair score s (cosine similarity, or
-euclidean distance), "same" iff s >= t, t fit on `eval.verification_val_split`'s clean pairs.
Each test pair (a, b, same) of `eval.query_split` is then attacked to flip its decision: both
images move inside the L-inf ball of `train.adversarial.epsilon` pixel levels (the training
attacks, `sim_jax.adversarial`: FGSM, or PGD with `steps` / `step_size` and a random start) to
maximise
    L(a', b') = (1 - 2 same) * s(f(a'), f(b'))      (same pairs pushed apart, others together)
with the encoder f in eval mode, so a batch of pairs is attacked as the sum of their losses and
every pair independently. Metrics (config.eval.robust_attacks = "fgsm,pgd"):
    robust/clean_accuracy     the same pairs, unattacked, at t
    robust/<method>/accuracy  fraction of attacked pairs still decided right at t
`eval.robust_num_pairs` balanced pairs (`verification.sample_pairs`, seed
`verification_seed + 1`, as the verification protocol's test pairs). Embeddings only: a pair
head's own rule is not attacked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax import adversarial
from sim_jax.eval import verification

PREFIX = "robust"
BATCH_PAIRS = 64  # pairs attacked per compiled call (the last batch is padded)


def _scores(ea: jax.Array, eb: jax.Array, metric: str) -> jax.Array:
  """[P] pair scores as `verification.pair_scores`, in JAX (differentiable)."""
  if metric == "cosine":
    na = jnp.maximum(jnp.linalg.norm(ea, axis=1), 1e-12)
    nb = jnp.maximum(jnp.linalg.norm(eb, axis=1), 1e-12)
    return jnp.sum(ea * eb, 1) / (na * nb)
  if metric == "euclidean":
    # sqrt'(0) is infinite: an eps inside keeps a pair of identical images differentiable.
    return -jnp.sqrt(jnp.sum((ea - eb) ** 2, 1) + 1e-12)
  raise ValueError(f"robust pair accuracy needs metric 'cosine' or 'euclidean'; got {metric!r}")


@functools.cache
def _attack_fn(embed_fn: Callable, metric: str, method: str, epsilon: float, steps: int,
               step_size: float) -> Callable:
  """Jitted (params, batch_stats, xa, xb, same, rng) -> (xa', xb'), images float [P, H, W, C]."""

  def attack(params, batch_stats, xa, xb, same, rng):
    sign = 1.0 - 2.0 * same.astype(jnp.float32)
    p = xa.shape[0]

    def loss(x):
      e = embed_fn(params, batch_stats, x)
      return jnp.sum(sign * _scores(e[:p], e[p:], metric))

    x = adversarial.attack(method, loss, jnp.concatenate([xa, xb]), epsilon=epsilon,
                           steps=steps, step_size=step_size, rng=rng)
    return x[:p], x[p:]

  return jax.jit(attack)


def attack_pairs(embed_fn: Callable, variables, images: np.ndarray, i: np.ndarray,
                 j: np.ndarray, same: np.ndarray, *, metric: str, method: str, epsilon: float,
                 steps: int, step_size: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Adversarial (images[i], images[j]) of every pair: float32 [P, H, W, C] each, in [0, 1].

  `embed_fn(params, batch_stats, float images [N, H, W, C]) -> [N, D]`, differentiable;
  `variables` = (params, batch_stats). uint8 images are scaled by 1/255 first.
  """
  x = np.asarray(images)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  fn = _attack_fn(embed_fn, metric, method, float(epsilon), int(steps), float(step_size))
  out_a, out_b = [], []
  for start in range(0, len(i), BATCH_PAIRS):
    sl = np.arange(start, start + BATCH_PAIRS) % len(i)  # the last batch wraps round: one shape
    a, b = fn(*variables, x[i[sl]], x[j[sl]], np.asarray(same)[sl],
              jax.random.PRNGKey(seed + start))
    n = min(BATCH_PAIRS, len(i) - start)
    out_a.append(np.asarray(a)[:n])
    out_b.append(np.asarray(b)[:n])
  return np.concatenate(out_a), np.concatenate(out_b)


def metrics(config, embed_fn: Callable, variables, eval_data: Mapping[str, Mapping],
            embeddings: Mapping[str, np.ndarray]) -> dict[str, float]:
  """The module docstring's metrics, {} when `config.eval.robust_attacks` is empty.

  `embeddings`: the clean evaluation embeddings per split (they fit the threshold).
  """
  ec, ac = config.eval, config.train.adversarial
  methods = adversarial.parse_attacks(ec.robust_attacks)
  if not methods:
    return {}
  for split in (ec.verification_val_split, ec.query_split):
    if split not in eval_data:
      raise ValueError(f"config.eval.robust_attacks needs split {split!r} in "
                       f"config.data.eval_splits={tuple(eval_data)}")
  val_y = eval_data[ec.verification_val_split]["label"]
  vi, vj, vsame = verification.sample_pairs(val_y, int(ec.verification_num_pairs),
                                            int(ec.verification_seed))
  val_e = embeddings[ec.verification_val_split]
  threshold = verification.fit_threshold(verification.pair_scores(val_e[vi], val_e[vj],
                                                                   ec.metric), vsame)
  test = eval_data[ec.query_split]
  i, j, same = verification.sample_pairs(test["label"], int(ec.robust_num_pairs),
                                         int(ec.verification_seed) + 1)
  e = embeddings[ec.query_split]
  clean = verification.pair_scores(e[i], e[j], ec.metric) >= threshold.value
  out = {f"{PREFIX}/clean_accuracy": float(np.mean(clean == same))}
  for method in methods:
    xa, xb = attack_pairs(embed_fn, variables, test["image"], i, j, same, metric=ec.metric,
                          method=method, epsilon=ac.epsilon, steps=ac.steps,
                          step_size=ac.step_size, seed=int(ec.verification_seed))
    ea = np.asarray(embed_fn(*variables, jnp.asarray(xa)))
    eb = np.asarray(embed_fn(*variables, jnp.asarray(xb)))
    pred = verification.pair_scores(ea, eb, ec.metric) >= threshold.value
    out[f"{PREFIX}/{method}/accuracy"] = float(np.mean(pred == same))
  return out


def state_metrics(setup, state, eval_data, embeddings) -> dict[str, float]:
  """`metrics` of a `train.TrainSetup` and its `TrainState` (read by attribute: this leaf module
  does not import the trainer)."""
  return metrics(setup.config, setup.embed_fn, (state.params, state.batch_stats), eval_data,
                 embeddings)
