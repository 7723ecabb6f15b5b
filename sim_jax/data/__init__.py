"""sim_jax.data: grain input pipelines, offline datasets, samplers and augmentations.

Public API (docs/interfaces.md): `get_info`, `create_train_iterator`, `load_split`,
`DatasetInfo`, `default_config`,
`unavailable_reason` (can this config's dataset be prepared here? said by package name).
"""

from sim_jax.data.availability import unavailable_reason
from sim_jax.data.config import default_config
from sim_jax.data.pipeline import (
    DatasetInfo,
    create_train_iterator,
    get_info,
    load_split,
)
from sim_jax.data.registry import DATASETS  # also registers the TFDS builders

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "create_train_iterator",
    "default_config",
    "get_info",
    "load_split",
    "unavailable_reason",
]
