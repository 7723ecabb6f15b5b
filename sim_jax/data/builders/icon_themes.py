"""`icon_themes` (seeds 000 and 003): freedesktop icon themes drawn by different designers.

The freedesktop icon naming lets every desktop theme draw the same names (`folder-music`,
`document-save`, `audio-volume-high`, application names) in its own design language. So
  class   = an icon name (names ending in `-symbolic`, the monochrome UI glyphs, are left out);
  example = that name drawn by one design FAMILY,
and a positive pair is two designers' drawings of one object (seed 000), a candidate pool 1 true
drawing + 19 foils (seed 003).

Design families (`FAMILIES`, in priority order). A family is the set of themes that one Debian
package installs (its dark / light / colour / shape variants: Papirus, Papirus-Dark,
Papirus-Light, ePapirus, ePapirus-Dark are one family), plus Numix-Circle (package
`numix-icon-theme-circle`, whose index.theme inherits Numix: Numix's own round variant) in `numix`.
Derived designs that Debian packages separately stay separate families (`mate` from `gnome`, `moka`
from `faba`, `obsidian` from `faenza`, `elementary-xfce` from `elementary`): the drawings they copy
unchanged are removed by the deduplication below, the ones they redraw are kept.

One drawing per (family, name): the family's themes are searched in their listed order, and in a
theme the directory (from its index.theme: Size, Scale, Context) whose design size is the
smallest >= image_size wins (else the largest), vector before raster, then the larger Scale, then
the directory name. Animations (spinner strips) are skipped. Symlinks are resolved, so an alias
and its target are one file (rendered once); links leaving the icon tree (/etc/alternatives'
distribution logo as `start-here`) differ between machines and are skipped.

Deduplication (`sim_jax.data.builders.dedup`), in this order (counts in the metadata
`icon_themes.dedup`):
1. Exact: a picture (the SHA-256 of the rendered RGB bytes) is kept once in the whole dataset,
   in the class with the most families (ties: the name), for the family listed first (originals
   are listed before their derivatives). This removes a theme's aliases of its own drawings
   (`gtk-save` -> `document-save`) and the drawings one family copies from another unchanged.
2. Near-identical, within a class: families in priority order; a drawing is dropped when, for a
   drawing already kept for the class, either
   - the Hamming distance of their perceptual hashes is <= `PHASH_THRESHOLD` (of 64 bits).
     pHash (Zauner 2010, as `imagehash.phash`): luma (PIL "L") resized to 32 x 32 (PIL
     bilinear), orthonormal 2-D DCT-II, the 8 x 8 lowest frequencies, bit = coefficient > their
     median. It catches recolours; or
   - their shift-tolerant thumbnail difference is <= `MAD_THRESHOLD`: both box-filtered to
     min(32, S) pixels a side, the mean |a - b| over RGB (0..255) of the overlap, minimised over
     shifts of up to `MAX_SHIFT` pixels in x and y. It catches re-exports and one-pixel moves.
   Near-identical drawings of *different* classes (`folder-music` vs `folder-pictures` of one
   family) are kept: they are the hard negatives seed 000 is about.
Blank drawings and files librsvg / PIL cannot read are dropped (counted too). A class is kept when
>= `min_families` families still draw it.

Splits (classes are disjoint across the three class splits; query families never appear in any
non-query split):
- Classes (sorted names, permuted with a fixed seed): `round(heldout_class_fraction * C)` are
  held out, `round(validation_class_fraction * C)` are validation, the rest train.
- Families: the query families (`query_families`) draw the queries; all others the gallery.
- `train` / `test`: train classes x gallery families (`test_fraction` of each class's drawings,
  at least 1, go to `test`); `query`: train classes x query families.
- `validation` / `validation_query`; `heldout` / `heldout_query`: the same for those classes.
So `query` vs gallery `train` (as glyph_han) or `heldout_query` vs gallery `heldout` (unseen
classes and an unseen design language) is a family-disjoint retrieval.
- `unlabelled` (only when `unlabelled_min_families` = k > 0): a larger pool for self-supervised
  pretraining (seed 000's SimCLR), every deduplicated drawing (all families, query families
  included) of the names drawn by >= k but < `min_families` families after deduplication. Its
  names are listed by k..min_families-1 families, or are candidate classes that deduplication
  left with fewer than `min_families` (with `max_classes`, only the sampled candidates: the
  others may still be drawn by >= `min_families`; the listed names are not capped). Guarantees:
  - none of its names is in another split (those need >= `min_families` families), and the
    other splits are byte-identical to the build without it (same classes, labels, ids, pixels):
    its drawings join the exact deduplication, whose owner is the class with the most families
    counted before it (readable drawings); a name listed by < `min_families` families has fewer
    than any kept class, so it can lose a picture to a kept class but never take one from it
    (no tie to break by name);
  - the exact deduplication is dataset-wide, so no picture (exact bytes) is both in it and in
    another split. Near-identical drawings of different names are kept, as between train and
    heldout classes;
  - its labels follow the kept classes' (C, C+1, ... for its sorted names) and its names are
    appended to the metadata `class_names`, so the label space (num_classes) grows by its
    names: harmless to SimCLR, which ignores labels; a class-proxy loss would size its head
    for them. Metadata `icon_themes.unlabelled` counts its names and drawings.

Missing themes raise a ValueError naming the Debian packages (`unavailable_reason` says so cheaply).
"""

