"""sim_jax.experiments: the ablation runner behind `ablate.py`.

Modules, each importing only the ones listed before it:
  variants  how a config declares ablations (Variant, Ablation) and the pure run plan: overrides,
            seeds, dependency order (ml_collections only: configs import it)
  commands  launch.py command lines and the config launch.py would build from them
  checks    every check a variant's config must pass before it is launched, its data included
  tables    one run's Result, the seeds of a variant aggregated, the markdown table, the JSON
  plots     the ablation's PNG (headline metric per variant, chance and floors, curves)
  runner    the resumable launch of every run, then the outputs (`run_ablation`)

This package's `__init__` imports `variants` only, so that a config stays cheap to load.
"""

from sim_jax.experiments.variants import Ablation, Run, Variant

__all__ = ["Ablation", "Run", "Variant"]
