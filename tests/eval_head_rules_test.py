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
  pair_keys = ("verification/fixed_accuracy", "verification/fixed_precision",
               "verification/fixed_recall", "verification/head_roc_auc", "classifier/accuracy")
  fit_keys = ("verification/head_fit_accuracy", "verification/head_fit_precision",
              "verification/head_fit_recall")
  assert set(out) == ({f"{p}_{s}" for s in labels for p in pair_keys}
                      | {f"{p}_{s}" for s in ("train", "test") for p in fit_keys})
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


def test_head_precision_recall_auc_and_validation_fit_threshold_match_loops():
  """Seed 000's Table 1 metrics of the pair head: precision / recall of the rule x > 0, ROC-AUC
  of x, and a threshold on x fit on the validation pairs (maximum accuracy over every cut, by a
  loop over the cuts) applied to the other splits, all counted pair by pair here."""
  rng = np.random.default_rng(2)
  labels = {s: rng.integers(0, 6, 200) for s in ("train", "validation", "test")}
  emb = {s: rng.normal(size=(200, 2)) + y[:, None] for s, y in labels.items()}
  head = lambda a, c: 0.3 - np.linalg.norm(a - c, axis=1)  # noqa: E731
  out = head_rules.head_metrics(_eval_config(), emb, labels, pair_logits=head)
  pairs = {}
  for split, seed in (("validation", 3), ("test", 4), ("train", 5)):
    i, j, same = verification.sample_pairs(labels[split], 200, seed)
    x = np.array([0.3 - np.sqrt(np.sum((emb[split][a] - emb[split][c]) ** 2))
                  for a, c in zip(i, j)])
    pairs[split] = (x, same)
    tp = sum(1 for xi, yi in zip(x, same) if xi > 0 and yi)
    assert out[f"verification/fixed_precision_{split}"] == pytest.approx(tp / np.sum(x > 0))
    assert out[f"verification/fixed_recall_{split}"] == pytest.approx(tp / np.sum(same))
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0
               for p in x[same] for n in x[~same])
    assert out[f"verification/head_roc_auc_{split}"] == pytest.approx(
        wins / (same.sum() * (~same).sum()))
  xv, yv = pairs["validation"]
  u = sorted(set(xv))  # verification's candidates: midpoints between distinct validation logits
  cuts = [-np.inf] + [(lo + hi) / 2 for lo, hi in zip(u[:-1], u[1:])] + [np.inf]
  best = max(cuts, key=lambda t: (np.mean((xv >= t) == yv), -t))  # ties: the smallest cut
  for split in ("train", "test"):
    x, same = pairs[split]
    pred = x >= best
    assert out[f"verification/head_fit_accuracy_{split}"] == pytest.approx(np.mean(pred == same))
    assert out[f"verification/head_fit_precision_{split}"] == pytest.approx(
        np.sum(pred & same) / np.sum(pred))
    assert out[f"verification/head_fit_recall_{split}"] == pytest.approx(
        np.sum(pred & same) / np.sum(same))
