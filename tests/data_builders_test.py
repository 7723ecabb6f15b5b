"""Tests of sim_jax's offline TFDS builders and the generic TFDS path (no network)."""

import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import sim_jax.data as sd
from sim_jax.data import registry
from sim_jax.data.builders import common, han, icons, render
from tests import helpers
from tests.helpers import require_debian


def _records(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def _files(builder):
  return {os.path.basename(p): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(builder.data_dir, "*.array_record*")))}


SYMBOL_OPTIONS = dict(image_size=16, fonts=render.matplotlib_fonts()[:8], charset="arrows",
                      renders_per_font=2, max_classes=12, heldout_class_fraction=0.25,
                      test_fraction=0.25)


ICON_PACKAGES = [s.package for s in icons.ICON_SETS]


def _require_icon_fonts():
  """Skip (naming the packages) unless every icon font and its CSS is installed."""
  try:
    found = len(icons.find_icon_sets(""))
  except ValueError:
    found = 0
  require_debian(ICON_PACKAGES, found == len(icons.ICON_SETS), "glyph_icons")


def _icon_options():
  _require_icon_fonts()
  return dict(image_size=16, icon_sets=icons.icon_options(""), charset="default",
              renders_per_font=2, max_classes=12, heldout_class_fraction=0.25,
              test_fraction=0.25)


_BUILD_DIGITS = r"""
import sys
from sim_jax.data import registry
from sim_jax.data.builders import common
common.prepared_builder(registry.OWN["digits"][0], dict(heldout_class_fraction=0.2,
                        test_fraction=0.2), sys.argv[1])
"""


def test_rebuild_in_another_process_writes_the_same_bytes(tmp_path):
  # The records' feature maps used to be serialised in the order of the process's string
  # hashing: two processes with different hash seeds wrote different bytes for the same data.
  files = []
  for seed in ("1", "2"):
    out = tmp_path / seed
    env = dict(os.environ, PYTHONHASHSEED=seed, SIM_JAX_DATA_DIR=str(out))
    subprocess.run([sys.executable, "-c", _BUILD_DIGITS, str(out)], env=env, check=True,
                   cwd=helpers.REPO_ROOT, capture_output=True, timeout=300)
    paths = sorted(glob.glob(str(out / "**" / "*.array_record*"), recursive=True))
    files.append({os.path.basename(p): open(p, "rb").read() for p in paths})
  assert files[0] and files[0] == files[1]


@pytest.mark.parametrize("cls,options", [
    ("digits", lambda: dict(heldout_class_fraction=0.2, test_fraction=0.2)),
    ("glyph_symbols", lambda: SYMBOL_OPTIONS),
    ("glyph_icons", _icon_options),
])
def test_builder_is_reproducible_and_splits_are_disjoint(tmp_path, cls, options):
  options = options()  # built inside the test: a missing package skips, never breaks collection
  builder_cls = registry.OWN[cls][0]
  a = common.prepared_builder(builder_cls, options, str(tmp_path / "a"))
  b = common.prepared_builder(builder_cls, options, str(tmp_path / "b"))
  files_a, files_b = _files(a), _files(b)
  assert files_a and files_a == files_b  # identical bytes when rebuilt
  classes = {}
  ids = set()
  for split in ("train", "test", "heldout"):
    recs = _records(a, split)
    assert recs
    classes[split] = {int(r["label"]) for r in recs}
    split_ids = {int(r["id"]) for r in recs}
    assert not split_ids & ids  # no example in two splits
    ids |= split_ids
  n = len(a.info.metadata["class_names"])
  assert classes["train"] == classes["test"]
  assert not classes["heldout"] & classes["train"]
  assert len(classes["heldout"]) == round(0.2 * n if cls == "digits" else 0.25 * n)
  assert classes["train"] | classes["heldout"] == set(range(n))


