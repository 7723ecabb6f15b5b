"""Samplers: pure NumPy functions from (labels, seed, step) to example indices.

Every batch is a pure function of `(seed, step)` and the process-local labels, so an iterator
positioned at any step reproduces exactly the batches of an uninterrupted run (resume needs only
the step), and grain workers can build batches out of order.

Randomness: a PCG64 Generator seeded by `SeedSequence([seed, stream, a, b])`; the streams keep
the epoch permutation and the per-batch draws independent.
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("pk", "random", "views", "pairs", "triplets", "pools")

_STREAM_EPOCH, _STREAM_BATCH, _STREAM_SUBSET, _STREAM_POOL = 1, 2, 3, 4


def rng_for(seed: int, stream: int, a: int = 0, b: int = 0) -> np.random.Generator:
  """A Generator that depends only on its four integers (SeedSequence hashes them together)."""
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, a, b])))


def shard_indices(num_examples: int, process_index: int, process_count: int) -> np.ndarray:
  """Indices of process `process_index`'s shard: `i = process_index + j * process_count`.

  Every process gets `num_examples // process_count` examples (the last `num_examples %
  process_count` are dropped) so that all processes run the same number of steps; shards are
  disjoint. Strided rather than contiguous so each shard sees every class of a class-sorted source.
  """
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  per_process = num_examples // process_count
  if per_process == 0:
    raise ValueError(f"num_examples={num_examples} is too small for process_count={process_count}")
  return np.arange(per_process, dtype=np.int64) * process_count + process_index


def samples_per_class_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """Indices (sorted) of `n` examples of each class, drawn without replacement (seed 004 4.4).

  Raises ValueError if a class has fewer than `n` examples, naming the class.
  """
  if n < 1:
    raise ValueError(f"samples_per_class must be >= 1, got {n}")
  keep = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < n:
      raise ValueError(f"samples_per_class={n} but class {int(c)} has only {len(members)} examples")
    keep.append(rng_for(seed, _STREAM_SUBSET, int(c)).choice(members, n, replace=False))
  return np.sort(np.concatenate(keep))


def augmentation_factor_indices(num_examples: int, factor: int) -> np.ndarray:
  """`factor` copies of `range(num_examples)` (seed 004 4.5-4.6: an N x larger augmented set).

  The copies differ only through the per-example augmentation keys the trainer draws, so an
  epoch is `factor` times longer; without augmentation this is plain repetition.
  """
  if factor < 1:
    raise ValueError(f"augmentation_factor must be >= 1, got {factor}")
  return np.tile(np.arange(num_examples, dtype=np.int64), factor)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (drop remainder)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if num_examples < batch_size:
    raise ValueError(f"batch_size={batch_size} is larger than the {num_examples} examples per "
                     "process; lower the batch size")
  return num_examples // batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The shuffled order of epoch `epoch`: a fresh permutation per epoch, derived from the seed."""
  return rng_for(seed, _STREAM_EPOCH, epoch).permutation(num_examples)


