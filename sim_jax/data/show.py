"""Writes a PNG grid of what the model sees: examples, POS/NEG pairs and augmented views.

  python -m sim_jax.data.show --config=configs/default.py --out=samples.png
  python -m sim_jax.data.show --dataset=glyph_symbols --out=samples.png   # without a config
"""

from __future__ import annotations

import copy
import textwrap

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sim_jax.data import augment, names, pipeline  # noqa: E402
from sim_jax.data import config as data_config_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Full sim_jax config (uses .data).")
_DATASET = flags.DEFINE_string("dataset", "glyph_symbols", "Dataset name when no --config.")
_OUT = flags.DEFINE_string("out", "samples.png", "Output PNG path.")
_ROWS = flags.DEFINE_integer("rows", 4, "Rows per panel.")


def _imshow(ax, img, title=None):
  img = np.asarray(img)
  ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=6)


def _short(name: str, width: int = 14, lines: int = 2) -> str:
  """`name` wrapped to `lines` lines of `width` characters (an ellipsis when cut): a tile is
  about an inch wide."""
  parts = textwrap.wrap(name, width) or [""]
  return "\n".join(parts[:lines]) + ("\u2026" if len(parts) > lines else "")


def make_figure(data_config, rows: int = 4, seed: int = 0):
  """Three panels: a P x K batch, POS/NEG pairs, original + two augmented views; examples are
  titled by class name (`sim_jax.data.names`; the label when the dataset has none)."""
  class_names = names.display_names(pipeline.get_info(data_config).class_names)

  def title(label, prefix=""):
    return _short(prefix + names.label_names([label], class_names)[0])

  cols = 8
  fig, axes = plt.subplots(3 * rows, cols, figsize=(cols * 1.1, 3 * rows * 1.2))
  cfg = copy.deepcopy(data_config)
  cfg.sampler, cfg.worker_count = "pk", 0
  cfg.examples_per_class = cols
  pk = next(pipeline.create_train_iterator(cfg, global_batch_size=rows * cols, seed=seed))
  for i in range(rows * cols):
    _imshow(axes[i // cols, i % cols], pk["image"][i], title(pk["label"][i]))
  cfg.sampler = "pairs"
  pairs = next(pipeline.create_train_iterator(cfg, global_batch_size=rows * cols // 2, seed=seed))
  for j in range(rows * cols // 2):
    r, c = rows + j // (cols // 2), 2 * (j % (cols // 2))
    tag = "POS" if pairs["same"][j] else "NEG"
    _imshow(axes[r, c], pairs["image"][j, 0], title(pairs["label"][j, 0], f"{tag} "))
    _imshow(axes[r, c + 1], pairs["image"][j, 1], title(pairs["label"][j, 1], f"{tag} "))
  fn = jax.jit(augment.make_augment_fn(data_config.augment))
  originals = pk["image"][::cols][:rows].astype(np.float32) / 255.0
  views = [np.asarray(fn(jax.random.key(v), originals)) for v in range(cols - 1)]
  for r in range(rows):
    _imshow(axes[2 * rows + r, 0], originals[r] * 255, "original")
    for v in range(cols - 1):
      _imshow(axes[2 * rows + r, v + 1], views[v][r] * 255, f"{data_config.augment.name} {v}")
  fig.suptitle(f"{data_config.name}: P x K batch | POS/NEG pairs | augmented views", fontsize=9)
  fig.tight_layout()
  return fig


def main(argv):
  del argv
  if _CONFIG.value is not None:
    data_config, seed = _CONFIG.value.data, int(_CONFIG.value.get("seed", 0))
  else:
    data_config, seed = data_config_lib.default_config(), 0
    data_config.name = _DATASET.value
  fig = make_figure(data_config, _ROWS.value, seed)
  fig.savefig(_OUT.value, dpi=110)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