def test_glyph_symbols_records_are_renderings_of_their_code_point(tmp_path):
  b = common.prepared_builder(registry.OWN["glyph_symbols"][0], SYMBOL_OPTIONS, str(tmp_path))
  names = b.info.metadata["class_names"]
  assert len(names) == 12 and all(0x2190 <= int(n[2:], 16) <= 0x21FF for n in names)
  for r in _records(b, "train")[:40]:
    assert r["image"].shape == (16, 16, 1) and r["image"].max() > 0
    font = r["source"].decode() if isinstance(r["source"], bytes) else r["source"]
    cp = int(names[int(r["label"])][2:], 16)
    assert cp in render.font_codepoints(font)


@pytest.mark.parametrize("name,concept", [
    ("star", "star"), ("star-o", "star"), ("star_border", "star"), ("star-outline", "star"),
    ("arrow-circle-o-down", "arrow-circle-down"), ("heart_outlined", "heart"),
    ("trash-alt", "trash"), ("o", "o"), ("outline", "outline"), ("500px", "500px"),
])
def test_icon_concept_names(name, concept):
  assert icons.concept_name(name) == concept


# Code points as printed in each package's CSS for the star icons (read by hand).
STAR_DESIGNS = {("fontawesome-webfont.ttf", 0xF005), ("fontawesome-webfont.ttf", 0xF006),
                ("elusiveicons-webfont.ttf", 0xF1FE), ("MaterialIcons-Regular.ttf", 0xE838),
                ("MaterialIcons-Regular.ttf", 0xE83A), ("MaterialIcons-Regular.ttf", 0xF06F),
                ("materialdesignicons-webfont.ttf", 0xF4CE),
                ("materialdesignicons-webfont.ttf", 0xF4D2)}


def test_icon_concepts_match_designs_across_sets():
  _require_icon_fonts()
  concepts = icons.icon_concepts(icons.find_icon_sets(""))
  star = {(os.path.basename(f), cp) for f, cp in concepts["star"]}
  assert STAR_DESIGNS <= star
  assert not any("forkawesome" in f for f, _ in star)  # Fork Awesome's star is Font Awesome's
  # fa-car and its alias fa-automobile are one glyph: it belongs to exactly one concept.
  owners = [k for k, v in concepts.items()
            if any(f.endswith("fontawesome-webfont.ttf") and cp == 0xF1B9 for f, cp in v)]
  assert owners == ["car"]
  glyphs = [g for v in concepts.values() for g in v]
  assert len(glyphs) == len(set(glyphs))  # no glyph in two classes


def test_icon_css_parser_on_a_hand_written_rule():
  css = ('.fa-automobile:before,\n.fa-car:before {\n  content: "\\f1b9";\n}\n'
         '.fa-star:before { content: "\\f005"; }\n.fa-car:before { content: "\\f000"; }')
  assert icons.parse_css(css, r"\.fa-([a-z0-9-]+):before") == {
      "automobile": 0xF1B9, "car": 0xF1B9, "star": 0xF005}


def test_glyph_icons_records_are_designs_of_their_concept(tmp_path):
  opts = dict(_icon_options(), charset="star,heart,home", max_classes=None, renders_per_font=1,
              heldout_class_fraction=0.0, test_fraction=0.0)
  b = common.prepared_builder(registry.OWN["glyph_icons"][0], opts, str(tmp_path))
  names = b.info.metadata["class_names"]
  assert names == ["heart", "home", "star"]
  concepts = icons.icon_concepts(icons.find_icon_sets(""))
  recs = _records(b, "train")
  stars = [r for r in recs if names[int(r["label"])] == "star"]
  assert len(stars) == len(concepts["star"]) >= len(STAR_DESIGNS)
  for r in recs:  # renders_per_font=1: every record is a clean rendering of one design
    font = r["source"].decode() if isinstance(r["source"], bytes) else r["source"]
    cps = [cp for f, cp in concepts[names[int(r["label"])]] if f == font]
    assert any(np.array_equal(r["image"][..., 0], render.render(font, chr(cp), 16))
               for cp in cps)


