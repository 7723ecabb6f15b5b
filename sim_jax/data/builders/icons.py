"""`glyph_icons` (seed 000): icons from the icon fonts Debian ships; a class is an icon concept.

Seed 000 trains a Siamese network on pairs whose positives are "different representations of the
same object" and whose negatives are "distinct objects". Here a representation is a *design*: one
glyph (icon set, code point) of an icon font. Designs are grouped into concepts by name:

  concept(name) = the name, lower-cased, `_` -> `-`, with its style tokens removed
                  (`o`, `outline`, `outlined`, `border`, `alt`, `solid`, `fill`, `filled`,
                  `variant`, `sharp`, `round`, `rounded`: Font Awesome's `-o` is its outline)

so `fa-star`, `fa-star-o`, `el-star`, `mdi-star`, `mdi-star-outline`, Material's `star`,
`star_border`, `star_outline` are 8 designs of the concept `star`. Names and code points come from
the CSS each package ships (`.<prefix><name>:before { content: "\\XXXX"; }`, aliases listed as
several selectors of one rule).

Rules, in order (each keeps the build deterministic):
- Fork Awesome is a fork of Font Awesome 4.7: a Fork Awesome name that Font Awesome also has is the
  same drawing and is skipped; its new icons are kept.
- A glyph with several names (aliases, e.g. `fa-car` / `fa-automobile`) joins the one concept with
  the most designs (ties: alphabetical), so no image is in two classes.
- Concepts with >= `MIN_DESIGNS` (2) designs are candidates; `max_classes` (default
  `DEFAULT_MAX_CLASSES`, which keeps preparation to seconds; 774 concepts exist with every
  package installed) keeps an evenly spaced subset of the sorted candidates *before* rendering
  (rendering all of them first would cost seconds for nothing); a concept left with fewer than 2
  non-blank renderings is then dropped, so the class count can be lower than `max_classes`.
Each design gives 1 clean rendering + `renders_per_font - 1` jittered ones (rotation, scale,
shift), as `glyph_symbols` does.

Missing fonts raise a ValueError naming the Debian packages to install.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

from sim_jax.data.builders import common, glyphs


@dataclasses.dataclass(frozen=True)
class IconSet:
  """One icon font: where Debian installs it and how its CSS names its icons."""

  name: str
  package: str  # Debian package that installs font_file and css_file
  font_file: str  # base name of the font
  css_file: str  # base name of the CSS that maps names to code points
  selector: str  # regex capturing the icon name in a CSS selector
  default_dir: str  # where the package puts the CSS (the font is found under /usr/share/fonts)


ICON_SETS = (
    IconSet("font_awesome", "fonts-font-awesome", "fontawesome-webfont.ttf", "font-awesome.css",
            r"\.fa-([a-z0-9-]+):before", "/usr/share/fonts-font-awesome"),
    IconSet("fork_awesome", "fonts-fork-awesome", "forkawesome-webfont.ttf", "fork-awesome.css",
            r"\.fa-([a-z0-9-]+):before", "/usr/share/fonts-fork-awesome"),
    IconSet("elusive", "fonts-elusive-icons", "elusiveicons-webfont.ttf", "elusive-icons.css",
            r"\.el-([a-z0-9-]+):before", "/usr/share/fonts-elusive-icons"),
    IconSet("material_icons", "fonts-material-design-icons-iconfont", "MaterialIcons-Regular.ttf",
            "material-design-icons.css", r"\.material-icons\.([a-z0-9_]+):before",
            "/usr/share/fonts-material-design-icons-iconfont"),
    IconSet("material_design_icons", "fonts-materialdesignicons-webfont",
            "materialdesignicons-webfont.ttf", "materialdesignicons.css",
            r"\.mdi-([a-z0-9-]+):before", "/usr/share/fonts-materialdesignicons-webfont"),
)
DEFAULT_DIRS = ["/usr/share/fonts"] + [s.default_dir for s in ICON_SETS]
MIN_DESIGNS = 2
DEFAULT_MAX_CLASSES = 200
MIN_SETS = 2  # fewer than two icon sets cannot give a concept two designs
STYLE_TOKENS = frozenset({"o", "outline", "outlined", "border", "alt", "solid", "fill", "filled",
                          "variant", "sharp", "round", "rounded"})
# A CSS rule: its selectors, then the first `content: "\XXXX"` of its body.
_RULE = re.compile(r"([^{}]+)\{[^{}]*?content:\s*[\"']\\([0-9a-fA-F]+)[\"']")


def packages_hint() -> str:
  return "apt-get install " + " ".join(s.package for s in ICON_SETS)


def find_icon_sets(spec: str) -> list[tuple[str, str, str]]:
  """[(set name, font path, css path)] of the icon sets found, in `ICON_SETS` order.

  `spec`: "" searches Debian's install directories; otherwise comma-separated directories
  searched recursively for each set's font and CSS file names. ValueError (naming the packages to
  install) when fewer than 2 sets are complete.
  """
  dirs = [s.strip() for s in spec.split(",") if s.strip()] if spec else DEFAULT_DIRS
  for d in dirs:
    if spec and not os.path.isdir(d):
      raise ValueError(f"glyph_icons: font directory {d!r} does not exist (data.fonts={spec!r})")
  found_files: dict[str, str] = {}
  wanted = {f for s in ICON_SETS for f in (s.font_file, s.css_file)}
  for d in dirs:
    for root, subdirs, files in os.walk(d):
      subdirs.sort()
      for f in sorted(files):
        if f in wanted and f not in found_files:
          found_files[f] = os.path.join(root, f)
  out = [(s.name, found_files[s.font_file], found_files[s.css_file]) for s in ICON_SETS
         if s.font_file in found_files and s.css_file in found_files]
  if len(out) < MIN_SETS:
    raise ValueError(
        f"glyph_icons needs >= {MIN_SETS} icon fonts with their CSS, found "
        f"{[name for name, _, _ in out]} under {dirs}; install the Debian packages: "
        f"{packages_hint()} (or point data.fonts at directories holding them)")
  return out


def parse_css(text: str, selector: str) -> dict[str, int]:
  """{icon name: code point} from an icon font's CSS; the first rule of a name wins."""
  out: dict[str, int] = {}
  pattern = re.compile(selector)
  for selectors, cp in _RULE.findall(text):
    for name in pattern.findall(selectors):
      out.setdefault(name, int(cp, 16))
  return out