from __future__ import annotations

import collections
import configparser
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess

import numpy as np
import PIL

from sim_jax.data.builders import common, dedup, svg_render


@dataclasses.dataclass(frozen=True)
class Family:
  """One design family: its Debian package(s) and its themes (directories), in priority order."""

  name: str
  packages: tuple[str, ...]
  themes: tuple[str, ...]
  # Themes whose absence means a package is missing (default: the first theme).
  required: tuple[str, ...] = ()

  def required_themes(self) -> tuple[str, ...]:
    return self.required or self.themes[:1]


# Originals before their known derivatives (exact duplicates are kept for the earlier family).
FAMILIES = (
    Family("gnome", ("gnome-icon-theme",), ("gnome",)),
    Family("adwaita", ("adwaita-icon-theme",), ("Adwaita",)),
    Family("tango", ("tango-icon-theme",), ("Tango",)),
    Family("oxygen", ("oxygen-icon-theme",), ("oxygen",)),
    Family("breeze", ("breeze-icon-theme",), ("breeze", "breeze-dark")),
    Family("elementary", ("elementary-icon-theme",), ("elementary",)),
    Family("faenza", ("faenza-icon-theme",),
           ("Faenza", "Faenza-Dark", "Faenza-Darkest", "Faenza-Darker", "Faenza-Ambiance",
            "Faenza-Radiance")),
    Family("faba", ("faba-icon-theme",), ("Faba",)),
    Family("numix", ("numix-icon-theme", "numix-icon-theme-circle"),
           ("Numix", "Numix-Light", "Numix-Circle", "Numix-Circle-Light"),
           required=("Numix", "Numix-Circle")),
    Family("papirus", ("papirus-icon-theme",),
           ("Papirus", "Papirus-Light", "Papirus-Dark", "ePapirus", "ePapirus-Dark")),
    Family("paper", ("paper-icon-theme",), ("Paper", "Paper-Mono-Dark")),
    Family("deepin", ("deepin-icon-theme",),
           ("bloom", "bloom-classic", "bloom-dark", "bloom-classic-dark", "Sea", "Vintage")),
    Family("suru", ("suru-icon-theme",), ("suru",)),
    Family("nuovo", ("gnome-icon-theme-nuovo",), ("Nuovo",)),
    Family("gartoon", ("gnome-icon-theme-gartoon",), ("gartoon",)),
    Family("yasis", ("gnome-icon-theme-yasis",), ("yasis",)),
    Family("lxde", ("lxde-icon-theme",), ("nuoveXT2",)),
    Family("sugar", ("sugar-icon-theme",), ("sugar",)),
    Family("mate", ("mate-icon-theme",), ("mate", "menta")),
    Family("moka", ("moka-icon-theme",), ("Moka",)),
    Family("elementary-xfce", ("elementary-xfce-icon-theme",),
           ("elementary-xfce", "elementary-xfce-dark", "elementary-xfce-darker",
            "elementary-xfce-darkest")),
    Family("obsidian", ("obsidian-icon-theme",),
           ("Obsidian", "Obsidian-Light", "Obsidian-SemiLight")
           + tuple(f"Obsidian-{c}{v}" for c in ("Amber", "Aqua", "Cyan", "Gray", "Green", "Mint",
                                                "Red", "Sand")
                   for v in ("", "-Light", "-SemiLight"))),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
ICON_ROOT = "/usr/share/icons"
DEFAULT_IMAGE_SIZE = 64
DEFAULT_MIN_FAMILIES = 5
# Query families by default: two large families with design languages unlike the rest (KDE 4's
# glossy Oxygen, the flat Paper); others are used when these are not selected.
DEFAULT_QUERY_FAMILIES = ("oxygen", "paper")
BACKGROUND = (255, 255, 255)
SKIPPED_CONTEXTS = frozenset({"animations"})
RENDERER_PACKAGES = ["librsvg2-2", "libcairo2"]
SPLIT_SEED = 21
# Part of the options (so of the prepared dataset's name): bump it when a change to this module
# changes the records, so a dataset prepared by older code is never reused.
BUILD_REVISION = 2


def packages_of(families) -> list[str]:
  return [p for f in families for p in f.packages]


def parse_families(spec: str) -> list[Family]:
  """`data.themes`: "" = every family of FAMILIES; else comma-separated family names."""
  if not spec.strip():
    return list(FAMILIES)
  names = [t.strip().lower() for t in spec.split(",") if t.strip()]
  unknown = [n for n in names if n not in FAMILY_BY_NAME]
  if unknown:
    raise ValueError(f"data.themes: unknown icon theme families {unknown}; valid names: "
                     f"{', '.join(FAMILY_BY_NAME)} (comma-separated; '' = all)")
  chosen = set(names)
  if len(chosen) < 2:
    raise ValueError(f"data.themes={spec!r} selects {len(chosen)} family; a class needs drawings "
                     "by >= 2 families")
  return [f for f in FAMILIES if f.name in chosen]


def installed_themes(family: Family, root: str = ICON_ROOT) -> list[str]:
  """The family's theme directories that have an index.theme under `root`, in priority order."""
  return [t for t in family.themes if os.path.isfile(os.path.join(root, t, "index.theme"))]


def missing_reason(families: list[Family], root: str = ICON_ROOT) -> str | None:
  """None when every family's required themes are installed, else the apt-get line to run."""
  missing = [f for f in families
             if not all(os.path.isfile(os.path.join(root, t, "index.theme"))
                        for t in f.required_themes())]
  libs = svg_render.missing_libraries()
  if not missing and not libs:
    return None
  packages = sorted(set(packages_of(missing)) | set(libs))
  what = [f.name for f in missing] + (["the SVG renderer (librsvg)"] if libs else [])
  return (f"icon_themes needs {', '.join(what)}: install the Debian packages: apt-get install "
          f"{' '.join(packages)} (or restrict data.themes to installed families)")


def parse_query_families(spec: str, families: list[Family]) -> list[str]:
  """`data.query_families`: "" = DEFAULT_QUERY_FAMILIES among the selected (else the last
  selected family), "none" = no query split, else comma-separated selected family names. At
  least one family must stay in the gallery."""
  selected = [f.name for f in families]
  if spec.strip().lower() == "none":
    return []
  if not spec.strip():
    chosen = [n for n in DEFAULT_QUERY_FAMILIES if n in selected] or selected[-1:]
  else:
    chosen = [t.strip().lower() for t in spec.split(",") if t.strip()]
    bad = [n for n in chosen if n not in selected]
    if bad:
      raise ValueError(f"data.query_families: {bad} are not among the selected families "
                       f"{selected} (data.themes)")
  chosen = [n for n in selected if n in set(chosen)]
  if len(chosen) >= len(selected):
    raise ValueError(f"data.query_families={spec!r} takes every family {selected}; keep at "
                     "least one for the gallery")
  return chosen


# ----------------------------------------------------------------------------------------------
# Listing: theme directories -> one file per (family, icon name).


def theme_directories(theme_dir: str) -> list[tuple[str, int, int, str]]:
  """[(subdirectory, design size, scale, context)] declared by the theme's index.theme."""
  parser = configparser.ConfigParser(interpolation=None, strict=False)
  parser.optionxform = str  # keys and section names are case-sensitive paths
  with open(os.path.join(theme_dir, "index.theme"), encoding="utf-8", errors="replace") as f:
    parser.read_string(f.read())
  if "Icon Theme" not in parser:
    raise ValueError(f"{theme_dir}/index.theme has no [Icon Theme] section")
  head = parser["Icon Theme"]
  names = [d.strip() for key in ("Directories", "ScaledDirectories")
           for d in head.get(key, "").split(",") if d.strip()]
  out = []
  for d in dict.fromkeys(names):
    if d not in parser:
      continue
    sec = parser[d]
    try:
      size, scale = int(sec.get("Size", "0")), int(sec.get("Scale", "1"))
    except ValueError:
      continue  # a malformed section: the theme's own loaders skip it too
    out.append((d, size, scale, sec.get("Context", "").strip().lower()))
  return out


def _file_rank(size: int, scale: int, is_vector: bool, subdir: str, target: int):
  """Sort key (smaller is better): the smallest design size >= target, else the largest."""
  fits = size >= target
  return (not fits, size if fits else -size, not is_vector, -scale, subdir)


def theme_icons(theme_dir: str, target: int) -> dict[str, str]:
  """{icon name: resolved file path} of one theme (non-symbolic names, best file per name)."""
  inside = os.path.dirname(os.path.realpath(theme_dir)) + os.sep
  # Directories that are links to one another (Papirus' 48x48@2x -> 48x48) hold the same files:
  # each real directory is scanned once, under its best-ranked declared name.
  dirs: dict[str, tuple] = {}
  for subdir, size, scale, context in theme_directories(theme_dir):
    full = os.path.join(theme_dir, subdir)
    if context in SKIPPED_CONTEXTS or not os.path.isdir(full):
      continue
    real_dir = os.path.realpath(full)
    key = (size, scale, subdir)
    if real_dir not in dirs or (_file_rank(*key[:2], True, subdir, target)
                                < _file_rank(*dirs[real_dir][:2], True, dirs[real_dir][2],
                                             target)):
      dirs[real_dir] = key
  best: dict[str, tuple] = {}
  for real_dir, (size, scale, subdir) in sorted(dirs.items()):
    ranks = {v: _file_rank(size, scale, v, subdir, target) for v in (True, False)}
    for entry in os.scandir(real_dir):
      stem, dot, ext = entry.name.rpartition(".")
      ext = dot + ext.lower()
      if ext not in (".svg", ".svgz", ".png") or not stem or stem.endswith("-symbolic"):
        continue
      rank = ranks[ext != ".png"]
      if stem not in best or rank < best[stem][0]:
        best[stem] = (rank, entry)
  out = {}
  for name, (_, entry) in sorted(best.items()):
    # Only the winners are resolved (realpath is the slow part of a listing); a dangling
    # symlink loses the name.
    real = entry.path
    if entry.is_symlink():
      # A link out of the icon tree (/etc/alternatives: the distribution's logo as `start-here`)
      # is a per-machine choice, so it is left out even when it leads back in.
      target = os.readlink(entry.path)
      if os.path.isabs(target) and not target.startswith(inside):
        continue
      real = os.path.realpath(entry.path)
    if os.path.isfile(real) and real.startswith(inside):
      out[name] = real
  return out


def family_icons(family: Family, target: int, root: str = ICON_ROOT) -> dict[str, str]:
  """{icon name: file} of a family: the first of its themes (priority order) drawing the name."""
  out: dict[str, str] = {}
  for theme in installed_themes(family, root):
    for name, path in theme_icons(os.path.join(root, theme), target).items():
      out.setdefault(name, path)
  return out


def list_icons(families: list[Family], target: int, root: str = ICON_ROOT
               ) -> dict[str, dict[str, str]]:
  """{icon name: {family: file}} over the families (listing only, no rendering)."""
  table: dict[str, dict[str, str]] = collections.defaultdict(dict)
  for family in families:
    for name, path in family_icons(family, target, root).items():
      table[name][family.name] = path
  return dict(sorted(table.items()))


# ----------------------------------------------------------------------------------------------
# Rendering, selection and splits.

def render_all(paths: list[str], size: int) -> tuple[list[np.ndarray | None], int]:
  """Renders each distinct file once; None for unreadable or blank ones. Returns (images, failed).

  Single process: at ~3 ms per 64 px icon a full build renders in minutes, and a pool would only
  add nondeterministic scheduling and process start-up for the small builds the tests make."""
  images: list[np.ndarray | None] = []
  failed = 0
  for path in paths:
    try:
      img = svg_render.render_file(path, size, BACKGROUND)
    except ValueError as e:
      logging.info("icon_themes: skipping %s (%s)", path, e)
      failed += 1
      img = None
    images.append(None if img is None or (img == np.asarray(BACKGROUND, np.uint8)).all()
                  else img)
  return images, failed


def evenly_spaced(items: list, n: int | None) -> list:
  """`n` items spread over the list (all when n is None or >= len)."""
  if n is None or n >= len(items):
    return list(items)
  return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def class_split(num_classes: int, validation_fraction: float, heldout_fraction: float
                ) -> np.ndarray:
  """Split of each class (0 train, 1 validation, 2 heldout): a seeded permutation of the sorted
  classes gives the first round(h * C) to heldout, the next round(v * C) to validation."""
  for key, v in (("validation_class_fraction", validation_fraction),
                 ("heldout_class_fraction", heldout_fraction)):
    if not 0.0 <= v < 1.0:
      raise ValueError(f"data.{key} must be in [0, 1), got {v}")
  n_h = int(round(heldout_fraction * num_classes))
  n_v = int(round(validation_fraction * num_classes))
  if n_h + n_v >= num_classes:
    raise ValueError(f"validation_class_fraction={validation_fraction} and heldout_class_fraction="
                     f"{heldout_fraction} leave no train class out of {num_classes}")
  perm = np.random.Generator(np.random.PCG64(np.random.SeedSequence([SPLIT_SEED]))).permutation(
      num_classes)
  out = np.zeros(num_classes, np.int64)
  out[perm[:n_h]] = 2
  out[perm[n_h:n_h + n_v]] = 1
  return out


CLASS_SPLITS = ("train", "validation", "heldout")
QUERY_SPLITS = {"train": "query", "validation": "validation_query", "heldout": "heldout_query"}


def split_names(kept: dict[str, dict[str, int]], query_families: list[str],
                validation_fraction: float, heldout_fraction: float, test_fraction: float
                ) -> dict[str, list[tuple[str, str]]]:
  """{split: [(class, family)]} following the module docstring (deterministic)."""
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
  names = sorted(kept)
  which = class_split(len(names), validation_fraction, heldout_fraction)
  out: dict[str, list] = collections.defaultdict(list)
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([SPLIT_SEED, 1])))
  for name, s in zip(names, which):
    split = CLASS_SPLITS[s]
    gallery = [f for f in kept[name] if f not in query_families]
    out[QUERY_SPLITS[split]] += [(name, f) for f in kept[name] if f in query_families]
    if split == "train" and test_fraction > 0 and len(gallery) >= 2:
      order = rng.permutation(len(gallery))
      n_test = min(max(int(np.floor(test_fraction * len(gallery))), 1), len(gallery) - 1)
      out["test"] += [(name, gallery[i]) for i in sorted(order[:n_test])]
      gallery = [gallery[i] for i in sorted(order[n_test:])]
    out[split] += [(name, f) for f in gallery]
  return dict(out)


