"""How an experiment config declares its ablations, and the pure planning of their runs.

An experiment config (configs/icons.py, ...) defines, next to `get_config()`:

  HEADLINE = ("verification/accuracy", ...)   # metrics of final_metrics.json shown as columns;
                                              # the first is plotted
  def get_ablations() -> dict[str, list[Variant] | Ablation]   # name -> its variants, in order

A `Variant` is a label (also the name of the run's directory) and overrides: dotted config keys
-> Python values, applied on top of `get_config()`. A string value may contain `{run:LABEL}`,
which the runner replaces with the workdir of variant LABEL of the same ablation (and seed) and
runs LABEL first (SimCLR pretraining -> fine-tuning from its checkpoint with `model.init_from`).

`evaluates=LABEL` makes a variant that trains nothing: it re-evaluates LABEL's final checkpoint
with LABEL's overrides plus its own `eval.*` ones (`launch.py --mode=evaluate`). A metric that
only changes how embeddings are compared (seed 001's distances) so costs one evaluation instead
of a training run that would reproduce the same weights.

`Ablation(variants, seeds=(0, 1, 2))` runs every variant once per seed (`config.seed`), in
`<workdir>/<label>/seed_<s>`, interleaved: seed 0 of every variant, then seed 1, ... so that a
stopped ablation has whole rounds to compare. Without seeds a variant runs once, with the
config's own seed, in `<workdir>/<label>`.

This module imports only ml_collections: loading a config must stay cheap.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections

# "{run:LABEL}" inside an override value: LABEL's run directory (an absolute path at run time).
RUN_REF = re.compile(r"\{run:([^{}]*)\}")
# Labels name directories and appear in commands: no spaces, slashes or shell characters.
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SEED_KEY = "seed"  # the config field a seeded run overrides


class Variant(NamedTuple):
  """One run of an ablation: `label` (its directory name), `overrides` (dotted key -> value)."""

  label: str
  overrides: Mapping[str, Any] = {}
  evaluates: str = ""  # label of a variant whose final checkpoint this one only re-evaluates


class Ablation(NamedTuple):
  """Variants, each run once per seed of `seeds` (empty: once, with the config's seed)."""

  variants: list[Variant]
  seeds: tuple[int, ...] = ()


class Run(NamedTuple):
  """One launch: a variant at one seed (None: the config's own seed, no seed directory)."""

  variant: Variant
  seed: int | None = None

  @property
  def name(self) -> str:
    """The run's directory relative to the ablation's workdir."""
    return self.variant.label if self.seed is None else f"{self.variant.label}/seed_{self.seed}"


def as_ablation(declared) -> Ablation:
  """A `get_ablations()` value (a list of Variants or an Ablation) as a checked Ablation."""
  ablation = declared if isinstance(declared, Ablation) else Ablation(list(declared))
  variants = list(ablation.variants)
  check_variants(variants)
  seeds = tuple(ablation.seeds)
  check_seeds(seeds)
  return Ablation(variants, seeds)


def check_seeds(seeds: Sequence[int]) -> None:
  """Raises ValueError unless `seeds` are distinct non-negative ints."""
  for s in seeds:
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
      raise ValueError(f"seeds must be non-negative ints, got {s!r} in {tuple(seeds)}")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {tuple(seeds)}")


def parse_seeds(text: str) -> tuple[int, ...]:
  """"0,1,2" -> (0, 1, 2); "3" alone means three seeds, (0, 1, 2); "" -> () (the config's)."""
  text = text.strip()
  if not text:
    return ()
  try:
    values = tuple(int(t) for t in text.split(","))
  except ValueError as e:
    raise ValueError(f"--seeds={text!r}: expected a count (3) or a comma-separated list of "
                     "seeds (0,1,2)") from e
  seeds = tuple(range(values[0])) if "," not in text else values
  if not seeds:
    raise ValueError(f"--seeds={text!r}: a single number is a count of seeds and must be "
                     "positive (seed 0 alone: --seeds=1; other seeds: a list, e.g. --seeds=0,2)")
  check_seeds(seeds)
  return seeds


def plan_runs(ablation: Ablation) -> list[Run]:
  """Every launch of the ablation, in run order.

  Seed rounds are interleaved (seed 0 of every variant, then seed 1, ...); inside a round each
  variant comes after the variants it refers to (`dependency_order`).
  """
  order = dependency_order(ablation.variants)
  seeds = ablation.seeds or (None,)
  return [Run(v, s) for s in seeds for v in order]


def select_variants(ablation: Ablation, labels: Sequence[str]) -> Ablation:
  """`ablation` cut down to the variants named in `labels` and those they refer to (transitively,
  so that `{run:LABEL}` and `evaluates` resolve), in declared order, with the same seeds.

  Raises ValueError naming a label that is not a variant of the ablation.
  """
  by_label = {v.label: v for v in ablation.variants}
  unknown = [label for label in labels if label not in by_label]
  if unknown:
    raise ValueError(f"--variants: {', '.join(map(repr, unknown))} not a variant of this "
                     f"ablation ({', '.join(by_label)})")
  keep: set[str] = set()
  stack = list(labels)
  while stack:
    label = stack.pop()
    if label not in keep:
      keep.add(label)
      stack += run_refs(by_label[label])
  return Ablation([v for v in ablation.variants if v.label in keep], ablation.seeds)


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


def dependency_order(variants: Sequence[Variant]) -> list[Variant]:
  """The variants in declared order, except that each comes after the variants it refers to.

  Raises ValueError for a reference cycle (and, through check_variants, unknown references).
  """
  check_variants(list(variants))
  by_label = {v.label: v for v in variants}
  done: list[Variant] = []
  visiting: list[str] = []

  def visit(v: Variant) -> None:
    if v in done:
      return
    if v.label in visiting:
      cycle = visiting[visiting.index(v.label):] + [v.label]
      raise ValueError(f"variants refer to each other in a cycle: {' -> '.join(cycle)}")
    visiting.append(v.label)
    for ref in run_refs(v):
      visit(by_label[ref])
    visiting.pop()
    done.append(v)

  for v in variants:
    visit(v)
  return done


def substitute_runs(overrides: Mapping[str, Any], run_dirs: Mapping[str, str]) -> dict[str, Any]:
  """`overrides` with every "{run:LABEL}" in a string value replaced by run_dirs[LABEL]."""
  def sub(value):
    if not isinstance(value, str):
      return value
    return RUN_REF.sub(lambda m: run_dirs[m.group(1)], value)
  return {k: sub(v) for k, v in overrides.items()}


def run_overrides(run: Run, variants: list[Variant],
                  run_dirs: Mapping[str, str]) -> dict[str, Any]:
  """What `run` launches with: its effective overrides, `{run:LABEL}` resolved in `run_dirs`
  (label -> directory of the same seed), and `seed` last when the ablation is seeded."""
  if run.seed is not None and SEED_KEY in effective_overrides(run.variant, variants):
    raise ValueError(f"variant {run.variant.label!r} overrides {SEED_KEY!r} inside a seeded "
                     "ablation; drop the override or the ablation's seeds")
  out = substitute_runs(effective_overrides(run.variant, variants), run_dirs)
  if run.seed is not None:
    out[SEED_KEY] = run.seed
  return out
