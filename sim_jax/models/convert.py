"""Pretrained weights a user has on disk -> sim_jax variables (seeds 003/004 start from ImageNet).

Nothing is downloaded: pass a local PyTorch (`.pt`, `.pth`, `.bin`) or safetensors file in
torchvision naming (`resnet18/34/50`, `vgg16`) or timm naming (`vit_*_patch16_224`) and the
variables of a freshly initialised `Encoder` of the matching config; the backbone leaves are
replaced, the embedding / attention / projection heads stay as initialised.

Name and layout rules (PyTorch -> Flax):
  `layer1.0.conv1` -> `layer1_0/conv1`, `downsample.0|1` -> `downsample_conv|bn`,
  `features.10` -> `features_10`, `blocks.3` -> `blocks_3`, `patch_embed.proj` -> `patch_embed`;
  conv weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; linear weight [O, I] -> kernel [I, O];
  norm weight [C] -> scale; running_mean / running_var -> batch_stats mean / var;
  `num_batches_tracked` and classifier layers (`fc`, `classifier`, `head`) are not used.
Inputs: the converted network expects the same normalised input as the source; keep the default
`input_norm="imagenet"` (torchvision's mean / std) for ImageNet weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

FAMILIES = ("resnet", "vgg", "vit")
_RENAMES = (
    (re.compile(r"^(layer\d)\.(\d+)\."), r"\1_\2."),
    (re.compile(r"\.downsample\.0\."), ".downsample_conv."),
    (re.compile(r"\.downsample\.1\."), ".downsample_bn."),
    (re.compile(r"^features\.(\d+)\."), r"features_\1."),
    (re.compile(r"^blocks\.(\d+)\."), r"blocks_\1."),
    (re.compile(r"^patch_embed\.proj\."), "patch_embed."),
)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a local `.safetensors` or torch pickle (`.pt`, `.pth`, `.bin`) into NumPy arrays."""
  if not os.path.exists(path):
    raise ValueError(f"state dict path does not exist: {path!r}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # optional dependency, only needed here
    return dict(load_file(path))
  import torch  # optional dependency (the `bench` extra), only needed for torch pickles
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, Mapping) and "state_dict" in state:
    state = state["state_dict"]
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def torch_to_flax(key: str, value: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray] | None:
  """One PyTorch entry -> (collection, flax path, array) or None for entries sim_jax has no use for.

  See the module docstring for the rules.
  """
  for pattern, repl in _RENAMES:
    key = pattern.sub(repl, key)
  *modules, leaf = key.split(".")
  value = np.asarray(value, dtype=np.float32)
  if leaf == "num_batches_tracked":
    return None
  if leaf in ("cls_token", "pos_embed") and not modules:
    return "params", (leaf,), value
  if leaf == "weight":
    if value.ndim == 4:
      return "params", (*modules, "kernel"), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
      return "params", (*modules, "kernel"), value.T
    return "params", (*modules, "scale"), value
  if leaf == "bias":
    return "params", (*modules, "bias"), value
  if leaf == "running_mean":
    return "batch_stats", (*modules, "mean"), value
  if leaf == "running_var":
    return "batch_stats", (*modules, "var"), value
  return None


def convert_state_dict(state_dict: Mapping[str, Any], target_variables: Mapping[str, Any], *,
                       source_name: str = "state dict") -> tuple[dict, dict[str, list[str]]]:
  """Replaces the backbone leaves of `target_variables` (an `Encoder`'s init output).

  Every target leaf under "backbone" must be provided with the same shape, and every source entry
  inside one of the backbone's top-level modules must have a target; otherwise a ValueError names
  the missing, mismatched (with both shapes) and unexpected entries (a wrong architecture or size).
  Returns (variables, report {"loaded", "initialised", "unused"}) where "unused" are source keys
  with no target (e.g. the ImageNet classifier `fc.*`).
  """
  converted, unused = {}, []
  for key, value in state_dict.items():
    entry = torch_to_flax(key, np.asarray(value))
    if entry is None:
      if not key.endswith("num_batches_tracked"):
        unused.append(key)
      continue
    col, path, array = entry
    converted[(col, "backbone", *path)] = (key, array)
  out, report, missing, mismatched = {}, {"loaded": [], "initialised": [], "unused": []}, [], []
  loaded_keys = []
  for col, tree in target_variables.items():
    flat = traverse_util.flatten_dict(dict(tree))
    new = {}
    for path, leaf in flat.items():
      name = "/".join((col,) + path)
      if path[0] != "backbone":
        new[path] = leaf
        report["initialised"].append(name)
        continue
      if (col, *path) not in converted:
        missing.append(name)
        continue
      key, array = converted.pop((col, *path))
      loaded_keys.append(key)
      if array.shape != tuple(np.shape(leaf)):
        mismatched.append(f"{name} <- {key}: target {tuple(np.shape(leaf))} vs source "
                          f"{array.shape}")
        continue
      new[path] = array.astype(np.asarray(leaf).dtype)
      report["loaded"].append(name)
    out[col] = traverse_util.unflatten_dict(new)
  # Leftovers inside a PyTorch top-level module that was otherwise converted (`layer2.1.*` when
  # the target has one block per stage) mean a different depth: an error. Leftovers under other
  # top-level names (`fc`, `classifier`, `head`) are the classifier that sim_jax's heads replace.
  used_modules = {k.split(".")[0] for k in loaded_keys}
  unexpected = sorted(k for k, _ in converted.values() if k.split(".")[0] in used_modules)
  if missing or mismatched or unexpected:
    raise ValueError(f"cannot convert {source_name} (a different architecture or size?): "
                     f"missing {missing}; shape mismatches {mismatched}; unexpected {unexpected}")
  report["unused"] = sorted(unused + [k for k, _ in converted.values()])
  return out, report


def convert_file(path: str, target_variables: Mapping[str, Any]) -> tuple[dict, dict]:
  """`convert_state_dict(load_state_dict(path), target_variables)`."""
  return convert_state_dict(load_state_dict(path), target_variables, source_name=path)
