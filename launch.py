"""sim_jax's entry point from a clone: `python launch.py --help` (the same as `sim-jax`)."""

from sim_jax.main import run

if __name__ == "__main__":
  run()
