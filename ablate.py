"""The ablation runner from a clone: `python ablate.py --help` (the same as `sim-jax-ablate`).

Its documentation and logic: sim_jax/experiments/cli.py and sim_jax.experiments.
"""

from sim_jax.experiments.cli import run

if __name__ == "__main__":
  run()