def random_batch(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Batch `step` of shuffled epochs without replacement: `perm_e[j*B:(j+1)*B]`, e, j = divmod."""
  epoch, j = divmod(step, steps_per_epoch(num_examples, batch_size))
  return epoch_permutation(num_examples, seed, epoch)[j * batch_size:(j + 1) * batch_size]


class ClassIndex:
  """Per-class member lists of a label vector (built once, reused by every batch)."""

  def __init__(self, labels: np.ndarray):
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
      raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    self.labels = labels
    self.classes, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(self.classes))
    self.members = np.split(order, np.cumsum(counts)[:-1])
    self.class_pos = inverse  # position of each example's class in `self.classes`

  def other_member(self, rng: np.random.Generator, i: int) -> int:
    """A random example of i's class other than i (i itself when the class has one example)."""
    members = self.members[self.class_pos[i]]
    if len(members) == 1:
      return int(i)
    j = int(members[rng.integers(len(members) - 1)])
    return j if j != i else int(members[-1])

  def other_class_member(self, rng: np.random.Generator, i: int) -> int:
    """A random example of a class different from i's (uniform class, then uniform member)."""
    n = len(self.classes)
    if n < 2:
      raise ValueError("negatives need at least 2 classes, the data has 1")
    c = int(rng.integers(n - 1))
    c = c if c < self.class_pos[i] else c + 1
    members = self.members[c]
    return int(members[rng.integers(len(members))])


def pk_batch(index: ClassIndex, p: int, k: int, seed: int, step: int) -> np.ndarray:
  """P distinct classes x K examples each, `[P*K]`, class-major (rows `c*K:(c+1)*K` share a class).

  Classes are drawn uniformly without replacement; examples without replacement when the class
  has >= K, else with replacement (so K is always met; duplicates then carry the same index).
  Reference: Hermans et al. 2017, "In Defense of the Triplet Loss", PK batches.
  """
  if p > len(index.classes):
    raise ValueError(f"pk sampler needs P={p} classes per batch but the data has "
                     f"{len(index.classes)}; lower the batch size or raise examples_per_class")
  rng = rng_for(seed, _STREAM_BATCH, step)
  out = []
  for c in rng.choice(len(index.classes), p, replace=False):
    members = index.members[c]
    out.append(rng.choice(members, k, replace=len(members) < k))
  return np.concatenate(out).astype(np.int64)


def pairs_batch(index: ClassIndex, batch_size: int, pos_fraction: float, seed: int,
                step: int) -> tuple[np.ndarray, np.ndarray]:
  """Balanced pairs: `([B, 2] indices, same [B])`, exactly `round(pos_fraction * B)` POS pairs.

  Anchors walk the epoch permutation (each example is an anchor once per epoch); a POS partner is
  another example of the anchor's class, a NEG partner an example of a uniformly drawn other
  class (seed 002: POS = same class, NEG = different class). POS/NEG positions are shuffled.
  """
  if not 0.0 <= pos_fraction <= 1.0:
    raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
  anchors = random_batch(len(index.labels), batch_size, seed, step)
  rng = rng_for(seed, _STREAM_BATCH, step)
  same = np.zeros(batch_size, np.int32)
  same[:int(round(pos_fraction * batch_size))] = 1
  same = rng.permutation(same)
  partners = np.array([index.other_member(rng, a) if s else index.other_class_member(rng, a)
                       for a, s in zip(anchors, same)], dtype=np.int64)
  return np.stack([anchors, partners], axis=1), same


def triplets_batch(index: ClassIndex, batch_size: int, seed: int, step: int) -> np.ndarray:
  """`[B, 3]` (anchor, positive of the same class, negative of another class)."""
  anchors = random_batch(len(index.labels), batch_size, seed, step)
  rng = rng_for(seed, _STREAM_BATCH, step)
  pos = [index.other_member(rng, a) for a in anchors]
  neg = [index.other_class_member(rng, a) for a in anchors]
  return np.stack([anchors, np.array(pos), np.array(neg)], axis=1).astype(np.int64)


def pool_row(index: ClassIndex, q: int, num_foils: int, rng: np.random.Generator) -> list[int]:
  """`[q, true, foil_1..foil_k]`: `true` another example of q's class, the k foils distinct
  examples of other classes (uniform without replacement). ValueError when fewer exist."""
  if num_foils < 1:
    raise ValueError(f"num_foils must be >= 1, got {num_foils}")
  others = np.flatnonzero(index.labels != index.labels[q])
  if len(others) < num_foils:
    raise ValueError(f"num_foils={num_foils} but only {len(others)} examples of other classes")
  foils = rng.choice(others, num_foils, replace=False)
  return [int(q), index.other_member(rng, q), *foils.tolist()]


def pool_queries(index: ClassIndex) -> np.ndarray:
  """Examples that can be a pool's query: their class has >= 2 examples (a true match exists)."""
  sizes = np.array([len(m) for m in index.members])
  queries = np.flatnonzero(sizes[index.class_pos] >= 2)
  if not len(queries):
    raise ValueError("candidate pools: no class has 2 or more examples")
  return queries


def candidate_pools(labels: np.ndarray, num_foils: int, seed: int) -> np.ndarray:
  """Candidate pools for pool ranking (seed 003: 1 true match + k foils).

  For each example q with at least one same-class partner, a row `[q, true, foil_1..foil_k]`
  (`pool_row` with a Generator of (seed, q)). Returns `[Q, 2 + num_foils]` int64. Raises
  ValueError when fewer than `num_foils` foils exist.
  """
  index = ClassIndex(labels)
  rows = [pool_row(index, q, num_foils, rng_for(seed, _STREAM_POOL, q))
          for q in pool_queries(index)]
  return np.array(rows, dtype=np.int64)


def pools_batch(index: ClassIndex, queries: np.ndarray, batch_size: int, num_foils: int,
                seed: int, step: int) -> np.ndarray:
  """`[B, 2 + num_foils]` candidate pools for training (seed 003: 1 true + k foils per query).

  Queries walk the epoch permutation of `queries` (`pool_queries(index)`); each row is
  `pool_row` with a Generator of (seed, q, step + 1), so foils are fresh at every step and
  differ from `candidate_pools`'s fixed evaluation pools (b = 0).
  """
  chosen = queries[random_batch(len(queries), batch_size, seed, step)]
  return np.array([pool_row(index, int(q), num_foils, rng_for(seed, _STREAM_POOL, int(q),
                                                               step + 1))
                   for q in chosen], dtype=np.int64)
