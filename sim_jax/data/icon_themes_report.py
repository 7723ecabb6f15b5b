"""Counts and a sample grid of the `icon_themes` dataset (the numbers docs/data.md cites).

  python -m sim_jax.data.icon_themes_report                        # default options: prepare, count
  python -m sim_jax.data.icon_themes_report --min_families=8 --heldout_class_fraction=0.2 \
      --validation_class_fraction=0.1
  python -m sim_jax.data.icon_themes_report --grid=docs/images/icon_themes_grid.png
  python -m sim_jax.data.icon_themes_report --listing              # names per family count only
  python -m sim_jax.data.icon_themes_report --unlabelled_min_families=2  # + the `unlabelled` pool

Preparing prints its wall time (a first build renders every candidate drawing).
"""

from __future__ import annotations

import collections
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from sim_jax.data import config as data_config_lib  # noqa: E402
from sim_jax.data import registry  # noqa: E402
from sim_jax.data.builders import icon_themes  # noqa: E402

_THEMES = flags.DEFINE_string("themes", "", "data.themes (comma-separated families; '' = all).")
_QUERY = flags.DEFINE_string("query_families", "", "data.query_families.")
_SIZE = flags.DEFINE_integer("image_size", icon_themes.DEFAULT_IMAGE_SIZE, "data.image_size.")
_MIN = flags.DEFINE_integer("min_families", icon_themes.DEFAULT_MIN_FAMILIES,
                            "data.min_families.")
_MAX = flags.DEFINE_integer("max_classes", None, "data.max_classes.")
_UNLABELLED = flags.DEFINE_integer("unlabelled_min_families", 0,
                                   "data.unlabelled_min_families (0: no `unlabelled` split).")
_HELD = flags.DEFINE_float("heldout_class_fraction", 0.0, "data.heldout_class_fraction.")
_VAL = flags.DEFINE_float("validation_class_fraction", 0.0, "data.validation_class_fraction.")
_TEST = flags.DEFINE_float("test_fraction", 0.2, "data.test_fraction.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: sim_jax's cache).")
_LISTING = flags.DEFINE_bool("listing", False, "Only count names per number of families "
                             "(no rendering).")
_GRID = flags.DEFINE_string("grid", "", "Write a PNG grid of sample classes x families here.")
_ROWS = flags.DEFINE_integer("rows", 10, "Classes in the grid.")


def data_config():
  c = data_config_lib.default_config()
  c.name = "icon_themes"
  c.themes, c.query_families, c.image_size = _THEMES.value, _QUERY.value, _SIZE.value
  c.min_families, c.max_classes = _MIN.value, _MAX.value
  c.unlabelled_min_families = _UNLABELLED.value
  c.heldout_class_fraction, c.validation_class_fraction = _HELD.value, _VAL.value
  c.test_fraction, c.data_dir = _TEST.value, _DATA_DIR.value
  return c


def listing_counts(families, size: int) -> dict:
  """Names drawn by >= k families (before rendering and deduplication) and names per family."""
  table = icon_themes.list_icons(families, size)
  per_name = collections.Counter(len(v) for v in table.values())
  return {"names": len(table),
          "names_with_at_least": {k: sum(c for n, c in per_name.items() if n >= k)
                                  for k in (2, 5, 8, 10)},
          "names_per_family": {f.name: sum(f.name in v for v in table.values())
                               for f in families}}


def records_by_cell(builder, splits) -> dict[tuple[str, str], np.ndarray]:
  """{(class name, family): image} over `splits`."""
  out = {}
  for split in splits:
    src = builder.as_data_source(split)
    for i in range(len(src)):
      r = src[i]
      name = r["class_name"].decode() if isinstance(r["class_name"], bytes) else r["class_name"]
      out[(name, r["source"].decode().split(":", 1)[0])] = np.asarray(r["image"])
  return out


def grid_figure(cells, families: list[str], query_families: list[str], rows: int):
  """Rows: `rows` classes evenly spaced among those drawn by the most families; columns: the
  families (query families marked with *); an empty cell: the family does not draw it (or its
  drawing was a duplicate)."""
  per_class = collections.Counter(name for name, _ in cells)
  top = sorted(per_class, key=lambda n: (-per_class[n], n))[:max(rows * 4, rows)]
  names = sorted(icon_themes.evenly_spaced(sorted(top), rows))
  size = next(iter(cells.values())).shape[0]
  fig, axes = plt.subplots(len(names), len(families),
                           figsize=(0.75 * len(families) + 1.5, 0.8 * len(names) + 0.6))
  for r, name in enumerate(names):
    for c, family in enumerate(families):
      ax = axes[r, c]
      img = cells.get((name, family))
      ax.imshow(img if img is not None else np.full((size, size, 3), 235, np.uint8))
      ax.set_xticks([])
      ax.set_yticks([])
      for side in ax.spines.values():
        side.set_visible(False)
      if r == 0:
        ax.set_title(family + ("*" if family in query_families else ""), fontsize=6,
                     rotation=45, ha="left")
      if c == 0:
        ax.set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
  fig.subplots_adjust(left=0.11, right=0.995, top=0.9, bottom=0.005, wspace=0.06, hspace=0.08)
  return fig


def main(argv):
  del argv
  c = data_config()
  families = icon_themes.parse_families(c.themes)
  if _LISTING.value:
    print(json.dumps(listing_counts(families, int(c.image_size)), indent=1))
    return
  start = time.time()
  builder = registry._builder(c)  # prepares on first use (file-locked)
  meta = dict(builder.info.metadata["icon_themes"])
  print(f"prepared or opened in {time.time() - start:.1f} s: {builder.data_dir}")
  print(json.dumps(meta, indent=1))
  # The class statistics and the grid are about the labelled classes; the pool is counted apart.
  labelled = [s for s in builder.info.splits if s != icon_themes.UNLABELLED_SPLIT]
  cells = records_by_cell(builder, labelled)
  per_family = collections.Counter(f for _, f in cells)
  print("images per family:", json.dumps({f: per_family[f] for f in meta["families"]}))
  per_class = collections.Counter(collections.Counter(n for n, _ in cells).values())
  print("classes drawn by >= k families:",
        json.dumps({k: sum(c for n, c in per_class.items() if n >= k) for k in (5, 8, 10, 15)}))
  if icon_themes.UNLABELLED_SPLIT in builder.info.splits:
    pool = records_by_cell(builder, [icon_themes.UNLABELLED_SPLIT])
    per_name = collections.Counter(n for n, _ in pool)
    print(f"unlabelled: {len(per_name)} names, {len(pool)} drawings; names drawn by k families:",
          json.dumps(dict(sorted(collections.Counter(per_name.values()).items()))))
    per_family = collections.Counter(f for _, f in pool)
    print("unlabelled images per family:",
          json.dumps({f: per_family[f] for f in meta["families"]}))
  if _GRID.value:
    fig = grid_figure(cells, meta["families"], meta["query_families"], _ROWS.value)
    fig.savefig(_GRID.value, dpi=80)
    print(f"wrote {_GRID.value}")


if __name__ == "__main__":
  app.run(main)
