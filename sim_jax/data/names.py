"""Class names as a person reads them.

The builders store a class's name as its dataset defines it: `U+2192` for a glyph class (a code
point), `Sneaker` for Fashion-MNIST, `go-next` for an icon concept, `7` for digits. Displays add
the Unicode character name to a code point (`U+2192 RIGHTWARDS ARROW`, from `unicodedata`, so
the datasets need no rebuild to show it).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_CODE_POINT = re.compile(r"U\+([0-9A-Fa-f]{4,6})")


def display_name(name: str) -> str:
  """`U+XXXX` -> `U+XXXX <UNICODE NAME>` (unchanged when unnamed); other names unchanged."""
  m = _CODE_POINT.fullmatch(name)
  if not m:
    return name
  unicode_name = unicodedata.name(chr(int(m.group(1), 16)), "")
  return f"{name} {unicode_name}" if unicode_name else name


def display_names(class_names) -> tuple[str, ...]:
  """`display_name` of every class name (label i -> element i)."""
  return tuple(display_name(str(n)) for n in class_names)


def label_names(labels, class_names) -> np.ndarray:
  """str array [N]: the name of each label, or the label itself (`"17"`) when `class_names` is
  empty or does not cover it (a dataset without names still gets readable legends)."""
  names = tuple(class_names)
  labels = np.asarray(labels).reshape(-1)
  return np.asarray([names[int(y)] if 0 <= int(y) < len(names) else str(int(y))
                     for y in labels], dtype=str)
