"""Tests of sim_jax.data's train iterator: samplers, shards, resume (digits)."""

import collections
import subprocess
import sys
import tempfile
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

import sim_jax.data as sd
from sim_jax.data import pipeline, registry, samplers, sources
from tests import helpers

# One prepared copy of digits for the whole module, outside the user's cache.
_DATA_DIR = tempfile.mkdtemp(prefix="sim_jax_data_test_")


def digits_config(**overrides):
  c = sd.default_config()
  c.name = "digits"
  c.data_dir = _DATA_DIR
  c.update(overrides)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def test_info_and_load_split_match_sklearn():
  from sklearn.datasets import load_digits

  c = digits_config()
  info = sd.get_info(c)
  assert info.image_shape == (8, 8, 1) and info.num_classes == 10
  ref = load_digits()
  total = 0
  for split in ("train", "test"):
    data = sd.load_split(c, split)
    total += len(data["label"])
    # ids index sklearn's arrays: the stored pixels are round(v * 255 / 16) of the original.
    np.testing.assert_array_equal(data["label"], ref.target[data["id"]])
    expected = np.round(ref.images[data["id"]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(data["image"][..., 0], expected)
  assert total == len(ref.target) == sum(info.splits.values())


def test_heldout_classes_are_disjoint_from_train():
  c = digits_config(heldout_class_fraction=0.3)
  train = set(sd.load_split(c, "train")["label"].tolist())
  test = set(sd.load_split(c, "test")["label"].tolist())
  held = set(sd.load_split(c, "heldout")["label"].tolist())
  assert len(held) == 3 and len(train) == 7 and test == train and not held & train


def test_pk_batches_hold_p_classes_times_k():
  c = digits_config(sampler="pk", examples_per_class=4)
  for batch in take(sd.create_train_iterator(c, global_batch_size=24, seed=3), 5):
    counts = collections.Counter(batch["label"].tolist())
    assert len(counts) == 6 and set(counts.values()) == {4}
    assert batch["image"].shape == (24, 8, 8, 1) and batch["image"].dtype == np.uint8


def test_pairs_are_balanced_and_labelled():
  c = digits_config(sampler="pairs", image_size=12, channels=3)
  for batch in take(sd.create_train_iterator(c, global_batch_size=32, seed=0), 4):
    assert batch["image"].shape == (32, 2, 12, 12, 3)
    assert batch["same"].sum() == 16
    for (a, b), s in zip(batch["label"], batch["same"]):
      assert (a == b) == bool(s)


def test_triplets_have_pos_and_neg():
  c = digits_config(sampler="triplets")
  batch = next(sd.create_train_iterator(c, global_batch_size=16, seed=0))
  lab = batch["label"]
  assert (lab[:, 0] == lab[:, 1]).all() and (lab[:, 0] != lab[:, 2]).all()


def test_random_sampler_covers_an_epoch_without_repeats_and_reshuffles():
  c = digits_config(sampler="random")
  n = len(sd.load_split(c, "train")["label"])
  b = 32
  spe = n // b
  batches = take(sd.create_train_iterator(c, global_batch_size=b, seed=1), 2 * spe)
  e0 = np.concatenate([x["index"] for x in batches[:spe]])
  e1 = np.concatenate([x["index"] for x in batches[spe:]])
  assert len(set(e0.tolist())) == spe * b and len(set(e1.tolist())) == spe * b
  assert not np.array_equal(e0, e1)  # the second epoch is reshuffled


def test_two_processes_get_disjoint_equal_slices_of_the_global_batch():
  # Process i's batch is rows [16 i, 16 i + 16) of the 1-process global batch: the run is the
  # same whatever the process count, and the slices never overlap.
  c = digits_config(sampler="random")
  n = len(sd.load_split(c, "train")["label"])
  spe = n // 32
  full = take(sd.create_train_iterator(c, global_batch_size=32, seed=0), spe)
  parts = [take(sd.create_train_iterator(c, global_batch_size=32, seed=0, process_index=p,
                                         process_count=2), spe) for p in range(2)]
  for whole, a, b in zip(full, *parts):
    assert len(a["index"]) == len(b["index"]) == 16
    for k in whole:
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), whole[k])
  seen = [np.concatenate([x["index"] for x in part]) for part in parts]
  assert len(seen[0]) == len(seen[1])
  assert not set(seen[0].tolist()) & set(seen[1].tolist())  # disjoint over a whole epoch


@pytest.mark.parametrize("sampler,skip", [("pk", 5), ("random", 43), ("pairs", 45),
                                          ("pools", 44)])