def concept_name(name: str) -> str:
  """Icon name -> concept: lower case, `_` -> `-`, style tokens dropped (see module doc)."""
  parts = name.lower().replace("_", "-").split("-")
  kept = [p for p in parts if p not in STYLE_TOKENS]
  return "-".join(kept or parts)


def icon_concepts(icon_sets: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, int]]]:
  """{concept: sorted [(font path, code point)]} for every concept (before the MIN_DESIGNS cut)."""
  names_of: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
  font_awesome_names: set[str] = set()
  for set_name, font, css in icon_sets:
    with open(css, encoding="utf-8") as f:
      mapping = parse_css(f.read(), next(s.selector for s in ICON_SETS if s.name == set_name))
    if set_name == "font_awesome":
      font_awesome_names = set(mapping)
    for name, cp in mapping.items():
      if set_name == "fork_awesome" and name in font_awesome_names:
        continue  # the same drawing as Font Awesome's
      names_of[(font, cp)].add(concept_name(name))
  size: collections.Counter = collections.Counter()
  for names in names_of.values():
    size.update(names)
  concepts: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  for glyph, names in names_of.items():
    best = min(names, key=lambda n: (-size[n], n))
    concepts[best].append(glyph)
  return {k: sorted(v) for k, v in sorted(concepts.items())}


def select_concepts(concepts: dict, charset: str) -> dict:
  """All concepts for "default"/"", else the comma-separated concept names (ValueError if
  one is unknown)."""
  if charset in ("", "default"):
    return concepts
  names = [concept_name(t.strip()) for t in charset.split(",") if t.strip()]
  if not names:
    raise ValueError(f"glyph_icons: charset {charset!r} names no icons (empty class list); "
                     "use 'default' or icon names such as 'star,heart,home'")
  missing = [n for n in names if n not in concepts]
  if missing:
    raise ValueError(f"glyph_icons: unknown icon concepts {missing}; e.g. "
                     f"{list(concepts)[:10]}")
  return {n: concepts[n] for n in sorted(set(names))}


class GlyphIcons(common.SimJaxBuilder):
  """Icon concepts x designs from Debian's icon fonts (seed 000). See the module docstring.

  Options: image_size, icon_sets ([[set, font path, css path], ...]), charset, renders_per_font,
  max_classes, heldout_class_fraction, test_fraction. Record `source` = the font file.
  """

  def image_shape(self):
    s = self.builder_config.options["image_size"]
    return (s, s, 1)

  def make_splits(self):
    o = self.builder_config.options
    concepts = select_concepts(icon_concepts([tuple(s) for s in o["icon_sets"]]), o["charset"])
    classes = [(name, [(font, chr(cp)) for font, cp in designs])
               for name, designs in concepts.items() if len(designs) >= MIN_DESIGNS]
    max_classes = DEFAULT_MAX_CLASSES if o["max_classes"] is None else o["max_classes"]
    names, images, labels, srcs = glyphs.glyph_examples(
        glyphs.evenly_spaced(classes, max_classes), o["image_size"], o["renders_per_font"],
        MIN_DESIGNS, seed_tag=1)
    return names, glyphs.split_examples(names, images, labels, srcs, o["heldout_class_fraction"],
                                        o["test_fraction"])


def icon_options(fonts: str) -> list[list[str]]:
  """The `icon_sets` build option for `data.fonts` (checks the fonts exist)."""
  return [list(s) for s in find_icon_sets(fonts)]
