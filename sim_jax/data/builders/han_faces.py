"""The CJK faces of `glyph_han` and its character selection (seed 001: 47 fonts, 7500 characters).

A *face* here is a distinct design of the Han characters, not a font file. Debian installs many
files that draw the same Han glyphs, and counting them as faces would put copies of one picture on
both sides of a positive pair (and of the query/database split). So `DESIGNS` lists one entry per
design, with the files that draw it in preference order (the first installed one is used):
- weights (Regular / Bold / Light ...), proportional vs fixed-width versions (IPAPGothic,
  VL PGothic), and regional versions in one collection (Noto Sans CJK JP/KR/SC/TC/HK, UKai CN/TW,
  WenQuanYi Zen Hei Mono/Sharp) are the same design: one face, the Regular weight, index 0 of a
  .ttc (every installed collection holds regional or spacing variants of one design);
- fonts whose Han glyphs are copied from another package are that package's design:
  Takao and IPAex = IPA (Gothic and Mincho), IPAmj Mincho = IPA Mincho, MigMix / Migu = VL Gothic,
  WenQuanYi Micro Hei = Droid Sans Fallback, AR PL KaitiM Big5 and cwTeX Kai = AR PL UKai,
  AR PL Mingti2L = AR PL UMing, BabelStone Han = AR PL SungtiL GB (extended);
- NanumSquare and Baekmuk Headline map Han code points to empty glyphs and are left out, and so
  is AR PL KaitiM GB (fonts-arphic-gkai00mp): GB 2312's simplified forms only, and at the
  threshold below from AR PL UKai, whose simplified forms it is.
These groupings follow renderings of 40 of the chosen characters (64 px, fitted to 48 px by
their ink): a mean absolute pixel difference below 0.065 is the same design;
`tests/data_han_test.py` checks that every pair of kept faces is above it (and draws under 10% of
the characters identically) and every listed copy below it (Klee One, the source of LXGW
WenKai, is above it and counts as a face). A collection's regional versions redraw the
characters whose standard form differs by region (Noto CJK SC/TC/HK vs JP) but still draw at
least a third of them identically, which distinct designs never do: one face per collection.

Characters (`select_characters`): the `n` characters of the charset drawn by the most faces, so
the common characters that every national standard encodes come first (ties: evenly spaced in
code point order, so no radical dominates); then only the faces that draw every chosen character
are kept, so every class has one rendering set per face. With every package installed: 1,000
characters are drawn by all 39 faces; 7,500 by 9.

  python -m sim_jax.data.builders.han_faces   # prints the installed faces and the counts
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import numpy as np
from fontTools.ttLib import TTFont

FONT_ROOT = "/usr/share/fonts"
HAN = (0x4E00, 0x9FFF)  # CJK Unified Ideographs: the block the counts below are taken over


@dataclasses.dataclass(frozen=True)
class Design:
  """One design of the Han characters; `files` = (Debian package, path under FONT_ROOT)."""

  name: str
  style: str  # song (Ming / Mincho / Batang) | hei (Gothic / Dotum) | kai | fangsong | round | hand
  files: tuple[tuple[str, str], ...]


def _d(name, style, *files):
  return Design(name, style, tuple(files))


DESIGNS = (
    # Chinese
    _d("Noto Sans CJK", "hei", ("fonts-noto-cjk", "opentype/noto/NotoSansCJK-Regular.ttc")),
    _d("Noto Serif CJK", "song", ("fonts-noto-cjk", "opentype/noto/NotoSerifCJK-Regular.ttc")),
    _d("AR PL UKai", "kai", ("fonts-arphic-ukai", "truetype/arphic/ukai.ttc"),
       ("fonts-arphic-bkai00mp", "truetype/arphic-bkai00mp/bkai00mp.ttf"),
       ("fonts-cwtex-kai", "truetype/cwtex/cwkai.ttf")),
    _d("AR PL UMing", "song", ("fonts-arphic-uming", "truetype/arphic/uming.ttc"),
       ("fonts-arphic-bsmi00lp", "truetype/arphic-bsmi00lp/bsmi00lp.ttf")),
    _d("AR PL SungtiL", "song", ("fonts-babelstone-han", "truetype/babelstone/BabelStoneHan.ttf"),
       ("fonts-arphic-gbsn00lp", "truetype/arphic-gbsn00lp/gbsn00lp.ttf")),
    _d("TW-Kai", "kai", ("fonts-cns11643-kai", "truetype/cns11643/TW-Kai-98_1.ttf")),
    _d("TW-Sung", "song", ("fonts-cns11643-sung", "truetype/cns11643/TW-Sung-98_1.ttf")),
    _d("cwTeX FangSong", "fangsong", ("fonts-cwtex-fs", "truetype/cwtex/cwfs.ttf")),
    _d("cwTeX HeiBold", "hei", ("fonts-cwtex-heib", "truetype/cwtex/cwheib.ttf")),
    _d("cwTeX Ming", "song", ("fonts-cwtex-ming", "truetype/cwtex/cwming.ttf")),
    _d("cwTeX Yen", "round", ("fonts-cwtex-yen", "truetype/cwtex/cwyen.ttf")),
    _d("Droid Sans Fallback", "hei",
       ("fonts-droid-fallback", "truetype/droid/DroidSansFallbackFull.ttf"),
       ("fonts-wqy-microhei", "truetype/wqy/wqy-microhei.ttc")),
    _d("WenQuanYi Zen Hei", "hei", ("fonts-wqy-zenhei", "truetype/wqy/wqy-zenhei.ttc")),
    _d("Hanazono Mincho", "song", ("fonts-hanazono", "truetype/hanazono/HanaMinA.ttf")),
    _d("LXGW WenKai", "kai", ("fonts-lxgw-wenkai", "truetype/lxgw-wenkai/LXGWWenKai-Regular.ttf")),
    _d("SetoFont", "hand", ("fonts-seto", "truetype/seto/setofont.ttf")),
    # Japanese
    _d("IPA Gothic", "hei", ("fonts-ipafont-gothic", "opentype/ipafont-gothic/ipag.ttf"),
       ("fonts-ipaexfont-gothic", "opentype/ipaexfont-gothic/ipaexg.ttf"),
       ("fonts-takao-gothic", "truetype/takao-gothic/TakaoGothic.ttf")),
    _d("IPA Mincho", "song", ("fonts-ipafont-mincho", "opentype/ipafont-mincho/ipam.ttf"),
       ("fonts-ipaexfont-mincho", "opentype/ipaexfont-mincho/ipaexm.ttf"),
       ("fonts-ipamj-mincho", "truetype/ipamj/ipamjm.ttf"),
       ("fonts-takao-mincho", "truetype/takao-mincho/TakaoMincho.ttf")),
    _d("BIZ UDGothic", "hei",
       ("fonts-morisawa-bizud-gothic", "truetype/bizud-gothic/BIZUDGothic-Regular.ttf")),
    _d("BIZ UDMincho", "song",
       ("fonts-morisawa-bizud-mincho", "truetype/bizud-mincho/BIZUDMincho-Regular.ttf")),
    # LXGW WenKai's source, redrawn enough to count as a design of its own (see above); a Kai
    # (pen-written textbook) style, so it joins the queries and never the database.
    _d("Klee One", "kai", ("fonts-klee", "truetype/klee/KleeOne-Regular.ttf")),
    _d("kiloji", "hand", ("fonts-kiloji", "truetype/kiloji/kiloji.ttf")),
    _d("Dejima Mincho", "song",
       ("fonts-dejima-mincho", "truetype/dejima-mincho/dejima-mincho-r227.ttf")),
    _d("Oradano Mincho", "song",
       ("fonts-oradano-mincho-gsrr", "truetype/oradano-mincho/OradanoGSRR.ttf")),
    _d("Sawarabi Gothic", "hei",
       ("fonts-sawarabi-gothic", "truetype/sawarabi-gothic/sawarabi-gothic-medium.ttf")),
    _d("Sawarabi Mincho", "song",
       ("fonts-sawarabi-mincho", "truetype/sawarabi-mincho/sawarabi-mincho-medium.ttf")),
    _d("UmePlus Gothic", "hei", ("fonts-umeplus", "truetype/umeplus/umeplus-gothic.ttf")),
    _d("VL Gothic", "hei", ("fonts-vlgothic", "truetype/vlgothic/VL-Gothic-Regular.ttf"),
       ("fonts-migmix", "truetype/migmix/migmix-1m-regular.ttf")),
    _d("YOzFont", "hand", ("fonts-yozvox-yozfont-new-kana", "truetype/yozvox-yozfont/YOzRN_.ttf")),
    # Korean (Hanja)
    _d("Baekmuk Batang", "song", ("fonts-baekmuk", "truetype/baekmuk/batang.ttf")),
    _d("Baekmuk Dotum", "hei", ("fonts-baekmuk", "truetype/baekmuk/dotum.ttf")),
    _d("Baekmuk Gulim", "round", ("fonts-baekmuk", "truetype/baekmuk/gulim.ttf")),
    _d("UnBatang", "song", ("fonts-unfonts-core", "truetype/unfonts-core/UnBatang.ttf")),
    _d("UnDotum", "hei", ("fonts-unfonts-core", "truetype/unfonts-core/UnDotum.ttf")),
    _d("UnGungseo", "kai", ("fonts-unfonts-core", "truetype/unfonts-core/UnGungseo.ttf")),
    _d("UnShinmun", "song", ("fonts-unfonts-extra", "truetype/unfonts-extra/UnShinmun.ttf")),
    _d("UnYetgul", "hand", ("fonts-unfonts-extra", "truetype/unfonts-extra/UnYetgul.ttf")),
    _d("NanumGothic", "hei", ("fonts-nanum", "truetype/nanum/NanumGothic.ttf")),
    _d("NanumBarunGothic", "hei", ("fonts-nanum", "truetype/nanum/NanumBarunGothic.ttf")),
)
# The query faces by default: brush-written Kai faces, unlike the printed database faces.
QUERY_STYLE = "kai"


def packages() -> list[str]:
  """The Debian packages of every design's preferred file (what `apt-get install` should get)."""
  return sorted({d.files[0][0] for d in DESIGNS})


