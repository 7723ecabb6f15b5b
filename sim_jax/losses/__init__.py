"""sim_jax.losses (under construction)."""
