"""Train iterators and eval splits: source -> per-process shard -> sampler -> fixed-shape batches.

The grain graph is `MapDataset.range(2**62)` (the global step) `.map(make batch for step)`
`.to_iter_dataset(ReadOptions(prefetch_threads, prefetch_batches))` (`.mp_prefetch(...)` with
workers). Each *global* batch is a pure function of (seed, step) over the whole train split, and
process i keeps rows [i * B/n, (i + 1) * B/n) of it and reads only those records. So the global
batch - and the training run - is the same whatever the process count (2 processes x 1 device
train exactly like 1 process x 2 devices), the process slices of a step are disjoint and of equal
size, and the iterator state is just the next step: resuming from an Orbax checkpoint
(`grain.checkpoint.CheckpointSave/Restore`) is exact mid-epoch and across epochs.

Memory cache: a train split whose formatted images fit in `cache_mb` is decoded and resized once
into a `sources.ArraySource`, so a batch is a NumPy gather instead of B record reads, PNG
decodes and resizes (about 40 ms per batch of 128 on a 2-core host, i.e. a third of the default
step). Larger splits stay random-access ArrayRecord reads.

Prefetch: grain's `PrefetchDatasetIterator` builds the next `prefetch_batches` batches in
`prefetch_threads` background threads while the train step runs; its state is the index of the
next batch *returned* (`{"next_index": n}`), never of the ones already built, so a checkpoint
taken with batches in the buffer resumes at the first batch the trainer has not seen. grain's
default (16 threads, 500 batches) would build hundreds of batches ahead and, on a small CPU host,
take the cores and the GIL from the step: a few batches ahead in one thread is enough.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import ml_collections
import numpy as np

from sim_jax.data import offline, registry, samplers, sources

# Large enough to never run out; grain needs a finite length for a MapDataset.
_INFINITE = 2**62


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer and evaluators need to know about a dataset (after formatting)."""

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  splits: dict[str, int]
  # label i -> class_names[i] as the dataset stores it (`U+2192`, `Sneaker`); () when unnamed.
  class_names: tuple[str, ...] = ()


def open_split(data_config: ml_collections.ConfigDict, split: str):
  """The source of `split` of `data_config.name` (see `sim_jax.data.registry`)."""
  return registry.open_split(data_config, split)


def get_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Name, formatted image shape (H, W, C), number of classes and split sizes."""
  shape, num_classes, splits = registry.describe(data_config)
  h, w, c = shape
  if data_config.image_size is not None:
    h = w = int(data_config.image_size)
  if data_config.channels is not None:
    c = int(data_config.channels)
  return DatasetInfo(str(data_config.name), (h, w, c), num_classes, splits,
                     registry.class_names(data_config))


def load_split(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  """All of `split`, formatted: `{"image": uint8 [N,H,W,C], "label": int32 [N], "id": int64 [N]}`.

  Two split names of seed 004 (`sim_jax.data.offline`): "trained" is the rows of the train split
  the model trains on (the samples_per_class subset), "<dataset>:<split>" a split of another
  dataset (its default build) at this config's image shape (`get_info`).
  Raises ValueError for an empty split (evaluation on it would report NaN).
  """
  other, inner = offline.split_reference(split)
  if other is not None:
    out = load_split(offline.cross_domain_config(data_config, other), inner)
    # The shape this config's model takes: its dataset's own size and channels where the config
    # leaves them None (gray Fashion-MNIST embedding RGB icons needs them converted to 1).
    h, _, c = get_info(data_config).image_shape
    out["image"] = sources.format_images(out["image"], h, c)
    return out
  source = open_split(data_config, data_config.train_split if split == offline.TRAINED else split)
  if len(source) == 0:
    raise ValueError(f"split {split!r} of dataset {data_config.name!r} is empty")
  rows = np.arange(len(source))
  if split == offline.TRAINED:
    rows = offline.subset_indices(source.labels, data_config)
  out = source.read(rows)
  out["image"] = sources.format_images(out["image"], data_config.image_size, data_config.channels)
  return {"image": out["image"], "label": out["label"].astype(np.int32),
          "id": out["id"].astype(np.int64)}


def formatted_shape(source, data_config: ml_collections.ConfigDict):
  """(H, W, C) of the source's images after `format_images`; None when not fixed."""
  h, w, c = source.image_shape
  if data_config.image_size is not None:
    h = w = int(data_config.image_size)
  if data_config.channels is not None:
    c = int(data_config.channels)
  return None if None in (h, w, c) else (h, w, c)


