"""Few-shot episodes: prototype and fine-tuned-head accuracy vs NumPy loops, the CI formula, the
evaluator wiring, one compilation per episode shape."""

import numpy as np
import pytest

from sim_jax.eval import evaluators, fewshot
from sim_jax.eval.config import default_config


def anisotropic(seed=0, classes=10, per_class=12):
  """The class is in dim 0 (1 apart), three dims of class-independent noise (std 3) dominate
  the Euclidean distance: the prototypes are poor, a linear head fit on the shots is not."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(classes), per_class)
  emb = np.concatenate([y[:, None] + 0.05 * rng.standard_normal((y.size, 1)),
                        3.0 * rng.standard_normal((y.size, 3))], 1).astype(np.float32)
  return emb, y


def numpy_finetune_predict(emb, support, query, steps, lr, metric):
  """One episode, written out: rescale, prototype start, GD on the support cross-entropy with
  the hand-derived gradient dL/dW = (P - Y)^T X / n, dL/db = mean(P - Y)."""
  e = emb.astype(np.float64)
  if metric == "cosine":
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
  n_way, k = support.shape
  x = e[support.reshape(-1)]
  s = 1.0 if metric == "cosine" else np.sqrt(np.mean(np.sum(x ** 2, axis=1)))
  x = x / s
  proto = x.reshape(n_way, k, -1).mean(1)
  if metric == "cosine":
    proto = proto / np.linalg.norm(proto, axis=1, keepdims=True)
  w, b = 2 * proto, -np.sum(proto ** 2, axis=1)
  onehot = np.eye(n_way)[np.repeat(np.arange(n_way), k)]
  for _ in range(steps):
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w, b = w - lr * (p - onehot).T @ x / len(x), b - lr * (p - onehot).mean(0)
  q = e[query.reshape(-1)] / s
  return np.argmax(q @ w.T + b, axis=1).reshape(query.shape)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_finetune_matches_numpy_loop_and_starts_at_the_prototypes(metric):
  emb, y = anisotropic()
  eps = list(fewshot.sample_episodes(y, n_way=5, k_shot=3, n_query=4, num_episodes=6, seed=2))
  sup, qry = np.stack([s for _, s, _ in eps]), np.stack([q for _, _, q in eps])
  got = fewshot.finetune_predictions(emb, sup, qry, steps=30, lr=2.0, metric=metric,
                                     episode_block=4)  # 2 blocks, the last one padded
  want = np.stack([numpy_finetune_predict(emb, s, q, 30, 2.0, metric) for s, q in zip(sup, qry)])
  assert np.mean(got == want) >= 0.99  # float32 vs float64: at most a near-tie flips
  zero = fewshot.finetune_predictions(emb, sup, qry, steps=0, metric=metric)
  # Step 0 is the prototype rule, here against a NumPy loop over prototypes.
  e = emb.astype(np.float64)
  if metric == "cosine":
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
  for i, (s, q) in enumerate(zip(sup, qry)):
    proto = np.stack([e[s[c]].mean(0) for c in range(5)])
    for w in range(5):
      for j, row in enumerate(q[w]):
        if metric == "euclidean":
          best = np.argmin([np.linalg.norm(e[row] - p) for p in proto])
        else:
          best = np.argmax([e[row] @ p / np.linalg.norm(p) for p in proto])
        assert zero[i, w, j] == best


def test_prototype_cosine_matches_loop():
  rng = np.random.default_rng(5)
  emb, labels = rng.standard_normal((50, 4)), rng.integers(0, 5, 50)
  m = fewshot.fewshot_accuracy(emb, labels, n_way=3, k_shot=2, n_query=2, num_episodes=15,
                               seed=3, metric="cosine")
  accs = []
  for _, s, q in fewshot.sample_episodes(labels, n_way=3, k_shot=2, n_query=2, num_episodes=15,
                                         seed=3):
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    proto = [u[s[c]].mean(0) for c in range(3)]
    hits = [np.argmax([u[r] @ p / np.linalg.norm(p) for p in proto]) == w
            for w in range(3) for r in q[w]]
    accs.append(np.mean(hits))
  assert m["accuracy"] == pytest.approx(np.mean(accs))
  assert m["ci95"] == pytest.approx(1.959964 * np.std(accs) / np.sqrt(15), rel=1e-5)


def test_finetune_improves_on_the_constructed_case():
  emb, y = anisotropic()
  kw = dict(n_way=5, k_shot=5, n_query=5, num_episodes=60, seed=0)
  proto = fewshot.fewshot_accuracy(emb, y, **kw)
  tuned = fewshot.fewshot_accuracy(emb, y, method="finetune", finetune_steps=100,
                                   finetune_lr=5.0, **kw)
  assert proto["accuracy"] < 0.5  # the noise dims mislead the class means
  assert tuned["accuracy"] > proto["accuracy"] + 0.08
  # Well separated classes: nothing to fix, and fine-tuning keeps them right.
  sep = np.repeat(np.eye(6) * 10, 10, axis=0) + np.random.default_rng(1).normal(0, .1, (60, 6))
  lab = np.repeat(np.arange(6), 10)
  assert fewshot.fewshot_accuracy(sep, lab, method="finetune", **kw)["accuracy"] == 1.0


def test_finetune_compiles_once_per_episode_shape():
  emb, y = anisotropic(seed=3)
  fewshot._finetune_predict.clear_cache()
  kw = dict(n_way=4, k_shot=2, n_query=3, num_episodes=7, method="finetune", finetune_steps=5)
  fewshot.fewshot_accuracy(emb, y, seed=0, **kw)  # blocks of 7: one program
  fewshot.fewshot_accuracy(emb * 2, y, seed=1, finetune_lr=0.3, **kw)  # new values, same shapes
  assert fewshot._finetune_predict._cache_size() == 1


def test_ci95_closed_form():
  mean, ci = fewshot.mean_ci95([0.0, 1.0] * 50)  # std 0.5 exactly
  assert mean == 0.5 and ci == pytest.approx(1.959964 * 0.5 / 10, rel=1e-6)
  assert fewshot.mean_ci95([0.4] * 9) == pytest.approx((0.4, 0.0))
  mean, ci = fewshot.mean_ci95([0.2, 0.6, 1.0])  # std = sqrt(32/300)
  assert ci == pytest.approx(1.959964 * np.sqrt(0.32 / 3) / np.sqrt(3), rel=1e-6)
  with pytest.raises(ValueError, match="non-empty 1-D"):
    fewshot.mean_ci95([])


def test_bad_input_names_the_argument():
  emb, y = anisotropic()
  sup, qry = np.zeros((1, 2, 1), int), np.zeros((1, 2, 1), int)
  with pytest.raises(ValueError, match="steps"):
    fewshot.finetune_predictions(emb, sup, qry, steps=-1)
  with pytest.raises(ValueError, match="lr"):
    fewshot.finetune_predictions(emb, sup, qry, lr=0.0)
  with pytest.raises(ValueError, match="metric"):
    fewshot.finetune_predictions(emb, sup, qry, metric="dot")
  with pytest.raises(ValueError, match="method"):
    fewshot.fewshot_accuracy(emb, y, method="maml")


def test_evaluator_reports_every_method_and_k():
  emb, y = anisotropic()
  c = default_config()
  c.protocols = "fewshot"
  c.best_metric = "fewshot/accuracy"
  c.query_split = "heldout"
  c.fewshot_num_episodes = 8
  c.fewshot_n_query = 2
  c.fewshot_finetune_steps = 10
  (ev,) = evaluators.get_evaluators(c)
  out = ev({"heldout": emb}, {"heldout": y})
  for k in (1, 5):
    for method in ("prototype", "finetune"):
      want = fewshot.fewshot_accuracy(emb, y, n_way=5, k_shot=k, n_query=2, num_episodes=8,
                                      method=method, finetune_steps=10, finetune_lr=1.0)
      assert out[f"fewshot/{method}_{k}shot_accuracy"] == want["accuracy"]
      assert out[f"fewshot/{method}_{k}shot_ci95"] == want["ci95"]
  assert out["fewshot/accuracy"] == out["fewshot/prototype_1shot_accuracy"]
  assert out["fewshot/num_episodes"] == 8.0
  c.fewshot_methods = "prototype,maml"
  with pytest.raises(ValueError, match="fewshot_methods='prototype,maml'"):
    evaluators.get_evaluators(c)
