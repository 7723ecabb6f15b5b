"""A linear softmax classifier over the embedding: the "no metric learning" baseline of seed 001.

Seed 001 (Sino-nom retrieval) first trains a classifier and retrieves with a distance between
either the feature vectors (Euclidean, cosine) or the classifier's output distributions (KL
divergence, cross-entropy); Table 1. This is that objective: the embedding z (the feature vector)
goes through a linear layer to C class logits, trained with softmax cross-entropy. The classifier
weights are not part of the encoder: the trainer keeps them in `params["loss"]`, like a learnable
margin, so retrieval by feature vector ignores them and retrieval by distribution uses them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks


def linear_logits(embeddings: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """[N, C] class logits z W + b of [N, D] embeddings, kernel [D, C], bias [C]."""
  _checks.check_embeddings(embeddings)
  d = np.shape(embeddings)[1]
  if np.ndim(kernel) != 2 or np.shape(kernel)[0] != d:
    raise ValueError(f"kernel must have shape [D={d}, C], got shape {np.shape(kernel)}.")
  if np.shape(bias) != (np.shape(kernel)[1],):
    raise ValueError(f"bias must have shape [C={np.shape(kernel)[1]}], got {np.shape(bias)}.")
  return embeddings @ kernel + bias


def softmax_ce(logits: jax.Array, labels: jax.Array,
                          reduction: str = "mean") -> jax.Array:
  """Softmax cross-entropy of class logits against integer labels.

    l_i = -log softmax(x_i)[y_i] = logsumexp_c(x_ic) - x_{i,y_i}

  computed with a max-shifted log-sum-exp (finite for any finite logits, |x| = 1e4 included);
  equals `optax.softmax_cross_entropy_with_integer_labels` / `torch.nn.CrossEntropyLoss`.

  Args:
    logits: [N, C] floating-point logits.
    labels: [N] integer class ids in [0, C). Out-of-range ids are an error when the labels are
      concrete (outside `jit`); inside `jit` they cannot be checked.
    reduction: "mean" (over N), "sum", or "none" ([N]).
  """
  _checks.check_choice(reduction, "reduction", _checks.REDUCTIONS)
  _checks.check_embeddings(logits, "logits")
  n, c = np.shape(logits)
  _checks.check_labels(labels, n)
  if not isinstance(labels, jax.core.Tracer):
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= c:
      raise ValueError(f"labels must be class ids in [0, {c}) for {c} logits; got values in "
                       f"[{lo}, {hi}]. Set config.loss.num_classes to the number of classes.")
  x = logits.astype(_checks.compute_dtype(logits.dtype))
  picked = jnp.take_along_axis(x, jnp.asarray(labels)[:, None], axis=1)[:, 0]
  return _checks.reduce_elements(jax.nn.logsumexp(x, axis=1) - picked, reduction)