def installed_faces(root: str = FONT_ROOT) -> list[tuple[Design, str]]:
  """(design, file) for every design with a file installed under `root` (its first such file)."""
  out = []
  for design in DESIGNS:
    path = next((os.path.join(root, rel) for _, rel in design.files
                 if os.path.isfile(os.path.join(root, rel))), None)
    if path:
      out.append((design, os.path.realpath(path)))
  return out


def design_of(path: str) -> Design | None:
  """The design a font file draws (by its path under FONT_ROOT or its base name)."""
  real, base = os.path.realpath(path), os.path.basename(path)
  for design in DESIGNS:
    for _, rel in design.files:
      if real == os.path.realpath(os.path.join(FONT_ROOT, rel)) or base == os.path.basename(rel):
        return design
  return None


@functools.lru_cache(maxsize=256)
def drawn_codepoints(path: str) -> frozenset[int]:
  """Code points the font (first face of a collection) maps to a glyph with an outline.

  A TrueType glyph whose `loca` entry is empty has no contours (NanumSquare maps every Hanja
  that way), so it does not count; CFF fonts (Noto CJK) have no such cheap test and count all.
  """
  kw = {"fontNumber": 0} if path.lower().endswith(".ttc") else {}
  font = TTFont(path, lazy=True, **kw)
  cmap = font.getBestCmap() or {}
  if "glyf" not in font or "loca" not in font:
    return frozenset(cmap)
  loca = font["loca"]
  ids = font.getReverseGlyphMap()
  return frozenset(cp for cp, name in cmap.items() if loca[ids[name] + 1] > loca[ids[name]])


