"""sim_jax.eval.head_rules: a head's own decision rule (seed 002's s > 0.5; a classifier's argmax)
against explicit loops, and its pairs against the verification evaluator's."""

import types

import numpy as np
import pytest

from sim_jax.eval import evaluators, head_rules, verification


def _eval_config(**kw):
  c = dict(verification_val_split="validation", query_split="test", verification_num_pairs=200,
           verification_seed=3)
  c.update(kw)
  return types.SimpleNamespace(**c)


def test_fixed_rule_and_classifier_accuracy_match_loops():
  rng = np.random.default_rng(0)
  x, same = rng.normal(size=50), rng.integers(0, 2, 50)
  want = sum(1 for xi, yi in zip(x, same) if (1 / (1 + np.exp(-xi)) > 0.5) == bool(yi)) / 50
  assert head_rules.fixed_rule_accuracy(x, same) == pytest.approx(want)
  z, y = rng.normal(size=(40, 4)), rng.integers(0, 4, 40)
  want = sum(1 for row, yi in zip(z, y) if max(range(4), key=lambda c: row[c]) == yi) / 40
  assert head_rules.classifier_accuracy(z, y) == pytest.approx(want)
  with pytest.raises(ValueError, match=r"logits \(3,\) and same \(2,\)"):
    head_rules.fixed_rule_accuracy(np.zeros(3), np.zeros(2))
  with pytest.raises(ValueError, match=r"logits \(4,\) must be \[N, C\]"):
    head_rules.classifier_accuracy(np.zeros(4), np.zeros(4))


def test_head_metrics_use_the_verification_pairs_of_each_split():
  """A Euclidean pair head, logit = b - w d: s > 0.5 iff d < b / w. On the test split the pairs
  are the verification evaluator's, so the rule's accuracy equals `verification.evaluate` at a
  threshold -b/w on the score -d (computed here independently of head_rules)."""
  rng = np.random.default_rng(1)
  labels = {s: rng.integers(0, 5, 300) for s in ("train", "validation", "test")}
  emb = {s: rng.normal(size=(300, 3)) + y[:, None] for s, y in labels.items()}
  w, b = 0.8, 1.5
  head = lambda a, c: b - w * np.linalg.norm(a - c, axis=1)  # noqa: E731
  cfg = _eval_config()
  out = head_rules.head_metrics(cfg, emb, labels, pair_logits=head,
                                class_logits=lambda e: -np.abs(e[:, :1] - np.arange(5)))
  assert set(out) == {f"{p}_{s}" for s in labels
                      for p in ("verification/fixed_accuracy", "classifier/accuracy")}
  for split, seed in (("validation", 3), ("test", 4), ("train", 5)):
    i, j, same = verification.sample_pairs(labels[split], 200, seed)
    d = np.array([np.sqrt(np.sum((emb[split][a] - emb[split][c]) ** 2)) for a, c in zip(i, j)])
    assert out[f"verification/fixed_accuracy_{split}"] == pytest.approx(
        np.mean((d < b / w) == same))
    nearest = np.array([np.argmin(np.abs(e0 - np.arange(5))) for e0 in emb[split][:, 0]])
    assert out[f"classifier/accuracy_{split}"] == pytest.approx(np.mean(nearest == labels[split]))
  ev = evaluators.VerificationEvaluator("validation", "test", 200, 3, "euclidean")
  scores, same = ev._scores(emb, labels, "test", 4)
  want = np.mean((scores > -b / w) == same)
  assert out["verification/fixed_accuracy_test"] == pytest.approx(want)
  assert head_rules.head_metrics(cfg, emb, labels) == {}
