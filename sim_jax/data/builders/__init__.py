"""sim_jax's offline TFDS builders; importing this registers them with TFDS by name."""

# Imported for their side effect: each module's builder registers its TFDS name.
from sim_jax.data.builders import (  # noqa: F401
    digits,
    fashion_mnist,
    glyphs,
    han,
    icon_themes,
    icons,
    image_folder,
)