UNLABELLED_SPLIT = "unlabelled"


def unlabelled_candidates(table: dict[str, dict[str, str]], min_families: int, k: int
                          ) -> list[str]:
  """Names listed by k..min_families-1 families (sorted; [] when k = 0), rendered beside the
  class candidates for the `unlabelled` split. Deduplication only removes drawings, so a name
  listed by fewer than k families can never reach k: it is not rendered."""
  if k <= 0:
    return []
  return [n for n, by_family in table.items() if k <= len(by_family) < min_families]


def unlabelled_names(kept: dict[str, dict[str, int]], pool: list[str], min_families: int,
                     k: int) -> list[str]:
  """The `unlabelled` split's names: those of `pool` left with k..min_families-1 drawings by
  deduplication (counted as the kept classes are), sorted; [] when k = 0."""
  if k <= 0:
    return []
  return sorted(n for n in pool if k <= len(kept.get(n, {})) < min_families)


def drawings_of(names: list[str], kept: dict[str, dict[str, int]], order: list[str]
                ) -> list[tuple[str, str]]:
  """[(name, family)] of every kept drawing of `names`, in (name, family priority) order."""
  return [(n, f) for n in names for f in sorted(kept[n], key=order.index)]


class IconThemes(common.SimJaxBuilder):
  """Icon names x design families of the freedesktop icon themes (module docstring).

  Options: image_size, families, query_families, min_families, max_classes,
  validation_class_fraction, heldout_class_fraction, test_fraction, root, versions, and
  unlabelled_min_families only when > 0 (so builds without the pool keep their cache key).
  Record `source` = "<family>:<file>"; metadata `icon_themes` = families, splits' families,
  counts of the listing, the rendering and the deduplication (`unlabelled`: the pool's own).
  """

  def image_shape(self):
    s = self.builder_config.options["image_size"]
    return (s, s, 3)

  def make_splits(self):
    o = self.builder_config.options
    families = [FAMILY_BY_NAME[n] for n in o["families"]]
    reason = missing_reason(families, o["root"])
    if reason:
      raise ValueError(reason)
    order = [f.name for f in families]
    k = o.get("unlabelled_min_families", 0)
    table = list_icons(families, o["image_size"], o["root"])
    candidates = [n for n, by_family in table.items() if len(by_family) >= o["min_families"]]
    chosen = evenly_spaced(candidates, o["max_classes"])
    # The pool's names are rendered and deduplicated with the classes (see the module
    # docstring: they can lose pictures to the kept classes, never take one from them).
    extra = unlabelled_candidates(table, o["min_families"], k)
    paths = sorted({p for n in chosen + extra for p in table[n].values()})
    images, failed = render_all(paths, o["image_size"])
    index = {p: i for i, p in enumerate(paths)}
    digests = [hashlib.sha256(img.tobytes()).digest() if img is not None else b"" for img in
               images]
    phashes = [dedup.phash(img) if img is not None else 0 for img in images]
    thumbs = [dedup.thumbnail(img) if img is not None else None for img in images]
    cands = {n: {f: index[p] for f, p in table[n].items() if images[index[p]] is not None}
             for n in chosen + extra}
    blank = {n: len(table[n]) - len(cands[n]) for n in cands}
    deduped, counts = dedup.deduplicate(cands, digests, phashes, thumbs, order)
    kept = {n: deduped[n] for n in chosen if len(deduped.get(n, {})) >= o["min_families"]}
    if not kept:
      raise ValueError(f"icon_themes: no icon name is drawn by >= {o['min_families']} of the "
                       f"families {order} after deduplication (empty class list)")
    assignment = split_names(kept, o["query_families"], o["validation_class_fraction"],
                             o["heldout_class_fraction"], o["test_fraction"])
    names = sorted(kept)
    pool = unlabelled_names(deduped, chosen + extra, o["min_families"], k)
    if k:
      assignment[UNLABELLED_SPLIT] = drawings_of(pool, deduped, order)
    # Labels and ids: the kept classes first (as without the pool, so their records do not
    # change), then the pool's names. id = position in the (class, family priority) order.
    label = {n: i for i, n in enumerate(names + pool)}
    ids = {d: i for i, d in enumerate(drawings_of(names + pool, deduped, order))}
    split_examples = {}
    for split, members in assignment.items():
      split_examples[split] = [
          (ids[(n, f)], {"image": images[deduped[n][f]], "label": label[n], "id": ids[(n, f)],
                         "class_name": n, "source": f"{f}:{paths[deduped[n][f]]}"})
          for n, f in members]
    def removals(of: list[str]) -> dict[str, int]:
      removed = dedup.total_counts(counts, of)
      return {"blank_or_failed_drawings": sum(blank[n] for n in of),
              **{c: removed[c] for c in ("exact_same_class", "exact_other_class",
                                         "near_same_class")}}

    self.info.metadata["icon_themes"] = {
        "families": order, "query_families": list(o["query_families"]),
        "candidate_names": len(candidates), "rendered_files": len(paths),
        "listed_drawings": sum(len(table[n]) for n in chosen),
        "dedup": {"render_failed_files": failed, **removals(chosen),
                  "phash_threshold": dedup.PHASH_THRESHOLD, "mad_threshold": dedup.MAD_THRESHOLD},
        "classes": len(kept), "images": sum(len(v) for v in kept.values()),
        "split_sizes": {s: len(v) for s, v in assignment.items()},
    }
    if k:
      self.info.metadata["icon_themes"]["unlabelled"] = {
          "min_families": k, "listed_names": len(extra),
          "listed_drawings": sum(len(table[n]) for n in extra),
          # Names of the pool that were class candidates (listed by >= min_families families).
          "names_from_candidates": len(set(pool) - set(extra)),
          "names": len(pool), "drawings": len(assignment[UNLABELLED_SPLIT]),
          # Removals among the drawings of the listed names (exact_other_class: mostly aliases
          # of a kept class's or another name's picture).
          "dedup": removals(extra),
      }
    return names + pool, split_examples


