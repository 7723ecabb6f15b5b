"""Adversarial examples (sim_jax.adversarial), adversarial training and robust pair accuracy
(sim_jax.eval.robust), against closed forms on linear models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import adversarial, data, sharding, train
from sim_jax.eval import robust, verification

E = 8.0 / 255.0  # epsilon=8 pixel levels on [0, 1] images


def _linear_problem(seed=0, shape=(4, 5, 5, 1)):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape).astype(np.float32)
  x[0, 0, 0, 0], x[0, 0, 1, 0] = 0.0, 1.0  # pixels at the range's edges: clipping must show
  d = int(np.prod(shape[1:]))
  w = rng.normal(size=(d, 3)).astype(np.float32)
  t = rng.normal(size=(shape[0], 3)).astype(np.float32)
  return x, w, t


def test_fgsm_equals_the_hand_computed_sign_gradient_step():
  """L(x) = 0.5 |x W - t|^2 per row: dL/dx = (x W - t) W^T, x' = clip(x + e sign(that), 0, 1)."""
  x, w, t = _linear_problem()
  n = x.shape[0]
  loss = lambda xi: 0.5 * jnp.sum((xi.reshape(n, -1) @ w - t) ** 2)
  grad = ((x.reshape(n, -1).astype(np.float64) @ w - t) @ w.T).reshape(x.shape)
  expected = np.clip(x + E * np.sign(grad), 0.0, 1.0)
  got = np.asarray(adversarial.fgsm(loss, jnp.asarray(x), 8.0))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.abs(got - x).max() <= E + 1e-6
  # The edge pixels were clipped where the step left [0, 1] (the test data puts them there).
  assert got.min() == 0.0 and got.max() == 1.0


def test_pgd_stays_in_the_ball_and_the_pixel_range_and_reaches_the_linear_optimum():
  x, w, _ = _linear_problem(1)
  n = x.shape[0]
  v = w[:, 0].reshape(x.shape[1:])
  # A non-linear loss: the steps' signs change, the projection is exercised.
  wobbly = lambda xi: jnp.sum(jnp.sin(20.0 * xi) * v)
  got = np.asarray(adversarial.pgd(wobbly, jnp.asarray(x), 8.0, 5.0, 6, jax.random.PRNGKey(0)))
  assert np.abs(got - x).max() <= E + 1e-6
  assert got.min() >= 0.0 and got.max() <= 1.0
  assert not np.allclose(got, x)
  # Linear loss L = sum(x * v): the L-inf ball's maximiser is clip(x + e sign(v)); PGD from x with
  # steps of e / 2 reaches it in 2 steps and stays there.
  linear = lambda xi: jnp.sum(xi * v)
  optimum = np.clip(x + E * np.sign(np.broadcast_to(v, x.shape)), 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(adversarial.pgd(linear, jnp.asarray(x), 8.0, 4.0, 3)),
                             optimum, atol=1e-6)
  # One step of size epsilon from x itself is FGSM.
  np.testing.assert_allclose(np.asarray(adversarial.pgd(wobbly, jnp.asarray(x), 8.0, 8.0, 1)),
                             np.asarray(adversarial.fgsm(wobbly, jnp.asarray(x), 8.0)),
                             atol=1e-6)
  assert n == 4


def _cfg(**adv):
  c = test_config.get_config()
  c.train.log_diagnostics = False
  c.train.adversarial.update(adv)
  return c


def test_perturb_replaces_round_ratio_of_the_batch_by_the_fgsm_step():
  """The batch's images (uint8 here, as on the wire) with round(0.5 * 6) = 3 rows replaced by
  the closed-form FGSM step of a linear loss, the rest unchanged."""
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, size=(6, 2, 4, 4, 1), dtype=np.uint8)  # pairs: [B, 2, H, W, C]
  v = rng.normal(size=img.shape[1:]).astype(np.float32)
  loss_fn = lambda params, bs, batch, key, memory: (jnp.sum(batch["image"] * v), None)
  batch = {"image": jnp.asarray(img), "label": jnp.zeros((6, 2), jnp.int32)}
  out = adversarial.perturb(_cfg(method="fgsm", ratio=0.5), loss_fn, {}, {}, batch,
                            jax.random.PRNGKey(3))
  x = img.astype(np.float32) / 255.0
  adv = np.clip(x + E * np.sign(v), 0.0, 1.0)
  got = np.asarray(out["image"])
  changed = [not np.allclose(got[b], x[b]) for b in range(6)]
  assert sum(changed) == 3, changed
  for b in range(6):
    np.testing.assert_allclose(got[b], adv[b] if changed[b] else x[b], atol=1e-6)
  assert out["label"] is batch["label"]
  assert adversarial.perturb(_cfg(), loss_fn, {}, {}, batch, jax.random.PRNGKey(3)) is batch


@pytest.mark.parametrize("ratio,n,count", [(0.0, 5, 0), (0.5, 6, 3), (0.25, 7, 2), (1.0, 4, 4)])
def test_mix_mask_has_exactly_round_ratio_n_entries(ratio, n, count):
  masks = [np.asarray(adversarial.mix_mask(jax.random.PRNGKey(s), n, ratio)) for s in range(5)]
  assert all(m.sum() == count for m in masks)
  if 0 < count < n:  # the positions vary between steps
    assert len({m.tobytes() for m in masks}) > 1


