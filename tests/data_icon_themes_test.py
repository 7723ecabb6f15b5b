"""`icon_themes`: checked against the installed packages' own file lists, librsvg's command-line
renderer and hashes computed here, never against the builder's own listing or hashes.

The build tests use a small subset of families at a small size (seconds); the full-scale claim
(>= 1,000 names drawn by >= 5 families) is checked on dpkg's file lists, without rendering.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import scipy.fft
from PIL import Image

from sim_jax.data import config as data_config_lib
from sim_jax.data import pipeline, registry
from sim_jax.data.builders import common, icon_themes
from tests.helpers import require_debian

# Debian package -> design family, as the issue and the docs define them (written out here, not
# read from the builder). numix-icon-theme-circle is Numix's own round variant.
PACKAGE_FAMILY = {
    "adwaita-icon-theme": "adwaita", "breeze-icon-theme": "breeze",
    "papirus-icon-theme": "papirus", "oxygen-icon-theme": "oxygen",
    "tango-icon-theme": "tango", "elementary-icon-theme": "elementary",
    "elementary-xfce-icon-theme": "elementary-xfce", "numix-icon-theme": "numix",
    "numix-icon-theme-circle": "numix", "faenza-icon-theme": "faenza",
    "gnome-icon-theme": "gnome", "mate-icon-theme": "mate", "moka-icon-theme": "moka",
    "paper-icon-theme": "paper", "suru-icon-theme": "suru", "deepin-icon-theme": "deepin",
    "lxde-icon-theme": "lxde", "gnome-icon-theme-nuovo": "nuovo", "faba-icon-theme": "faba",
    "obsidian-icon-theme": "obsidian", "gnome-icon-theme-gartoon": "gartoon",
    "gnome-icon-theme-yasis": "yasis", "sugar-icon-theme": "sugar",
}
DPKG_INFO = "/var/lib/dpkg/info"
ICON_EXTENSIONS = (".svg", ".svgz", ".png")
# The small build: six families (gnome and its fork mate, faba and its fork moka: the copies the
# deduplication must remove), tango drawing the queries.
SMALL = {"gnome-icon-theme": "gnome", "mate-icon-theme": "mate", "tango-icon-theme": "tango",
         "elementary-icon-theme": "elementary", "faba-icon-theme": "faba",
         "moka-icon-theme": "moka"}
SMALL_SIZE = 24
# The small build's `unlabelled` pool: names drawn by 2 families (its min_families is 3).
UNLABELLED_K = 2
# The documented near-duplicate rule (docs/data.md): pHash distance <= 6 of 64 bits, or a mean
# absolute difference <= 8 (of 255) between 32 px thumbnails at the best shift of <= 2 pixels.
PHASH_THRESHOLD = 6
MAD_THRESHOLD = 8.0


def package_files(package: str) -> list[str]:
  """Every path dpkg records for an installed package ([] when it is not installed)."""
  path = os.path.join(DPKG_INFO, f"{package}.list")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8", errors="replace") as f:
    return [line.rstrip("\n") for line in f]


def installed(package: str) -> bool:
  """dpkg lists the package *and* its icon files are on disk (a machine, or a test run, may hide
  /usr/share/icons while dpkg's database still lists the package)."""
  return any(os.path.isfile(p) for p in package_files(package)
             if p.startswith("/usr/share/icons/") and p.lower().endswith(ICON_EXTENSIONS))


def require_packages(packages, what: str):
  missing = [p for p in packages if not installed(p)]
  require_debian(missing or list(packages), not missing, what)


def small_config(data_dir: str, **overrides):
  c = data_config_lib.default_config()
  c.name = "icon_themes"
  c.data_dir = data_dir
  c.themes = ",".join(SMALL.values())
  c.query_families = "tango"
  c.image_size = SMALL_SIZE
  c.min_families = 3
  c.max_classes = 150
  c.heldout_class_fraction = 0.25
  c.validation_class_fraction = 0.15
  c.test_fraction = 0.2
  for k, v in overrides.items():
    c[k] = v
  return c


def read_all(builder) -> dict[str, list[dict]]:
  out = {}
  for split in builder.info.splits:
    src = builder.as_data_source(split)
    out[split] = [src[i] for i in range(len(src))]
  return out


def build(tmp_path_factory, **overrides):
  """(builder, {split: records}, data_dir) of the small build with `overrides`."""
  require_packages(list(SMALL), "the icon_themes build test")
  if icon_themes.svg_render.missing_libraries():
    require_debian(["librsvg2-2", "libcairo2"], False, "the icon_themes build test")
  data_dir = str(tmp_path_factory.mktemp("icon_themes"))
  builder = registry._builder(small_config(data_dir, **overrides))
  return builder, read_all(builder), data_dir


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
  return build(tmp_path_factory)


@pytest.fixture(scope="module")
def unlabelled_build(tmp_path_factory):
  return build(tmp_path_factory, unlabelled_min_families=UNLABELLED_K)


def file_families() -> dict[str, str]:
  """{real path of an icon file: the family whose package ships its bytes} (dpkg's lists)."""
  owner = {}
  for package in SMALL:
    for path in package_files(package):
      if os.path.isfile(path) and not os.path.islink(path):
        owner[os.path.realpath(path)] = SMALL[package]
  return owner


def family_of(record, owner: dict[str, str]) -> str:
  return owner[record["source"].decode().split(":", 1)[1]]


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def record_files(root: str) -> dict[str, bytes]:
  """{path relative to root: bytes} of a prepared dataset's ArrayRecord shards."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      if "array_record" in f:
        with open(os.path.join(d, f), "rb") as fh:
          out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
  return out


def test_1000_names_drawn_by_5_families():
  require_packages(list(PACKAGE_FAMILY), "the icon_themes scale test")
  families = collections.defaultdict(set)
  for package, family in PACKAGE_FAMILY.items():
    for path in package_files(package):
      stem, ext = os.path.splitext(os.path.basename(path))
      if (path.startswith("/usr/share/icons/") and ext.lower() in ICON_EXTENSIONS
          and not stem.endswith("-symbolic")):
        families[stem].add(family)
  assert len(set(PACKAGE_FAMILY.values())) == 22
  assert sum(len(f) >= 5 for f in families.values()) >= 1000
  # The builder's listing (what it renders) finds as many, each drawing one its family ships.
  table = icon_themes.list_icons(icon_themes.parse_families(""), 64)
  assert sum(len(by_family) >= 5 for by_family in table.values()) >= 1000
  for name, by_family in table.items():
    assert set(by_family) <= families[name], name


def test_listing_matches_dpkg_on_small_families():
  require_packages(list(SMALL), "the icon_themes listing test")
  expected = collections.defaultdict(set)
  for package, family in SMALL.items():
    for path in package_files(package):
      stem, ext = os.path.splitext(os.path.basename(path))
      if (ext.lower() in ICON_EXTENSIONS and not stem.endswith("-symbolic")
          and "/animations/" not in path):  # spinner strips are skipped by design
        expected[family].add(stem)
  table = icon_themes.list_icons(icon_themes.parse_families(",".join(SMALL.values())), 48)
  got = collections.defaultdict(set)
  for name, by_family in table.items():
    assert not name.endswith("-symbolic")
    for family, path in by_family.items():
      got[family].add(name)
      assert os.path.isfile(path) and not os.path.islink(path), path  # resolved
  for family in SMALL.values():
    assert got[family] <= expected[family], family
    # Only dangling links and names drawn in undeclared directories may be missing.
    assert len(got[family]) >= 0.98 * len(expected[family]), family


def sha(image) -> str:
  return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def phash_bits(image: np.ndarray) -> np.ndarray:
  """pHash as docs/data.md defines it, written with scipy's DCT: 64 booleans."""
  luma = Image.fromarray(np.asarray(image)).convert("L").resize((32, 32),
                                                                Image.Resampling.BILINEAR)
  low = scipy.fft.dctn(np.asarray(luma, np.float64), type=2, norm="ortho")[:8, :8].reshape(-1)
  return low > np.median(low)


def best_shift_difference(a: np.ndarray, b: np.ndarray, reach: int = 2) -> float:
  """min over shifts (dy, dx) in [-reach, reach]^2 of mean |a[y, x] - b[y - dy, x - dx]| over
  the pixels where both exist; a, b: box-filtered thumbnails."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  n = a.shape[0]
  out = []
  for dy in range(-reach, reach + 1):
    for dx in range(-reach, reach + 1):
      y0, y1, x0, x1 = max(0, dy), min(n, n + dy), max(0, dx), min(n, n + dx)
      out.append(np.abs(a[y0:y1, x0:x1] - b[y0 - dy:y1 - dy, x0 - dx:x1 - dx]).mean())
  return min(out)


def box_thumb(image) -> np.ndarray:
  side = min(32, np.asarray(image).shape[0])
  return np.asarray(Image.fromarray(np.asarray(image)).resize((side, side),
                                                              Image.Resampling.BOX))


def test_no_duplicate_picture_anywhere(small_build):
  _, records, _ = small_build
  every = [r for recs in records.values() for r in recs]
  digests = collections.Counter(sha(r["image"]) for r in every)
  assert len(every) > 200
  assert max(digests.values()) == 1  # no picture twice: not in a positive pair, not across splits
  by_class = collections.defaultdict(list)
  for r in every:
    by_class[r["class_name"]].append((phash_bits(r["image"]), box_thumb(r["image"])))
  for name, items in by_class.items():
    for i in range(len(items)):
      for j in range(i + 1, len(items)):
        assert np.sum(items[i][0] != items[j][0]) > PHASH_THRESHOLD, name
        assert best_shift_difference(items[i][1], items[j][1]) > MAD_THRESHOLD, name


def test_splits_are_class_and_family_disjoint(small_build):
  _, records, _ = small_build
  assert {"train", "test", "query", "validation", "validation_query", "heldout",
          "heldout_query"} == set(records)
  owner = file_families()

  def families(split):
    return {family_of(r, owner) for r in records[split]}

  def classes(*splits):
    return {r["class_name"] for s in splits for r in records[s]}

  for split in records:
    assert families(split) == {"tango"} if "query" in split else "tango" not in families(split)
  train = classes("train", "test", "query")
  val = classes("validation", "validation_query")
  held = classes("heldout", "heldout_query")
  assert not (train & val or train & held or val & held)
  # Every query has a gallery drawing of its class in the matching gallery split.
  assert classes("heldout_query") <= classes("heldout")
  assert classes("query") <= classes("train", "test")
  # One drawing per (class, family); at least min_families of them.
  per = collections.Counter(r["class_name"] for recs in records.values() for r in recs)
  pairs = collections.Counter((r["class_name"], r["source"].decode().split(":")[0])
                              for recs in records.values() for r in recs)
  assert max(pairs.values()) == 1 and min(per.values()) >= 3


def test_pixels_match_rsvg_convert(small_build, tmp_path):
  if not shutil.which("rsvg-convert"):
    require_debian("librsvg2-bin", False, "the icon_themes pixel test")
  _, records, _ = small_build
  svgs = [r for r in records["train"] if r["source"].decode().endswith(".svg")][:6]
  assert svgs
  for i, r in enumerate(svgs):
    path = r["source"].decode().split(":", 1)[1]
    out = tmp_path / f"{i}.png"
    subprocess.run(["rsvg-convert", "-w", str(SMALL_SIZE), "-h", str(SMALL_SIZE), "-b", "white",
                    "-o", str(out), path], check=True)
    ref = np.asarray(Image.open(out).convert("RGB"), np.int32)
    assert np.abs(ref - np.asarray(r["image"], np.int32)).max() <= 2, path


def test_rebuild_gives_the_same_bytes(small_build, tmp_path):
  builder, _, data_dir = small_build
  again = common.prepared_builder(
      icon_themes.IconThemes, dict(builder.builder_config.options), str(tmp_path))
  first, second = record_files(builder.data_dir), record_files(again.data_dir)
  assert first and first == second
  assert again.info.metadata["icon_themes"] == builder.info.metadata["icon_themes"]


@pytest.mark.parametrize("overrides, match", [
    ({"themes": "gnome,notatheme"}, "notatheme"),
    ({"themes": "gnome"}, "2 families"),
    ({"min_families": 9}, "min_families"),
    ({"query_families": "gnome,mate,tango,elementary,faba,moka"}, "gallery"),
    ({"query_families": "papirus"}, "papirus"),
    ({"validation_class_fraction": 0.5, "heldout_class_fraction": 0.5}, "< 1"),
    ({"test_fraction": 1.0}, "test_fraction"),
    # The pool's names must be drawn by fewer families than the classes' (min_families=3).
    ({"unlabelled_min_families": 3}, "unlabelled_min_families.*got 3"),
    ({"unlabelled_min_families": -1}, "unlabelled_min_families.*got -1"),
])
def test_bad_options_name_the_value(tmp_path, overrides, match):
  require_packages(list(SMALL), "the icon_themes option test")
  with pytest.raises(ValueError, match=match):
    registry._builder(small_config(str(tmp_path), **overrides))


def test_missing_themes_name_the_packages(tmp_path):
  families = icon_themes.parse_families("gnome,papirus")
  reason = icon_themes.missing_reason(families, root=str(tmp_path))
  assert "apt-get install" in reason and "gnome-icon-theme" in reason
  assert "papirus-icon-theme" in reason
  c = small_config(str(tmp_path), themes="gnome,nosuch")
  assert "nosuch" in icon_themes.unavailable_reason(c)


def test_unlabelled_pool_leaves_the_other_splits_unchanged(small_build, unlabelled_build):
  base, base_records, _ = small_build
  pool, pool_records, _ = unlabelled_build
  assert set(pool_records) == set(base_records) | {"unlabelled"}

  def rows(records):
    return [(r["id"], r["label"], r["class_name"], r["source"], sha(r["image"]))
            for r in records]

  for split, records in base_records.items():
    assert rows(pool_records[split]) == rows(records), split
  # The stored shards too, byte for byte.
  base_files = record_files(base.data_dir)
  assert base_files and base_files == {k: v for k, v in record_files(pool.data_dir).items()
                                       if "unlabelled" not in k}
  # The class names keep their labels; the pool's sorted names follow.
  names = list(base.info.metadata["class_names"])
  pool_names = sorted({text(r["class_name"]) for r in pool_records["unlabelled"]})
  assert list(pool.info.metadata["class_names"]) == names + pool_names
  # Without the option the options (the prepared dataset's name) are what they were.
  assert "unlabelled_min_families" not in base.builder_config.options
  assert pool.builder_config.options["unlabelled_min_families"] == UNLABELLED_K


def test_unlabelled_pool_holds_only_names_below_min_families(unlabelled_build):
  builder, records, _ = unlabelled_build
  owner = file_families()
  pool = records["unlabelled"]
  others = [r for split, recs in records.items() if split != "unlabelled" for r in recs]
  families = collections.defaultdict(list)
  for r in pool:
    families[text(r["class_name"])].append(family_of(r, owner))
  assert len(families) > 50
  # k <= families < min_families (3), one drawing per (name, family), every family (the query
  # family's drawings too: no label or family is evaluated on these names).
  assert all(UNLABELLED_K <= len(set(f)) == len(f) < 3 for f in families.values())
  assert {f for fs in families.values() for f in fs} == set(SMALL.values())
  assert not set(families) & {text(r["class_name"]) for r in others}
  assert not {sha(r["image"]) for r in pool} & {sha(r["image"]) for r in others}
  assert len({sha(r["image"]) for r in pool}) == len(pool)
  # Labels after the classes' (counted here from the other splits), in sorted name order; ids
  # after theirs.
  num_classes = len({text(r["class_name"]) for r in others})
  expected = {n: num_classes + i for i, n in enumerate(sorted(families))}
  assert all(r["label"] == expected[text(r["class_name"])] for r in pool)
  assert min(r["id"] for r in pool) == max(r["id"] for r in others) + 1
  assert sorted(r["id"] for r in pool + others) == list(range(len(pool) + len(others)))
  meta = builder.info.metadata["icon_themes"]
  assert meta["unlabelled"]["names"] == len(families)
  assert meta["split_sizes"]["unlabelled"] == meta["unlabelled"]["drawings"] == len(pool)


def test_unlabelled_pool_loads_joined_with_the_train_splits(unlabelled_build):
  _, records, data_dir = unlabelled_build
  c = small_config(data_dir, unlabelled_min_families=UNLABELLED_K)
  joined = ("train", "test", "query", "unlabelled")
  out = pipeline.load_split(c, "+".join(joined))
  expected = [r for split in joined for r in records[split]]
  assert sorted(out["id"].tolist()) == sorted(r["id"] for r in expected)
  assert out["image"].shape == (len(expected), SMALL_SIZE, SMALL_SIZE, 3)
  info = pipeline.get_info(c)
  assert info.splits["unlabelled"] == len(records["unlabelled"])
  # The label space counts the pool's names (metadata class_names): every label fits in it.
  assert info.num_classes == len(info.class_names) == int(out["label"].max()) + 1