def select_characters(codepoints: list[int], face_codepoints: list[frozenset[int]],
                      n: int) -> list[int]:
  """The `n` code points of `codepoints` drawn by the most faces, sorted.

  Rank = number of faces drawing the code point (descending). The last rank that does not fit
  whole is sampled evenly spaced in code point order (`round(linspace)`), so ties never favour
  the first radicals of the block. Code points drawn by no face are never chosen.
  """
  if n < 1:
    raise ValueError(f"max_classes must be >= 1, got {n}")
  counts = np.array([sum(cp in f for f in face_codepoints) for cp in codepoints])
  chosen: list[int] = []
  for level in sorted({int(c) for c in counts if c > 0}, reverse=True):
    tier = [cp for cp, c in zip(codepoints, counts) if c == level]
    room = n - len(chosen)
    if len(tier) > room:
      tier = [tier[i] for i in np.linspace(0, len(tier) - 1, room).round().astype(int)]
    chosen += tier
    if len(chosen) >= n:
      break
  return sorted(chosen)


def faces_drawing(fonts: list[str], chars: list[int]) -> list[str]:
  """The fonts that draw every code point of `chars`."""
  need = set(chars)
  return [f for f in fonts if need <= drawn_codepoints(f)]


def _report(root: str = FONT_ROOT) -> str:
  """The installed faces and the face counts at 1,000 and 7,500 characters (for docs/data.md)."""
  faces = installed_faces(root)
  han = list(range(HAN[0], HAN[1] + 1))
  lines = [f"{len(faces)} of {len(DESIGNS)} designs installed "
           f"(U+{HAN[0]:04X}-U+{HAN[1]:04X}, drawn = mapped to a glyph with an outline):",
           "| design | style | Debian package | file | characters drawn |", "|---|---|---|---|---|"]
  for design, path in faces:
    package = next(p for p, rel in design.files if path.endswith(os.path.basename(rel)))
    lines.append(f"| {design.name} | {design.style} | {package} | {os.path.basename(path)} | "
                 f"{len(set(han) & drawn_codepoints(path))} |")
  fonts = [p for _, p in faces]
  for n in (1000, 2000, 4000, 7500):
    chars = select_characters(han, [drawn_codepoints(f) for f in fonts], n)
    kept = faces_drawing(fonts, chars)
    query = [f for f in kept if design_of(f) and design_of(f).style == QUERY_STYLE]
    lines.append(f"max_classes={n}: {len(chars)} characters drawn by {len(kept)} faces "
                 f"({len(query)} query, {len(kept) - len(query)} database)")
  return "\n".join(lines)


if __name__ == "__main__":
  print(_report(sys.argv[1] if len(sys.argv) > 1 else FONT_ROOT))