def package_versions(packages: list[str]) -> dict[str, str]:
  """{package: installed version} from dpkg-query ("unknown" without dpkg): part of the options,
  so an upgraded theme prepares a new dataset instead of reusing a stale one."""
  if not shutil.which("dpkg-query"):
    return {p: "unknown" for p in packages}
  proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *packages],
                        capture_output=True, text=True, check=False)
  found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
  return {p: found.get(p, "unknown") for p in packages}


def _families_of(c) -> list[Family]:
  return parse_families(str(c.get("themes", "") or ""))


def unavailable_reason(data_config) -> str | None:
  """None when `data_config`'s icon_themes data can be prepared here, else a one-line message
  naming the Debian packages to install (cheap: looks for index.theme files and libraries)."""
  try:
    families = _families_of(data_config)
  except ValueError as e:
    return str(e)
  return missing_reason(families)


def unlabelled_option(c, min_families: int) -> dict:
  """{"unlabelled_min_families": k} when the `unlabelled` split is asked for (k > 0), else {}:
  a build without it keeps the options (the prepared dataset's name) it had before the option
  existed, so datasets prepared then are reused."""
  k = int(c.get("unlabelled_min_families", 0) or 0)
  if k == 0:
    return {}
  if not 1 <= k < min_families:
    raise ValueError(f"data.unlabelled_min_families must be 0 (no `unlabelled` split) or in "
                     f"[1, {min_families - 1}] (below data.min_families={min_families}, whose "
                     f"names are the classes), got {k}")
  return {"unlabelled_min_families": k}


