"""Initialising an encoder from another run (SimCLR pretraining -> Siamese fine-tuning, seed 000).

Pure tree surgery on in-memory variables; reading the checkpoint is the caller's job
(`sim_jax.checkpointing.load_variables(path)`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def _eligible(collection: Mapping, path: tuple[str, ...], encoder_key: str) -> bool:
  """Encoder leaves: under `encoder_key` when the collection has it at its top level, else all.

  (`batch_stats` may mirror the encoder directly, i.e. hold no `encoder_key` level.)
  """
  return encoder_key not in collection or path[0] == encoder_key


def merge_pretrained(target_variables: Mapping[str, Any], source_variables: Mapping[str, Any], *,
                     encoder_key: str = "encoder", source_name: str = "source"
                     ) -> tuple[dict, dict[str, list[str]]]:
  """Copies every encoder leaf of `source_variables` into `target_variables`.

  Both are `{"params": {"encoder": ..., "pair_head": ..., ...}, "batch_stats": {...}}` trees (see
  docs/interfaces.md). A target leaf is *loaded* when it lies in the encoder (see `_eligible`) and
  the source has the same path with the same shape (cast to the target's dtype); every other
  target leaf is kept as initialised (*initialised*: e.g. a new pair head or projection); source
  leaves the target lacks are *skipped* (e.g. a SimCLR projection head dropped after pretraining).

  Returns (merged variables as nested dicts, report {"loaded": [...], "initialised": [...],
  "skipped": [...]}) with leaf names "collection/a/b/kernel".
  Raises ValueError naming `source_name` and every leaf whose shapes differ (target and source
  shapes), or when not a single encoder leaf matches (a checkpoint of another model).
  """
  report = {"loaded": [], "initialised": [], "skipped": []}
  merged, mismatched, eligible_count = {}, [], 0
  for col, target_tree in target_variables.items():
    target_flat = traverse_util.flatten_dict(_to_dict(target_tree))
    source_tree = _to_dict(source_variables.get(col, {}))
    source_flat = traverse_util.flatten_dict(source_tree)
    out = {}
    for path, leaf in target_flat.items():
      name = "/".join((col,) + path)
      if not _eligible(target_tree, path, encoder_key):
        out[path] = leaf
        report["initialised"].append(name)
        continue
      eligible_count += 1
      if path not in source_flat:
        out[path] = leaf
        report["initialised"].append(name)
        continue
      src = source_flat[path]
      if tuple(np.shape(src)) != tuple(np.shape(leaf)):
        mismatched.append(f"{name}: target {tuple(np.shape(leaf))} vs source "
                          f"{tuple(np.shape(src))}")
        continue
      out[path] = jnp.asarray(src, dtype=jnp.asarray(leaf).dtype)
      report["loaded"].append(name)
    for path in source_flat:
      if path not in target_flat and _eligible(source_tree, path, encoder_key):
        report["skipped"].append("/".join((col,) + path))
    merged[col] = traverse_util.unflatten_dict(out)
  for col, source_tree in source_variables.items():
    if col not in target_variables:
      report["skipped"] += ["/".join((col,) + p)
                            for p in traverse_util.flatten_dict(_to_dict(source_tree))]
  if mismatched:
    raise ValueError(f"cannot initialise from {source_name}: {len(mismatched)} parameter shape "
                     "mismatch(es) (is the model config the same as the pretraining run's?):\n  "
                     + "\n  ".join(mismatched))
  if eligible_count and not report["loaded"]:
    raise ValueError(f"cannot initialise from {source_name}: none of the target's "
                     f"{eligible_count} encoder parameters exist there (a different model?)")
  return merged, report


def _to_dict(tree: Any) -> dict:
  """FrozenDict / Mapping -> plain nested dict (leaves untouched)."""
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def init_from(target_variables: Mapping[str, Any], path: str,
              load_variables: Callable[[str], Mapping[str, Any]], *,
              encoder_key: str = "encoder") -> tuple[dict, dict[str, list[str]]]:
  """`config.model.init_from`: checks `path`, reads it with `load_variables` (the trainer passes
  `sim_jax.checkpointing.load_variables`; models never import the checkpointing package) and
  returns `merge_pretrained(target_variables, loaded, source_name=path)`.

  Raises ValueError naming `path` when it does not exist, and as `merge_pretrained` otherwise.
  """
  if not path or not os.path.exists(path):
    raise ValueError(f"model.init_from={path!r} does not exist (give a workdir or a checkpoint "
                     "step directory of a previous run)")
  return merge_pretrained(target_variables, load_variables(path), encoder_key=encoder_key,
                          source_name=path)
