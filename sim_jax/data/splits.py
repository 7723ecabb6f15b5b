"""Class-level (zero-shot) and example-level splits shared by every sim_jax builder."""

from __future__ import annotations

import numpy as np


def split_assignment(labels: np.ndarray, heldout_class_fraction: float, test_fraction: float,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Assigns every example to `train`, `test` or `heldout`; returns sorted index arrays.

  - Class level (seed 004 section 4.7, zero-shot): `round(heldout_class_fraction * C)` classes,
    drawn with `seed`, go entirely to `heldout` (no example of them in `train` or `test`).
  - Example level: of each remaining class with n examples, `floor(test_fraction * n)` go to
    `test` (at least 1 when test_fraction > 0 and n >= 2, so every class is evaluated), the rest
    to `train` (at least 1).
  `heldout` is present only when at least one class is held out. Deterministic in `seed`.
  """
  labels = np.asarray(labels)
  if not 0.0 <= heldout_class_fraction < 1.0:
    raise ValueError(f"heldout_class_fraction must be in [0, 1), got {heldout_class_fraction}")
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  classes = np.unique(labels)
  if len(classes) == 0:
    raise ValueError("split_assignment: no examples (empty class list)")
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 7])))
  num_heldout = int(round(heldout_class_fraction * len(classes)))
  if num_heldout >= len(classes):
    raise ValueError(f"heldout_class_fraction={heldout_class_fraction} holds out all "
                     f"{len(classes)} classes; keep at least one for training")
  heldout_classes = set(rng.choice(classes, num_heldout, replace=False).tolist())
  out = {"train": [], "test": [], "heldout": []}
  for c in classes:
    members = np.flatnonzero(labels == c)
    if int(c) in heldout_classes:
      out["heldout"].append(members)
      continue
    members = rng.permutation(members)
    n_test = int(np.floor(test_fraction * len(members)))
    if test_fraction > 0 and len(members) >= 2:
      n_test = min(max(n_test, 1), len(members) - 1)
    out["test"].append(members[:n_test])
    out["train"].append(members[n_test:])
  result = {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in out.items()}
  if not num_heldout:
    del result["heldout"]
  return result
