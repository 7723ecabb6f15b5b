"""`digits`: scikit-learn's 8x8 handwritten digits as an offline TFDS dataset (seed 002, small)."""

from __future__ import annotations

from sim_jax.data import sources
from sim_jax.data.builders import common


class Digits(common.SimJaxBuilder):
  """1797 8x8 gray digits (UCI optdigits); pixels 0..16 -> round(v * 255 / 16).

  Options: `heldout_class_fraction`, `test_fraction` (sim_jax.data.splits.split_assignment).
  Record `id` = the row in `sklearn.datasets.load_digits()`.
  """

  def image_shape(self):
    return (8, 8, 1)

  def make_splits(self):
    o = self.builder_config.options
    images, labels = sources.digits_arrays()
    assign = common.assign_examples(labels, o["heldout_class_fraction"], o["test_fraction"])
    out = {}
    for split, idx in assign.items():
      out[split] = [(int(i), {"image": images[i], "label": int(labels[i]), "id": int(i),
                              "class_name": str(labels[i]), "source": "sklearn.load_digits"})
                    for i in idx]
    return [str(i) for i in range(10)], out
