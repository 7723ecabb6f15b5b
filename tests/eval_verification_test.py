"""Verification: threshold fit on validation, applied unchanged to test; ROC-AUC vs sklearn."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from sim_jax.eval import verification


def test_fit_threshold_hand_computed():
  # Sorted val scores 0.1(n) 0.4(p) 0.5(n) 0.8(p) 0.9(p): cuts 0.25 and 0.65 both give 4/5;
  # ties go to the smallest threshold.
  t = verification.fit_threshold([0.8, 0.1, 0.5, 0.9, 0.4], [1, 0, 0, 1, 1])
  assert t.value == pytest.approx(0.25) and t.val_accuracy == pytest.approx(0.8)
  t = verification.fit_threshold([0.8, 0.1, 0.5, 0.9, 0.4], [1, 0, 0, 1, 0])
  assert t.value == pytest.approx(0.65) and t.val_accuracy == 1.0


def test_threshold_from_validation_is_not_tuned_on_test():
  val_s, val_y = np.array([0.1, 0.2, 0.6, 0.7]), np.array([0, 0, 1, 1])
  t = verification.fit_threshold(val_s, val_y)  # any cut in (0.2, 0.6): midpoint 0.4
  assert t.value == pytest.approx(0.4)
  # On test the best cut would be 0.8 (accuracy 1); the validation threshold gives 0.5.
  test_s, test_y = np.array([0.5, 0.55, 0.9, 0.95]), np.array([0, 0, 1, 1])
  m = verification.evaluate(t, test_s, test_y)
  assert m["threshold"] == pytest.approx(0.4)
  assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 1.0
  assert m["f1"] == pytest.approx(2 / 3)
  assert m["roc_auc"] == 1.0
  assert verification.fit_threshold(test_s, test_y).val_accuracy == 1.0  # test-tuned would be


def test_evaluate_refuses_a_number_and_the_validation_data():
  s, y = np.array([0.1, 0.9]), np.array([0, 1])
  with pytest.raises(ValueError, match="Threshold from fit_threshold"):
    verification.evaluate(0.5, s, y)
  with pytest.raises(ValueError, match="identical to the validation data"):
    verification.evaluate(verification.fit_threshold(s, y), s, y)


def test_random_scores_match_sklearn_with_ties():
  rng = np.random.default_rng(0)
  val_s = np.round(rng.standard_normal(300), 1)  # rounding makes many ties
  val_y = (val_s + rng.standard_normal(300) > 0).astype(int)
  test_s = np.round(rng.standard_normal(400), 1)
  test_y = (test_s + rng.standard_normal(400) > 0).astype(int)
  t = verification.fit_threshold(val_s, val_y)
  # Brute force over every observed cut on validation.
  best = max(np.mean((val_s >= c) == val_y) for c in np.r_[np.unique(val_s), np.inf])
  assert t.val_accuracy == pytest.approx(best)
  m = verification.evaluate(t, test_s, test_y)
  pred = (test_s >= t.value).astype(int)
  assert m["accuracy"] == pytest.approx(accuracy_score(test_y, pred))
  assert m["precision"] == pytest.approx(precision_score(test_y, pred))
  assert m["recall"] == pytest.approx(recall_score(test_y, pred))
  assert m["f1"] == pytest.approx(f1_score(test_y, pred))
  assert m["roc_auc"] == pytest.approx(roc_auc_score(test_y, test_s), abs=1e-12)


def test_roc_auc_edge_cases():
  assert verification.roc_auc([0.3, 0.3, 0.3], [1, 0, 1]) == 0.5  # all tied
  assert verification.roc_auc([0.9, 0.1], [0, 1]) == 0.0  # worst
  assert np.isnan(verification.roc_auc([0.1, 0.2], [1, 1]))


def test_pair_scores_and_sampled_pairs():
  a = np.array([[3.0, 4.0], [1.0, 0.0]])
  b = np.array([[0.0, 0.0], [0.0, 2.0]])
  np.testing.assert_allclose(verification.pair_scores(a, b, "euclidean"),
                             [-5.0, -np.sqrt(5.0)])
  np.testing.assert_allclose(verification.pair_scores(a, b, "cosine"), [0.0, 0.0])
  labels = np.array([0, 0, 1, 1, 1, 2])
  i, j, same = verification.sample_pairs(labels, 101, seed=3)
  assert same.sum() == 51 and np.all(i != j)
  np.testing.assert_array_equal(labels[i] == labels[j], same)
  i2, j2, _ = verification.sample_pairs(labels, 101, seed=3)
  np.testing.assert_array_equal(i, i2)
  np.testing.assert_array_equal(j, j2)


def test_bad_input():
  with pytest.raises(ValueError, match="non-empty"):
    verification.fit_threshold([], [])
  with pytest.raises(ValueError, match="one label per pair"):
    verification.fit_threshold([0.1, 0.2], [1])
  with pytest.raises(ValueError, match="0/1"):
    verification.fit_threshold([0.1, 0.2], [1, 2])
  with pytest.raises(ValueError, match="class with >= 2 examples"):
    verification.sample_pairs([0, 1, 2], 4)