def test_orbax_resume_is_exact(tmp_path, sampler, skip):
  # digits train has 1442 examples: 45 batches of 32 per epoch, so 43 -> 48 crosses an epoch.
  c = digits_config(sampler=sampler)
  ref = take(sd.create_train_iterator(c, global_batch_size=32, seed=7), skip + 5)
  it = sd.create_train_iterator(c, global_batch_size=32, seed=7)
  take(it, skip)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(skip, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  fresh = sd.create_train_iterator(c, global_batch_size=32, seed=7)
  restored = mngr.restore(skip, args=ocp.args.Composite(
      data_iter=grain.checkpoint.CheckpointRestore(fresh)))["data_iter"]
  for want, got in zip(ref[skip:], take(restored, 5)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  mngr.close()


def test_seed_changes_order():
  c = digits_config(sampler="random")
  a = next(sd.create_train_iterator(c, global_batch_size=16, seed=0))["index"]
  b = next(sd.create_train_iterator(c, global_batch_size=16, seed=1))["index"]
  assert not np.array_equal(a, b)


def test_samples_per_class_and_augmentation_factor():
  c = digits_config(samples_per_class=5, augmentation_factor=3, sampler="random")
  batches = take(sd.create_train_iterator(c, global_batch_size=10, seed=0), 15)
  idx = np.concatenate([b["index"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  # One epoch = 10 classes x 5 examples x 3 copies = 150 = 15 batches: each example thrice.
  assert collections.Counter(collections.Counter(idx.tolist()).values()) == {3: 50}
  assert collections.Counter(labels.tolist()) == {k: 15 for k in range(10)}


@pytest.mark.parametrize("field,value,match", [
    ("name", "no_such_set", "digits"),
    ("sampler", "bogus", "pk"),
    ("examples_per_class", 5, "examples_per_class"),
])
def test_bad_config_raises(field, value, match):
  c = digits_config(**{field: value})
  with pytest.raises(ValueError, match=match):
    sd.create_train_iterator(c, global_batch_size=16, seed=0)


def test_pk_needs_enough_classes():
  c = digits_config(examples_per_class=1)
  with pytest.raises(ValueError, match="P=16"):
    next(sd.create_train_iterator(c, global_batch_size=16, seed=0))


def test_pools_batches_hold_one_true_match_and_k_distinct_foils():
  c = digits_config(sampler="pools", num_foils=5, image_size=10)
  seen_rows = []
  for batch in take(sd.create_train_iterator(c, global_batch_size=8, seed=1), 3):
    assert batch["image"].shape == (8, 7, 10, 10, 1) and batch["label"].shape == (8, 7)
    for lab, idx in zip(batch["label"], batch["index"]):
      assert lab[1] == lab[0] and idx[1] != idx[0]  # the true match: same class, other image
      assert (lab[2:] != lab[0]).all() and len(set(idx[2:].tolist())) == 5  # distinct foils
      seen_rows.append(tuple(idx.tolist()))
  assert len(set(seen_rows)) == len(seen_rows)


def test_pools_need_enough_foils():
  labels = np.array([0, 0, 1])
  with pytest.raises(ValueError, match="num_foils=2"):
    samplers.candidate_pools(labels, num_foils=2, seed=0)
  with pytest.raises(ValueError, match="num_foils must be >= 1, got 0"):
    samplers.candidate_pools(labels, num_foils=0, seed=0)
  with pytest.raises(ValueError, match="2 or more examples"):
    samplers.candidate_pools(np.array([0, 1, 2]), num_foils=1, seed=0)


def test_candidate_pools_reference():
  labels = np.array([0, 0, 1, 1, 2, 3])
  pools = samplers.candidate_pools(labels, num_foils=3, seed=0)
  assert pools.shape == (4, 5)  # classes 2 and 3 have a single example: no query
  for row in pools:
    q, true, foils = row[0], row[1], row[2:]
    assert labels[true] == labels[q] and true != q
    assert len(set(foils.tolist())) == 3 and all(labels[f] != labels[q] for f in foils)


class _CountingStep(grain.transforms.Map):
  """Returns the step itself and records every step built (from grain's prefetch threads)."""

  def __init__(self):
    self.built = []

  def map(self, step):
    self.built.append(int(step))
    return int(step)


def test_prefetch_runs_ahead_but_state_counts_returned_batches():
  c = digits_config(prefetch_threads=1, prefetch_batches=6)
  counter = _CountingStep()
  it = iter(pipeline.batch_dataset(counter, c))
  assert take(it, 3) == [0, 1, 2]
  deadline = time.monotonic() + 30
  while max(counter.built) < 8 and time.monotonic() < deadline:  # 3 returned + 6 in the buffer
    time.sleep(0.01)
  assert max(counter.built) == 8  # built ahead, and no further than the buffer
  state = it.get_state()
  fresh = iter(pipeline.batch_dataset(_CountingStep(), c))
  fresh.set_state(state)
  assert take(fresh, 2) == [3, 4]  # the first batch not yet returned, not the first not built


def test_on_demand_builds_nothing_ahead():
  c = digits_config(prefetch_threads=0)
  counter = _CountingStep()
  it = iter(pipeline.batch_dataset(counter, c))
  assert take(it, 3) == [0, 1, 2]
  time.sleep(0.2)
  assert counter.built == [0, 1, 2]


def test_orbax_resume_is_exact_with_a_full_prefetch_buffer(tmp_path):
  # The reference builds each batch on demand; the checkpointed iterator has 16 more batches
  # built (some past the epoch boundary at 45) when its state is saved at step 40.
  ref = take(sd.create_train_iterator(digits_config(prefetch_threads=0), global_batch_size=32,
                                      seed=5), 46)
  c = digits_config(prefetch_threads=2, prefetch_batches=16)
  it = sd.create_train_iterator(c, global_batch_size=32, seed=5)
  take(it, 40)
  time.sleep(0.5)  # let the threads fill the buffer
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(40, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  fresh = sd.create_train_iterator(c, global_batch_size=32, seed=5)
  restored = mngr.restore(40, args=ocp.args.Composite(
      data_iter=grain.checkpoint.CheckpointRestore(fresh)))["data_iter"]
  for want, got in zip(ref[40:], take(restored, 6)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  mngr.close()


@pytest.mark.parametrize("field", ["prefetch_threads", "prefetch_batches", "worker_count",
                                   "cache_mb"])
def test_negative_prefetch_settings_raise(field):
  with pytest.raises(ValueError, match=f"data.{field}.*-1"):
    sd.create_train_iterator(digits_config(**{field: -1}), global_batch_size=16, seed=0)


def test_cached_batches_are_the_stored_digits():
  from sklearn.datasets import load_digits

  ref = load_digits()
  c = digits_config(sampler="random")
  train_ids = sd.load_split(c, "train")["id"]
  source = pipeline.cached(registry.open_split(c, "train"), c)
  assert isinstance(source, sources.ArraySource)  # 1442 x 8 x 8 bytes fit in cache_mb
  for batch in take(sd.create_train_iterator(c, global_batch_size=16, seed=2), 3):
    want = np.round(ref.images[train_ids[batch["index"]]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(batch["image"][..., 0], want)
    np.testing.assert_array_equal(batch["label"], ref.target[train_ids[batch["index"]]])


def test_cache_gives_the_batches_of_per_record_reads():
  # Resize + gray -> RGB at cache time must equal doing it per batch.
  kw = dict(sampler="pairs", image_size=12, channels=3)
  on = take(sd.create_train_iterator(digits_config(**kw), global_batch_size=16, seed=4), 3)
  off = take(sd.create_train_iterator(digits_config(cache_mb=0, **kw), global_batch_size=16,
                                      seed=4), 3)
  for a, b in zip(on, off):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  small = digits_config(cache_mb=0)
  assert not isinstance(pipeline.cached(registry.open_split(small, "train"), small),
                        sources.ArraySource)


WORKER_SCRIPT = """
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

import sim_jax.data as sd


def main(data_dir, ckpt):
  flags.FLAGS.mark_as_parsed()  # grain workers need parsed absl flags (grain #1355)
  c = sd.default_config()
  c.update(name="digits", data_dir=data_dir, sampler="pairs", prefetch_threads=0)
  ref_it = sd.create_train_iterator(c, global_batch_size=32, seed=3)
  ref = [next(ref_it) for _ in range(48)]
  c.update(worker_count=1, worker_buffer_size=3, prefetch_threads=1)
  it = sd.create_train_iterator(c, global_batch_size=32, seed=3)
  got = [next(it) for _ in range(43)]
  mngr = ocp.CheckpointManager(ckpt)
  mngr.save(43, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  fresh = sd.create_train_iterator(c, global_batch_size=32, seed=3)
  restored = mngr.restore(43, args=ocp.args.Composite(
      data_iter=grain.checkpoint.CheckpointRestore(fresh)))["data_iter"]
  got += [next(restored) for _ in range(5)]  # crosses the epoch boundary at 45
  for i, (want, have) in enumerate(zip(ref, got)):
    for k in want:
      np.testing.assert_array_equal(want[k], have[k], err_msg=f"batch {i} key {k}")
  mngr.close()
  print("OK", len(got))


if __name__ == "__main__":  # grain spawns its workers: they re-import this file
  main(sys.argv[1], sys.argv[2])
"""


def test_one_worker_process_gives_the_same_batches_and_resumes(tmp_path):
  script = tmp_path / "worker_run.py"
  script.write_text(WORKER_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), _DATA_DIR, str(tmp_path / "ckpt")],
                        env=helpers.subprocess_env(), capture_output=True, text=True,
                        timeout=240, cwd=helpers.REPO_ROOT, start_new_session=True)
  assert proc.returncode == 0 and "OK 48" in proc.stdout, helpers.describe(proc)