def test_glyph_icons_missing_fonts_name_the_packages(tmp_path):
  c = sd.default_config()
  c.update(name="glyph_icons", data_dir=str(tmp_path), fonts=str(tmp_path))
  with pytest.raises(ValueError, match="fonts-font-awesome.*fonts-materialdesignicons-webfont"):
    sd.get_info(c)
  c.update(fonts="/no/such/icon/dir")
  with pytest.raises(ValueError, match="/no/such/icon/dir"):
    sd.get_info(c)
  _require_icon_fonts()
  c.update(fonts="", charset="no-such-icon-xyz")
  with pytest.raises(ValueError, match="no-such-icon-xyz"):
    sd.get_info(c)


def test_pipeline_reads_glyph_symbols_through_tfds(tmp_path):
  c = sd.default_config()
  c.update(name="glyph_symbols", data_dir=str(tmp_path), image_size=16, charset="arrows",
           max_classes=10, fonts=",".join(SYMBOL_OPTIONS["fonts"]), sampler="pk")
  info = sd.get_info(c)
  assert info.image_shape == (16, 16, 1) and info.num_classes == 10
  # Label i's name is its code point, from the Arrows block (U+2190-U+21FF).
  assert len(info.class_names) == 10
  assert all(re.fullmatch(r"U\+21[9A-F][0-9A-F]", n) for n in info.class_names), info.class_names
  batch = next(sd.create_train_iterator(c, global_batch_size=8, seed=0))
  assert batch["image"].shape == (8, 16, 16, 1) and len(set(batch["label"].tolist())) == 2
  test = sd.load_split(c, "test")
  assert len(test["label"]) == info.splits["test"]


def test_missing_font_and_empty_charset_raise(tmp_path):
  c = sd.default_config()
  c.update(name="glyph_symbols", data_dir=str(tmp_path), fonts="/no/such/font.ttf")
  with pytest.raises(ValueError, match="/no/such/font.ttf"):
    sd.get_info(c)
  c.update(fonts="", charset=" , ")
  with pytest.raises(ValueError, match="charset"):
    sd.get_info(c)


def test_unknown_name_lists_valid_ones(tmp_path):
  c = sd.default_config()
  c.update(name="no_such_dataset_xyz", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="glyph_symbols"):
    sd.get_info(c)