_CACHE: dict = {}  # (id(source), image_size, channels) -> (source, ArraySource)
_CACHE_CHUNK = 4096  # records decoded per read: bounds the undecoded bytes held at once


def cached(source, data_config: ml_collections.ConfigDict):
  """`source` decoded and formatted into memory (`sources.ArraySource`), or `source` itself.

  Cached when `data_config.cache_mb > 0` and `N * H * W * C` bytes of formatted images fit in
  `cache_mb` MiB; batches read from it are identical (same decoder, same `format_images`). The
  result is memoised per (source, image_size, channels) so that re-creating an iterator (resume,
  benchmarks) does not decode again.
  """
  if data_config.cache_mb < 0:
    raise ValueError(f"data.cache_mb must be >= 0, got {data_config.cache_mb}")
  shape = formatted_shape(source, data_config)
  if isinstance(source, sources.ArraySource) or shape is None or not data_config.cache_mb:
    return source
  nbytes = len(source) * int(np.prod(shape))
  if nbytes > data_config.cache_mb * 2**20:
    logging.info("data: %d MiB of images > cache_mb=%d: reading records per batch",
                 nbytes >> 20, data_config.cache_mb)
    return source
  key = (id(source), data_config.image_size, data_config.channels)
  if key in _CACHE and _CACHE[key][0] is source:
    return _CACHE[key][1]
  images = np.zeros((len(source), *shape), np.uint8)
  for start in range(0, len(source), _CACHE_CHUNK):
    idx = np.arange(start, min(start + _CACHE_CHUNK, len(source)))
    images[idx] = sources.format_images(source.read(idx)["image"], data_config.image_size,
                                        data_config.channels)
  out = sources.ArraySource(images, source.labels, source.ids, source.num_classes)
  _CACHE.clear()  # one cached split at a time: bounded memory
  _CACHE[key] = (source, out)
  return out


def train_example_indices(labels: np.ndarray, data_config: ml_collections.ConfigDict, seed: int,
                          process_index: int, process_count: int) -> np.ndarray:
  """Indices into the train source that the sampler draws from (for process_count=1: all).

  Order: samples-per-class subset (seed 004 4.4, drawn with `data.subset_seed`, so that it is the
  "trained" eval split whatever the training seed) -> augmentation factor copies (4.5) ->
  strided per-process shard (equal length on every process, disjoint). The train
  iterator samples global batches from the unsharded indices and slices them per process (see the
  module docstring); the sharded form serves code that wants a static per-process partition.
  """
  del seed  # the subset is part of the data (data.subset_seed), not of the training run
  base = offline.subset_indices(labels, data_config)
  base = base[samplers.augmentation_factor_indices(len(base), int(data_config.augmentation_factor))]
  return base[samplers.shard_indices(len(base), process_index, process_count)]


