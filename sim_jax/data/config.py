"""Default config of `sim_jax.data` (the `config.data` section). Imports nothing heavy."""

import ml_collections
from ml_collections import config_dict


def augment_config() -> ml_collections.ConfigDict:
  """Config of `sim_jax.data.augment.make_augment_fn` (the `config.data.augment` section)."""
  c = ml_collections.ConfigDict()
  c.name = "none"  # none | simclr | randaugment | trivialaugment | glyph | autoaugment
  c.strength = 1.0  # scales every magnitude (0 = identity, 1 = the paper's default strength)
  c.num_ops = 2  # RandAugment: operations applied per image
  c.magnitude = 9  # RandAugment: magnitude on the 0..30 scale of Cubuk et al. 2020
  c.min_scale = 0.2  # SimCLR random resized crop: smallest area fraction kept
  return c


def default_config() -> ml_collections.ConfigDict:
  """Every field `sim_jax.data` reads; the lead's configs override values, never add keys."""
  c = ml_collections.ConfigDict()
  c.name = "glyph_symbols"  # a sim_jax builder (see sim_jax.data.DATASETS) or any TFDS name
  c.data_dir = config_dict.placeholder(str)  # TFDS dir; None: $SIM_JAX_DATA_DIR or ~/.cache/...
  c.image_size = config_dict.placeholder(int)  # square side in pixels; None: the source's size
  c.channels = config_dict.placeholder(int)  # 1 or 3 to convert; None: the source's channels
  c.train_split = "train"  # split the train iterator reads
  c.eval_splits = ("test",)  # splits evaluation reads with load_split
  c.sampler = "pk"  # pk | random | views | pairs | triplets | pools
  c.examples_per_class = 4  # pk: K examples per class; P = batch // K classes per batch
  c.pos_fraction = 0.5  # pairs: fraction of POS (same-class) pairs in each batch
  c.num_foils = 19  # pools: foils per candidate pool (seed 003: 1 true match + 19 foils)
  c.samples_per_class = config_dict.placeholder(int)  # keep N examples per class (seed 004 4.4)
  c.subset_seed = 0  # which samples_per_class rows are kept (data, not training: same per seed)
  c.augmentation_factor = 1  # repeat the train set this many times per epoch (seed 004 4.5)
  c.worker_count = 0  # grain worker processes (0: load in the main process)
  c.worker_buffer_size = 2  # batches each grain worker prepares ahead
  c.cache_mb = 2048  # decode + format the train split into memory when it fits (0: never)
  c.prefetch_threads = 1  # threads building batches ahead of the train step (0: on demand)
  c.prefetch_batches = 4  # batches those threads keep ready (state stays exact: see pipeline.py)
  # Builder options (sim_jax's own datasets); they select the prepared TFDS builder config.
  c.fonts = ""  # glyph_*: comma-separated font files or directories; "" = auto-discover
  c.renders_per_font = 2  # glyph_*: renderings per (class, font): 1 clean + the rest jittered
  c.charset = "default"  # glyph_*: named set or explicit characters / icon names (comma-separated)
  c.heldout_class_fraction = 0.0  # classes held out of train/test for zero-shot ("heldout" split)
  c.test_fraction = 0.2  # examples of each train class placed in the "test" split
  c.max_classes = config_dict.placeholder(int)  # class cap; None: glyph_icons 200, han 1000, all
  c.query_fonts = ""  # glyph_han: fonts whose renderings form the "query" split ("" = auto)
  c.themes = ""  # icon_themes: comma-separated design families ("" = all; see icon_themes.FAMILIES)
  c.query_families = ""  # icon_themes: families drawing the *query splits ("" = oxygen,paper; none)
  c.min_families = config_dict.placeholder(int)  # icon_themes: families per class; None: 5
  # icon_themes: k > 0 adds the "unlabelled" split, every drawing of the names drawn by k to
  # min_families - 1 families (SimCLR's larger pool). Its names get labels after the classes,
  # so num_classes (the metadata's class_names) grows by them: fine for label-free losses only.
  c.unlabelled_min_families = 0
  c.validation_size = 0  # fashion_mnist: the last N train rows form "validation" (seed 002: 12000)
  c.validation_class_fraction = 0.0  # icon_themes: classes in "validation" (disjoint from train)
  c.path = config_dict.placeholder(str)  # image_folder: root directory
  c.layout = "classes"  # image_folder: classes (dir per class) | pairs (left/ and right/)
  c.skip_bad_images = False  # image_folder: skip unreadable images instead of raising
  c.max_bad_images = 10  # image_folder: with skipping, fail when more images than this are bad
  c.augment = augment_config()  # on-device augmentation, applied by the trainer
  # Fixed augmented copies (seed 004 4.5): augmentation_factor - 1 copies of each train image,
  # made once from subset_seed ("none": augmentation_factor only repeats; sim_jax.data.offline).
  c.offline_augment = augment_config()
  return c
