"""`python -m sim_jax ...`: the same program as `sim-jax` and `python launch.py`."""

from sim_jax.main import run

if __name__ == "__main__":
  run()
