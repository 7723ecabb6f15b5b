"""How an experiment config declares its ablations (read by `ablate.py` and the config tests).

An experiment config (configs/icons.py, ...) defines, next to `get_config()`:

  HEADLINE = ("verification/accuracy", ...)   # metrics of final_metrics.json shown as columns;
                                              # the first is plotted
  def get_ablations() -> dict[str, list[Variant]]   # ablation name -> its variants, in order

A `Variant` is a label (also the name of the run's directory) and overrides: dotted config keys
-> Python values, applied on top of `get_config()`. A string value may contain `{run:LABEL}`,
which `ablate.py` replaces with the workdir of variant LABEL of the same ablation and runs LABEL
first (SimCLR pretraining -> fine-tuning from its checkpoint with `model.init_from`).

`evaluates=LABEL` makes a variant that trains nothing: it re-evaluates LABEL's final checkpoint
with LABEL's overrides plus its own `eval.*` ones (`launch.py --mode=evaluate`). A metric that
only changes how embeddings are compared (seed 001's distances) so costs one evaluation instead
of a training run that would reproduce the same weights.

This module imports only ml_collections: loading a config must stay cheap.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections

# "{run:LABEL}" inside an override value: LABEL's run directory (an absolute path at run time).
RUN_REF = re.compile(r"\{run:([^{}]*)\}")
# Labels name directories and appear in commands: no spaces, slashes or shell characters.
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class Variant(NamedTuple):
  """One run of an ablation: `label` (its directory name), `overrides` (dotted key -> value)."""

  label: str
  overrides: Mapping[str, Any] = {}
  evaluates: str = ""  # label of a variant whose final checkpoint this one only re-evaluates


def run_refs(variant: Variant) -> list[str]:
  """Labels this variant needs finished first: `{run:LABEL}` references, then `evaluates`."""
  refs = []
  for value in variant.overrides.values():
    if isinstance(value, str):
      refs += [r for r in RUN_REF.findall(value) if r not in refs]
  if variant.evaluates and variant.evaluates not in refs:
    refs.append(variant.evaluates)
  return refs


def check_variants(variants: list[Variant]) -> None:
  """Raises ValueError for a bad label, a duplicate, or a reference to an unknown label."""
  labels = [v.label for v in variants]
  for v in variants:
    if not isinstance(v, Variant):
      raise ValueError(f"ablation entries must be Variant(label, overrides), got {v!r}")
    if not LABEL_RE.match(v.label):
      raise ValueError(f"variant label {v.label!r} must match {LABEL_RE.pattern} (it names a "
                       "directory and appears in commands)")
    if labels.count(v.label) > 1:
      raise ValueError(f"variant label {v.label!r} appears {labels.count(v.label)} times")
    for ref in run_refs(v):
      if ref not in labels:
        raise ValueError(f"variant {v.label!r} refers to {ref!r}, which is not a variant of this "
                         f"ablation ({', '.join(labels)})")
      if ref == v.label:
        raise ValueError(f"variant {v.label!r} refers to itself")
    if v.evaluates:
      not_eval = [k for k in v.overrides if not k.startswith("eval.")]
      if not_eval:
        raise ValueError(f"variant {v.label!r} only re-evaluates {v.evaluates!r}'s checkpoint, "
                         f"so it may override eval.* fields only; got {not_eval}")
      source = next((x for x in variants if x.label == v.evaluates), None)
      if source is not None and source.evaluates:
        raise ValueError(f"variant {v.label!r} evaluates {v.evaluates!r}, which trains nothing "
                         f"itself; name the variant that trained ({source.evaluates!r})")


def effective_overrides(variant: Variant, variants: list[Variant]) -> dict[str, Any]:
  """The overrides a variant runs with: an `evaluates` variant inherits its source's.

  The checkpoint it evaluates was written under the source's model / loss / data, so the config
  must describe the same run; only its own eval.* fields differ.
  """
  if not variant.evaluates:
    return dict(variant.overrides)
  source = next(v for v in variants if v.label == variant.evaluates)
  return {**source.overrides, **variant.overrides}


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` (dotted keys) set; the input is left untouched.

  An unknown key raises KeyError naming the whole key (ConfigDict's own error names only the
  last part); an ill-typed value raises TypeError naming it (the locked ConfigDict type-checks).
  """
  out = copy.deepcopy(config)  # keeps the lock, the field types and the placeholders
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = out
    for depth, part in enumerate(parents):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise KeyError(f"unknown config key {key!r}: config.{'.'.join(parents[:depth + 1])} is "
                       "not a section")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"unknown config key {key!r}: no field {leaf!r} in "
                     f"config{'.' if parents else ''}{'.'.join(parents)} (fields: "
                     f"{', '.join(sorted(node.keys()))})")
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise TypeError(f"config key {key!r}: cannot set {value!r}: {e}") from e
  return out
