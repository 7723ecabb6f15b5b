"""Only what pyproject.toml cannot say: the repository's configs/ ship as `sim_jax.configs`.

So that `pip install sim_jax` users reach the configs (`sim-jax --config=configs/default.py` or
`--config=default`) while a clone keeps `configs/` at its root, where every documented
`python launch.py --config=configs/...` command reads it. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["sim_jax", "sim_jax.*"]), "sim_jax.configs"],
    package_dir={"sim_jax.configs": "configs"},
    package_data={"sim_jax": ["py.typed"]},
)