def icon_theme_options(c) -> dict:
  """The build options of data config `c` (ValueError on a bad value or missing packages)."""
  families = _families_of(c)
  reason = missing_reason(families)
  if reason:
    raise ValueError(reason)
  min_families = DEFAULT_MIN_FAMILIES if c.get("min_families") is None else int(c.min_families)
  if not 2 <= min_families <= len(families):
    raise ValueError(f"data.min_families must be in [2, {len(families)}] (the number of selected "
                     f"families), got {min_families}")
  if c.max_classes is not None and int(c.max_classes) < 1:
    raise ValueError(f"data.max_classes must be >= 1 (or None for all), got {c.max_classes}")
  fractions = {k: float(c.get(k, 0.0) or 0.0) for k in ("validation_class_fraction",
                                                         "heldout_class_fraction",
                                                         "test_fraction")}
  for k, v in fractions.items():
    if not 0.0 <= v < 1.0:
      raise ValueError(f"data.{k} must be in [0, 1), got {v}")
  if fractions["validation_class_fraction"] + fractions["heldout_class_fraction"] >= 1.0:
    raise ValueError(f"data.validation_class_fraction + data.heldout_class_fraction must be < 1 "
                     f"(train keeps the rest), got {fractions}")
  size = int(c.image_size or DEFAULT_IMAGE_SIZE)
  if size < 8:
    raise ValueError(f"data.image_size must be >= 8 for icon_themes, got {size}")
  unlabelled = unlabelled_option(c, min_families)
  return {"image_size": size, "families": [f.name for f in families],
          "query_families": parse_query_families(str(c.get("query_families", "") or ""),
                                                 families),
          "min_families": min_families,
          "max_classes": None if c.max_classes is None else int(c.max_classes),
          **fractions, "root": ICON_ROOT, "revision": BUILD_REVISION,
          # The renderers' versions too: they decide the pixels.
          "versions": {**package_versions(packages_of(families) + RENDERER_PACKAGES),
                       "pillow": PIL.__version__},
          **unlabelled}
