"""sim_jax.data.offline (seed 004): fixed augmented copies, the "trained" k-NN reference split,
cross-domain eval splits, and the zero-shot evaluator's leave-one-out k-NN F1."""

import collections

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score

import sim_jax.data as sd
from sim_jax.data import offline
from sim_jax.eval import evaluators

# One prepared copy of digits, shared with the pipeline tests (it is built once per session).
from tests.data_image_folder_test import config as image_folder_config
from tests.data_image_folder_test import make_classes
from tests.data_pipeline_test import digits_config


def rows(images):
  return [x.tobytes() for x in images]


def epoch_images(c, seed, n, batch=10):
  """n batches' images (the random sampler draws each epoch as a permutation)."""
  it = sd.create_train_iterator(c, global_batch_size=batch, seed=seed)
  return np.concatenate([next(it)["image"] for _ in range(n)])


def test_trained_split_is_n_per_class_of_train_and_ignores_the_training_seed():
  c = digits_config(samples_per_class=4)
  train = sd.load_split(c, "train")
  trained = sd.load_split(c, offline.TRAINED)
  assert collections.Counter(trained["label"].tolist()) == {k: 4 for k in range(10)}
  # Each row is a train row with the same label and id (the raw train split is the reference).
  by_id = {int(i): (x.tobytes(), int(y)) for x, y, i in
           zip(train["image"], train["label"], train["id"], strict=True)}
  for x, y, i in zip(trained["image"], trained["label"], trained["id"], strict=True):
    assert by_id[int(i)] == (x.tobytes(), int(y))
  # The train iterator draws exactly these rows, whatever the training seed.
  for seed in (0, 7):
    seen = set(rows(epoch_images(digits_config(samples_per_class=4, sampler="random"), seed, 2,
                                 batch=40)))
    assert seen == set(rows(trained["image"]))
  other = sd.load_split(digits_config(samples_per_class=4, subset_seed=1), offline.TRAINED)
  assert set(other["id"].tolist()) != set(trained["id"].tolist())


def test_offline_copies_are_fixed_and_hold_originals_plus_augmented():
  kw = dict(samples_per_class=3, augmentation_factor=3, sampler="random")
  c = digits_config(**kw)
  c.offline_augment.name = "randaugment"
  c.offline_augment.magnitude = 20
  originals = sd.load_split(digits_config(samples_per_class=3), offline.TRAINED)
  # 10 classes x 3 images x 3 = 90 rows = 3 batches of 30: one epoch of the random sampler.
  a = epoch_images(c, 0, 6, batch=30)
  b = epoch_images(c, 5, 6, batch=30)
  distinct = set(rows(a))
  assert distinct == set(rows(b)), "the copies must not depend on the training seed"
  assert set(rows(originals["image"])) <= distinct
  # Two augmented copies per image: most of them differ from every original (some ops of
  # RandAugment leave an 8x8 digit as it is).
  assert 30 + 40 <= len(distinct) <= 90
  # Without offline augmentation the factor only repeats the 30 originals.
  plain = set(rows(epoch_images(digits_config(**kw), 0, 3, batch=30)))
  assert plain == set(rows(originals["image"]))


def test_offline_augment_needs_a_factor():
  c = digits_config(samples_per_class=3, sampler="random")
  c.offline_augment.name = "trivialaugment"
  with pytest.raises(ValueError, match="augmentation_factor >= 2"):
    next(sd.create_train_iterator(c, global_batch_size=10, seed=0))


def test_cross_domain_split_reads_the_other_dataset_at_this_size():
  c = digits_config()
  c.image_size = 12
  got = sd.load_split(c, "digits:test")
  want = sd.load_split(digits_config(image_size=12), "test")
  np.testing.assert_array_equal(got["image"], want["image"])
  np.testing.assert_array_equal(got["label"], want["label"])
  assert got["image"].shape[1:] == (12, 12, 1)
  with pytest.raises(ValueError, match="'<dataset>:<split>'"):
    sd.load_split(c, "digits:")


def test_cross_domain_split_takes_this_datasets_channels_when_the_config_leaves_them(tmp_path):
  # An RGB image folder (channels None: its own 3) evaluating gray digits: the model takes RGB,
  # so the digits arrive with their gray channel repeated, at the folder's size.
  make_classes(tmp_path / "img")
  c = image_folder_config(tmp_path / "img", tmp_path / "tfds")
  assert c.channels is None
  got = sd.load_split(c, "digits:test")
  gray = sd.load_split(digits_config(image_size=8, data_dir=str(tmp_path / "tfds")), "test")
  assert got["image"].shape[1:] == (8, 8, 3)
  for k in range(3):
    np.testing.assert_array_equal(got["image"][..., k], gray["image"][..., 0])


def test_zeroshot_knn_f1_is_leave_one_out_within_unseen_classes():
  d = load_digits()
  e = d.data[:300].astype(np.float32)
  y = d.target[:300]
  seen = np.array([0, 1, 2])
  ev = evaluators.ZeroShotEvaluator("heldout", "train", (1,), "euclidean", 512, 512, knn_k=3)
  out = ev({"heldout": e}, {"heldout": y, "train": seen})
  keep = ~np.isin(y, seen)
  ek, yk = e[keep], y[keep]
  dist = ((ek[:, None] - ek[None]) ** 2).sum(-1)
  np.fill_diagonal(dist, np.inf)
  pred = []
  for row in dist:  # majority of the 3 nearest, ties to the nearest
    nn = yk[np.argsort(row, kind="stable")[:3]]
    counts = collections.Counter(nn.tolist())
    top = max(counts.values())
    pred.append(next(v for v in nn if counts[v] == top))
  assert out["zeroshot/knn_f1_macro"] == pytest.approx(f1_score(yk, pred, average="macro"))
  assert out["zeroshot/num_classes"] == 7
