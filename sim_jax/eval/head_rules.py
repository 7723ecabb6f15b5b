"""Accuracy of a trained head's own decision rule, next to the embedding protocols (seed 002).

The embedding protocols (`evaluators`) see embeddings only; a model with a head decides by it:
- a Siamese pair head outputs a logit x per pair, similarity s = sigmoid(x), and seed 002's rule
  says "same" iff s > 0.5, i.e. x > 0: no threshold is fit on any split.
  `fixed_rule_accuracy` = mean over pairs of [ (x > 0) == same ].
- a softmax classifier (the plain LeNet-5 of seed 002's Table 3) predicts argmax_c of its logits.
  `classifier_accuracy` = mean over images of [ argmax logits == label ].

`head_metrics` computes both from the embeddings the trainer already has, given the head as a
function of arrays; its pairs are `verification.sample_pairs(labels, num_pairs, seed + k)` with
k = 0 for the verification val split, 1 for the test split (the verification evaluator's pairs,
so the fixed-rule and fitted-threshold accuracies are on the same pairs) and 2 for any other split.

Seed 000's Table 1 reports accuracy, precision and recall of the rule, so the pair head's metrics
per split are (TP, FP, FN, TN counted with "same" = positive):
  fixed_{accuracy,precision,recall}   the rule x > 0: (TP + TN) / P, TP / (TP + FP), TP / (TP + FN)
  head_roc_auc                        ROC-AUC of the logit x (`verification.roc_auc`)
  head_fit_{accuracy,precision,recall} x >= t, t fit on the verification val split's pair logits
                                      (`verification.fit_threshold`; every split but that one)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from sim_jax.eval import verification
from sim_jax.eval.distances import DISTRIBUTION_DISTANCES
from sim_jax.losses import objective


def fixed_rule_accuracy(logits, same) -> float:
  """Fraction of pairs where (logit > 0) == same; logits [P] (s = sigmoid(logit) > 0.5)."""
  x, y = np.asarray(logits, np.float64).reshape(-1), np.asarray(same).astype(bool).reshape(-1)
  if x.shape != y.shape or x.size == 0:
    raise ValueError(f"logits {x.shape} and same {y.shape} must be one non-empty [P] each")
  return float(np.mean((x > 0) == y))


def fixed_rule_metrics(logits, same) -> dict[str, float]:
  """Accuracy, precision and recall of the rule logit > 0 on pairs (0 when undefined)."""
  x, y = np.asarray(logits, np.float64).reshape(-1), np.asarray(same).astype(bool).reshape(-1)
  accuracy = fixed_rule_accuracy(x, y)
  pred = x > 0
  tp = int(np.sum(pred & y))
  predicted, positives = int(np.sum(pred)), int(np.sum(y))
  return {"accuracy": accuracy, "precision": tp / predicted if predicted else 0.0,
          "recall": tp / positives if positives else 0.0}


def classifier_accuracy(logits, labels) -> float:
  """Fraction of rows whose argmax over logits [N, C] is the label [N]."""
  z, y = np.asarray(logits), np.asarray(labels).reshape(-1)
  if z.ndim != 2 or z.shape[0] != y.shape[0] or y.size == 0:
    raise ValueError(f"logits {z.shape} must be [N, C] with one label per row (labels {y.shape})")
  return float(np.mean(np.argmax(z, axis=1) == y))


def _pair_seed(split: str, eval_config) -> int:
  offset = {eval_config.verification_val_split: 0, eval_config.query_split: 1}.get(split, 2)
  return int(eval_config.verification_seed) + offset


def head_fns(params, pair_head, metric: str) -> tuple[Callable | None, Callable | None]:
  """`(pair_logits, class_logits)`: the trained pair head (za, zb) -> [B] logits and the
  classifier z -> [M, C] logits found in `params`, None where the run has none (the classifier
  is left out when `metric` already ranks by its output distributions)."""
  pair_logits = class_logits = None
  if pair_head is not None:
    pair_logits = functools.partial(pair_head.apply, {"params": params["pair_head"]})
  if "classifier_kernel" in params.get("loss", {}) and metric not in DISTRIBUTION_DISTANCES:
    class_logits = functools.partial(objective.classifier_logits, params)
  return pair_logits, class_logits


def head_metrics(eval_config, embeddings: dict, labels: dict, *,
                 pair_logits: Callable | None = None,
                 class_logits: Callable | None = None) -> dict[str, float]:
  """`verification/{fixed_*, head_*}_<split>` for every split (pair head; see the module doc)
  and `classifier/accuracy_<split>` (classifier), from embeddings / labels dicts keyed by split.

  pair_logits(e_a [P, E], e_b [P, E]) -> [P]; class_logits(e [N, E]) -> [N, C]; None skips.
  """
  out = {}
  pairs = {}  # split -> (logits [P], same [P])
  for split, e in embeddings.items():
    y = np.asarray(labels[split])
    if pair_logits is not None:
      i, j, same = verification.sample_pairs(y, int(eval_config.verification_num_pairs),
                                             _pair_seed(split, eval_config))
      pairs[split] = (np.asarray(pair_logits(e[i], e[j]), np.float64).reshape(-1), same)
      for name, value in fixed_rule_metrics(*pairs[split]).items():
        out[f"verification/fixed_{name}_{split}"] = value
      out[f"verification/head_roc_auc_{split}"] = verification.roc_auc(*pairs[split])
    if class_logits is not None:
      out[f"classifier/accuracy_{split}"] = classifier_accuracy(class_logits(e), y)
  val = eval_config.verification_val_split
  if val in pairs:
    threshold = verification.fit_threshold(*pairs[val])
    for split, (x, same) in pairs.items():
      if split != val:
        fit = verification.evaluate(threshold, x, same)
        for name in ("accuracy", "precision", "recall"):
          out[f"verification/head_fit_{name}_{split}"] = fit[name]
  return out