class SimJaxTinyExternal(tfds.core.GeneratorBasedBuilder):
  """A stand-in for a user's TFDS dataset (mnist-like features: image + ClassLabel label)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(6, 6, 3)),
        "label": tfds.features.ClassLabel(names=["cat", "dog", "fox"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "label": i % 3}


def test_any_tfds_name_goes_through_the_same_path(tmp_path):
  builder = SimJaxTinyExternal(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  ref = _records(builder, "train")
  c = sd.default_config()
  c.update(name="sim_jax_tiny_external", data_dir=str(tmp_path), sampler="random", channels=1)
  info = sd.get_info(c)
  assert info.image_shape == (6, 6, 1) and info.num_classes == 3
  assert info.class_names == ("cat", "dog", "fox")  # a TFDS ClassLabel's names
  assert info.splits == {"train": 30, "test": 9}
  batch = next(sd.create_train_iterator(c, global_batch_size=10, seed=0))
  for img, lab, i in zip(batch["image"], batch["label"], batch["index"]):
    assert lab == ref[i]["label"]
    luma = np.round(ref[i]["image"].astype(np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(img[..., 0], luma, atol=1)


HAN_FONTS = ["/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
             "/usr/share/fonts/truetype/arphic/uming.ttc",
             "/usr/share/fonts/truetype/arphic/ukai.ttc"]


def _require_han_fonts():
  require_debian(["fonts-noto-cjk", "fonts-arphic-uming", "fonts-arphic-ukai"],
                 all(os.path.exists(f) for f in HAN_FONTS), "glyph_han")


def _han_config(tmp_path, **kw):
  c = sd.default_config()
  c.update(name="glyph_han", data_dir=str(tmp_path), fonts=",".join(HAN_FONTS), image_size=16,
           charset="U+4E00-U+4E3F", max_classes=8, renders_per_font=2,
           heldout_class_fraction=0.25, test_fraction=0.25)
  c.update(kw)
  return c


def _text(x):
  return x.decode() if isinstance(x, bytes) else x


def test_glyph_han_query_fonts_never_in_the_database(tmp_path):
  _require_han_fonts()
  c = _han_config(tmp_path / "a")
  a = registry._builder(c)
  assert a.builder_config.options["query_fonts"] == [os.path.realpath(HAN_FONTS[2])]  # kai
  b = common.prepared_builder(han.GlyphHan, a.builder_config.options, str(tmp_path / "b"))
  assert _files(a) and _files(a) == _files(b)  # identical bytes when rebuilt
  recs = {s: _records(a, s) for s in ("train", "test", "query", "heldout")}
  fonts = {s: {_text(r["source"]) for r in v} for s, v in recs.items()}
  classes = {s: {int(r["label"]) for r in v} for s, v in recs.items()}
  kai = os.path.realpath(HAN_FONTS[2])
  assert fonts["query"] == {kai} and kai not in fonts["train"] | fonts["test"]
  assert len(fonts["train"]) == 2 and len(fonts["heldout"]) == 3
  assert len(classes["heldout"]) == 2 and not classes["heldout"] & classes["train"]
  assert classes["query"] == classes["train"] == classes["test"] and len(classes["train"]) == 6
  # 6 classes x 1 query font x 2 renderings; 6 x 2 database fonts x 2 = 24 split 25% by class.
  assert len(recs["query"]) == 12 and len(recs["train"]) + len(recs["test"]) == 24
  assert len(recs["test"]) == 6  # floor(0.25 * 4) = 1 per class
  ids = [int(r["id"]) for v in recs.values() for r in v]
  assert len(ids) == len(set(ids)) == 8 * 3 * 2


def test_glyph_han_records_render_their_character(tmp_path):
  _require_han_fonts()
  c = _han_config(tmp_path, heldout_class_fraction=0.0, test_fraction=0.0)
  b = registry._builder(c)
  names = b.info.metadata["class_names"]
  assert len(names) == 8 and all(0x4E00 <= int(n[2:], 16) <= 0x4E3F for n in names)
  recs = _records(b, "train") + _records(b, "query")
  assert len(recs) == 8 * 3 * 2
  for r in recs:
    font, ch = _text(r["source"]), chr(int(names[int(r["label"])][2:], 16))
    clean = render.render(font, ch, 16)
    if int(r["id"]) % 2 == 0:  # the first rendering of each (character, font) is clean
      np.testing.assert_array_equal(r["image"][..., 0], clean)
    else:  # styled: another stroke / pose, on a noisy background (almost no pixel stays 0)
      assert not np.array_equal(r["image"][..., 0], clean)
      assert (r["image"] > 0).mean() > max(0.5, (clean > 0).mean())


def test_noisy_background_keeps_ink_bright():
  ink = np.zeros((12, 12), np.uint8)
  ink[4:8, 4:8] = 255
  for seed in range(5):
    out = han.noisy_background(np.random.default_rng(seed), ink)
    assert out.dtype == np.uint8 and out.shape == ink.shape
    assert out[4:8, 4:8].min() >= int(0.75 * 255)  # ink * c, c >= 0.75, above the paper
    np.testing.assert_array_equal(out, han.noisy_background(np.random.default_rng(seed), ink))


def test_glyph_han_bad_fonts_and_query_fonts(tmp_path):
  with pytest.raises(ValueError, match="fonts-hanazono.*fonts-noto-cjk"):
    sd.get_info(_han_config(tmp_path, fonts=str(tmp_path)))  # a directory without fonts
  _require_han_fonts()
  with pytest.raises(ValueError, match="nosuch.ttf"):
    sd.get_info(_han_config(tmp_path, query_fonts="nosuch.ttf"))
  with pytest.raises(ValueError, match="at least one"):
    sd.get_info(_han_config(tmp_path, query_fonts=",".join(HAN_FONTS)))
  opts = registry._builder(_han_config(tmp_path, query_fonts="uming.ttc")).builder_config.options
  assert opts["query_fonts"] == [os.path.realpath(HAN_FONTS[1])]