@pytest.mark.parametrize("overrides,needle", [
    ({"train.adversarial.method": "pgd2"}, "adversarial.method='pgd2'"),
    ({"train.adversarial.ratio": 1.5}, "adversarial.ratio=1.5"),
    ({"train.adversarial.epsilon": -1.0}, "adversarial.epsilon=-1.0"),
    ({"train.adversarial.steps": 0}, "adversarial.steps=0"),
    ({"train.adversarial.method": "fgsm", "train.grad_accum_chunks": 2},
     "grad_accum_chunks=2"),
    ({"eval.robust_attacks": "fgsm,cw"}, "'cw' is not one of"),
])
def test_bad_adversarial_config_names_the_key(overrides, needle):
  c = _cfg()
  for k, val in overrides.items():
    section, _, field = k.rpartition(".")
    node = c
    for part in section.split("."):
      node = node[part]
    node[field] = val
  with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    train.validate_config(c)


def test_adversarial_training_runs_a_few_steps():
  # PGD (FGSM is the same code path with one step and no random start: tested above).
  cfg = _cfg(method="pgd", steps=2, ratio=0.5)
  setup = train.make_setup(cfg)
  state = train.init_state(setup)
  before = [np.asarray(p).copy() for p in jax.tree.leaves(state.params)]
  it = data.create_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size, seed=0,
                                  process_index=0, process_count=1)
  step = train.jit_train_step(setup)
  for _ in range(2):
    state, m = step(state, sharding.host_to_global(next(it), setup.mesh))
    assert np.isfinite(float(m.compute()["loss"]))
  assert int(state.step) == 2 and int(state.nonfinite_skips) == 0
  assert not all(np.array_equal(a, np.asarray(b))
                 for a, b in zip(before, jax.tree.leaves(state.params)))


def _linear_embed(w):
  return lambda params, batch_stats, x: x.reshape(x.shape[0], -1) @ params["w"]


def test_robust_fgsm_on_pairs_equals_the_closed_form():
  """Euclidean score s = -|W^T(a - b)|: a same pair's attack raises |W^T(a - b)|, so
  a' = clip(a + e sign(W W^T (a - b))), b' = clip(b - e sign(W W^T (a - b))); a different pair
  moves the other way."""
  x, w, _ = _linear_problem(3, shape=(6, 4, 4, 1))
  embed = _linear_embed(w)
  i, j = np.array([0, 2, 4]), np.array([1, 3, 5])
  same = np.array([True, False, True])
  xa, xb = robust.attack_pairs(embed, ({"w": jnp.asarray(w)}, {}), x, i, j, same,
                               metric="euclidean", method="fgsm", epsilon=8.0, steps=1,
                               step_size=1.0)
  flat = x.reshape(6, -1).astype(np.float64)
  for p in range(3):
    d = flat[i[p]] - flat[j[p]]
    g = np.sign(w @ (w.T @ d)) * (1.0 if same[p] else -1.0)
    np.testing.assert_allclose(xa[p].ravel(), np.clip(flat[i[p]] + E * g, 0, 1), atol=1e-6)
    np.testing.assert_allclose(xb[p].ravel(), np.clip(flat[j[p]] - E * g, 0, 1), atol=1e-6)


def test_robust_metrics_zero_epsilon_is_clean_and_attacks_only_lower_accuracy():
  rng = np.random.default_rng(4)
  labels = np.repeat(np.arange(6), 4)
  centers = rng.uniform(0.2, 0.8, size=(6, 4, 4, 1))
  images = (centers[labels] + rng.normal(0, 0.05, size=(24, 4, 4, 1))).clip(0, 1)
  images = (images * 255).astype(np.uint8)
  w = rng.normal(size=(16, 5)).astype(np.float32)
  embed = _linear_embed(w)
  variables = ({"w": jnp.asarray(w)}, {})
  cfg = _cfg()
  cfg.eval.metric = "euclidean"
  cfg.eval.verification_val_split, cfg.eval.query_split = "train", "test"
  cfg.eval.verification_num_pairs, cfg.eval.robust_num_pairs = 40, 30
  cfg.eval.robust_attacks = "fgsm,pgd"
  eval_data = {s: {"image": images, "label": labels} for s in ("train", "test")}
  emb = {s: np.asarray(embed(*variables, jnp.asarray(images, jnp.float32) / 255.0))
         for s in eval_data}
  # Clean accuracy by hand: the verification rule on the same pairs.
  vi, vj, vs = verification.sample_pairs(labels, 40, 0)
  t = verification.fit_threshold(verification.pair_scores(emb["train"][vi], emb["train"][vj],
                                                          "euclidean"), vs)
  i, j, same = verification.sample_pairs(labels, 30, 1)
  clean = np.mean((verification.pair_scores(emb["test"][i], emb["test"][j], "euclidean")
                   >= t.value) == same)
  cfg.train.adversarial.epsilon = 0.0
  out = robust.metrics(cfg, embed, variables, eval_data, emb)
  assert out["robust/clean_accuracy"] == pytest.approx(clean)
  assert out["robust/fgsm/accuracy"] == pytest.approx(clean, abs=1 / 30 + 1e-9)
  cfg.train.adversarial.epsilon = 40.0
  strong = robust.metrics(cfg, embed, variables, eval_data, emb)
  assert strong["robust/fgsm/accuracy"] < clean and strong["robust/pgd/accuracy"] < clean
  cfg.eval.robust_attacks = ""
  assert robust.metrics(cfg, embed, variables, eval_data, emb) == {}
