"""sim_jax.eval (under construction)."""