class BatchMaker(grain.transforms.Map):
  """Maps a global step to that step's host-local batch (picklable for grain workers).

  `batch_size` is the *global* batch; `process_index` / `process_count` select this process's
  contiguous slice of it.
  """

  def __init__(self, source, local: np.ndarray, data_config: ml_collections.ConfigDict,
               batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    self.source = source
    self.local = local  # example indices into `source` that global batches are drawn from
    self.sampler = str(data_config.sampler)
    self.batch_size = batch_size
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.seed = seed
    self.image_size = data_config.image_size
    self.channels = data_config.channels
    self.pos_fraction = float(data_config.pos_fraction)
    self.k = int(data_config.examples_per_class)
    self.num_foils = int(data_config.num_foils)
    self.index = samplers.ClassIndex(source.labels[local])
    samplers.steps_per_epoch(len(local), batch_size)  # validates batch_size against the shard
    if self.sampler == "pools":
      self.queries = samplers.pool_queries(self.index)
      samplers.steps_per_epoch(len(self.queries), batch_size)
      samplers.pool_row(self.index, int(self.queries[0]), self.num_foils,
                        samplers.rng_for(seed, 0))  # fails now, not in a grain thread
    if self.sampler == "pk" and batch_size // self.k > len(self.index.classes):
      raise ValueError(f"pk sampler needs P={batch_size // self.k} classes per batch but the data "
                       f"has {len(self.index.classes)}; lower the batch size or raise "
                       "examples_per_class")

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions into `self.local` for `step` (shape [B] or [B, m]) and `same` for pairs."""
    n, b, s = len(self.local), self.batch_size, self.seed
    if self.sampler in ("random", "views"):
      return samplers.random_batch(n, b, s, step), None
    if self.sampler == "pk":
      return samplers.pk_batch(self.index, b // self.k, self.k, s, step), None
    if self.sampler == "pairs":
      return samplers.pairs_batch(self.index, b, self.pos_fraction, s, step)
    if self.sampler == "pools":
      return samplers.pools_batch(self.index, self.queries, b, self.num_foils, s, step), None
    return samplers.triplets_batch(self.index, b, s, step), None

  def map(self, step: int) -> dict[str, np.ndarray]:
    pos, same = self.indices(int(step))
    per = self.batch_size // self.process_count
    rows = slice(self.process_index * per, (self.process_index + 1) * per)
    pos = pos[rows]
    same = None if same is None else same[rows]
    idx = self.local[pos]
    flat = np.sort(np.unique(idx.reshape(-1)))  # read each record once, in storage order
    rec = self.source.read(flat)
    where = np.searchsorted(flat, idx)
    image = sources.format_images(rec["image"], self.image_size, self.channels)[where]
    batch = {"image": image, "label": rec["label"][where].astype(np.int32)}
    if same is None:
      batch["index"] = idx.astype(np.int32)
    else:
      batch["same"] = same.astype(np.int32)
    return batch


def validate_train_args(data_config: ml_collections.ConfigDict, global_batch_size: int,
                        process_count: int) -> int:
  """Checks the sampler and batch arguments; returns the per-process batch size."""
  if data_config.sampler not in samplers.SAMPLERS:
    raise ValueError(f"data.sampler={data_config.sampler!r} is not one of {samplers.SAMPLERS}")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  batch_size = global_batch_size // process_count
  if data_config.sampler == "pk":
    k = int(data_config.examples_per_class)
    if k < 1 or batch_size % k:
      raise ValueError(f"pk sampler: per-process batch {batch_size} must be a multiple of "
                       f"data.examples_per_class={k}")
  for field in ("worker_count", "worker_buffer_size", "prefetch_threads", "prefetch_batches"):
    if int(data_config[field]) < 0:
      raise ValueError(f"data.{field} must be >= 0, got {data_config[field]}")
  return batch_size


def create_train_iterator(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                          seed: int, process_index: int = 0,
                          process_count: int = 1) -> grain.DatasetIterator:
  """An infinite grain `DatasetIterator` of host-local batches (see docs/interfaces.md).

  Batches are `B = global_batch_size // process_count` examples of this process's shard; the
  keys depend on `data_config.sampler`. Deterministic given the arguments; `get_state()` /
  `set_state()` (and Orbax via `grain.checkpoint.CheckpointSave`) resume exactly.
  """
  batch_size = validate_train_args(data_config, global_batch_size, process_count)
  source = open_split(data_config, data_config.train_split)
  if offline.uses_subset(data_config):  # N per class (+ fixed augmented copies) in memory
    source, pool = offline.subset_train_source(source, data_config)
  else:
    source = cached(source, data_config)
    pool = train_example_indices(source.labels, data_config, seed, 0, 1)
  maker = BatchMaker(source, pool, data_config, global_batch_size, seed, process_index,
                     process_count)
  logging.info("data: %s/%s sampler=%s global batch=%d (%d on process %d/%d), %d examples",
               data_config.name, data_config.train_split, data_config.sampler,
               global_batch_size, batch_size, process_index, process_count, len(pool))
  return iter(batch_dataset(maker, data_config))


def batch_dataset(batch_for_step: grain.transforms.Map,
                  data_config: ml_collections.ConfigDict) -> grain.IterDataset:
  """Step `i` -> `batch_for_step.map(i)`, prefetched in threads and (optionally) worker processes.

  `data_config.prefetch_threads` / `prefetch_batches`: grain `ReadOptions` of the conversion to
  an `IterDataset` (0 of either builds each batch on demand in `next()`).
  `data_config.worker_count > 0`: `mp_prefetch` with that many processes, each keeping
  `worker_buffer_size` batches ready; workers need absl flags parsed (grain #1355) and a
  `__main__` guard in the entry point. The state is exact in every case (see the module doc).
  """
  read = grain.ReadOptions(num_threads=int(data_config.prefetch_threads),
                           prefetch_buffer_size=int(data_config.prefetch_batches))
  ds = grain.MapDataset.range(_INFINITE).map(batch_for_step).to_iter_dataset(read)
  if data_config.worker_count > 0:
    ds = ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=int(data_config.worker_count),
        per_worker_buffer_size=int(data_config.worker_buffer_size)))
  return ds
