"""sim_jax: similarity learning in JAX/Flax.

Leaf packages (`models`, `losses`, `data`, `eval`) are imported lazily by users; this module stays
light so that `import sim_jax` does not pull TensorFlow or compile anything.
"""

__version__ = "0.1.0"
