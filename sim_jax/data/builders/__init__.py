"""sim_jax's offline TFDS builders; importing this registers them with TFDS by name."""

from sim_jax.data.builders import digits, glyphs, icons, image_folder  # noqa: F401  (registration side effect)
