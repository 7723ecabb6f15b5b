"""sim_jax.data (under construction)."""
