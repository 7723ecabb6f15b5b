"""sim_jax.data: grain input pipelines, offline datasets, samplers and augmentations.

Public API (docs/interfaces.md): `get_info`, `create_train_iterator`, `load_split`,
`DatasetInfo`, `iterator_fingerprint` / `check_fingerprint`, `default_config`,
`unavailable_reason` (can this config's dataset be prepared here? said by package name).
"""

from sim_jax.data.availability import unavailable_reason
from sim_jax.data.config import default_config
from sim_jax.data.pipeline import (
    DatasetInfo,
    check_fingerprint,
    create_train_iterator,
    get_info,
    iterator_fingerprint,
    load_split,
)
from sim_jax.data.registry import DATASETS  # also registers the TFDS builders

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "check_fingerprint",
    "create_train_iterator",
    "default_config",
    "get_info",
    "iterator_fingerprint",
    "load_split",
    "unavailable_reason",
]
