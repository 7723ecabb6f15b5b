"""sim_jax.models (under construction)."""
