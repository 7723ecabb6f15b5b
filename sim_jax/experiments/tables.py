"""The outcome of each run, a variant's seeds aggregated, and the markdown / JSON records.

Each metric is shown beside its chance level (the same evaluator on random embeddings) and two
floors (`final_metrics.json` "floors", the same evaluator on the flattened L2-normalised pixels
and on the untrained encoder), so that a row says at a glance how much training added. A run
written before floors existed shows "n/a" there. Over several seeds a cell is the mean and,
after it, the range: "0.8123 (0.8011–0.8240)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from sim_jax.experiments.commands import shell_command
from sim_jax.experiments.variants import Run, Variant

# final_metrics.json "floors" keys -> table column names, in column order.
FLOORS = {"raw_pixels": "raw pixels", "random_init": "random init"}
FINISHED = ("ok", "cached")
NOT_AVAILABLE = "n/a"


class Result(NamedTuple):
  """The outcome of one run (one variant at one seed)."""

  run: Run
  command: list[str]  # argv without the interpreter: ["launch.py", "--config=...", ...]
  status: str  # ok | cached | failed | invalid | not run | dry run
  detail: str = ""  # why it failed / was not run
  exit_code: int | None = None
  metrics: Mapping[str, float] = {}
  chance: Mapping[str, float] = {}
  floors: Mapping[str, Mapping[str, float]] = {}  # "raw_pixels" / "random_init" -> metrics
  seconds: float | None = None
  log: str = ""

  @property
  def variant(self) -> Variant:
    return self.run.variant


def from_final(result: Result, final: Mapping) -> Result:
  """`result` with the numbers of a final_metrics.json (floors absent in old runs: {})."""
  floors = {k: dict(v) for k, v in (final.get("floors") or {}).items() if isinstance(v, Mapping)}
  return result._replace(metrics=dict(final.get("metrics", {})),
                         chance=dict(final.get("chance", {})), floors=floors)


class Summary(NamedTuple):
  """min, mean and max of one number over the seeds that reported it (n of them)."""

  mean: float
  low: float
  high: float
  n: int


def summarize(values: Sequence[float]) -> Summary | None:
  """None for no value; else mean and range, in float64."""
  if not values:
    return None
  v = np.asarray(values, np.float64)
  return Summary(float(v.mean()), float(v.min()), float(v.max()), len(v))


def format_summary(s: Summary | None, missing: str = "-") -> str:
  """"0.8123", or "0.8123 (0.8011–0.8240)" when the seeds differ; `missing` for None."""
  if s is None:
    return missing
  text = f"{s.mean:.4f}"
  if s.n > 1 and s.high > s.low:
    text += f" ({s.low:.4f}–{s.high:.4f})"
  return text


class Row(NamedTuple):
  """One variant: its runs (one per seed, in seed order) and their aggregate."""

  variant: Variant
  results: list[Result]

  @property
  def finished(self) -> list[Result]:
    return [r for r in self.results if r.status in FINISHED]

  def metric(self, name: str) -> Summary | None:
    return summarize([r.metrics[name] for r in self.finished if name in r.metrics])

  def chance(self, name: str) -> Summary | None:
    return summarize([r.chance[name] for r in self.finished if name in r.chance])

  def floor(self, floor: str, name: str) -> Summary | None:
    return summarize([r.floors[floor][name] for r in self.finished
                      if name in r.floors.get(floor, {})])

  @property
  def seconds(self) -> float | None:
    known = [r.seconds for r in self.results if r.seconds is not None]
    return sum(known) if known else None

  @property
  def seeds(self) -> list[int]:
    return [r.run.seed for r in self.results if r.run.seed is not None]

  @property
  def status(self) -> str:
    """A single run's status; for seeds "ok" when all finished, else which seed did what."""
    if len(self.results) == 1:
      return status_text(self.results[0])
    if all(r.status in FINISHED for r in self.results):
      return "cached" if all(r.status == "cached" for r in self.results) else "ok"
    if all(r.status == "dry run" for r in self.results):
      return "dry run"
    return "; ".join(f"seed {r.run.seed}: {status_text(r)}" for r in self.results
                     if r.status not in FINISHED)


def rows(results: Sequence[Result], variants: Sequence[Variant]) -> list[Row]:
  """The results grouped per variant, in declared order, seeds in run order."""
  return [Row(v, [r for r in results if r.variant.label == v.label]) for v in variants]


def status_text(result: Result) -> str:
  if result.status in FINISHED:
    return result.status
  if result.status == "failed":
    return (f"failed: exit code {result.exit_code}" + (f": {result.detail}" if result.detail
                                                       else "") + f" (log: {result.log})")
  return f"{result.status}: {result.detail}" if result.detail else result.status


def _md(text: str) -> str:
  # A table cell: one line, no column breaks.
  return " ".join(str(text).split()).replace("|", "\\|")


def metric_cells(row: Row, name: str) -> list[str]:
  """The metric, its chance level and its floors; "-" everywhere when the metric is absent."""
  value = row.metric(name)
  if value is None:
    return ["-"] * (2 + len(FLOORS))
  return [format_summary(value), format_summary(row.chance(name), NOT_AVAILABLE),
          *(format_summary(row.floor(f, name), NOT_AVAILABLE) for f in FLOORS)]


def seeds_cell(row: Row) -> str:
  """"0, 1, 2", or "0, 2 of 0, 1, 2" when some seeds did not finish."""
  done = [str(r.run.seed) for r in row.finished]
  every = [str(s) for s in row.seeds]
  return ", ".join(every) if done == every else f"{', '.join(done) or 'none'} of {', '.join(every)}"


def render_table(table_rows: Sequence[Row], headline: Sequence[str], title: str = "") -> str:
  """The markdown table: one row per variant; per headline metric its value, chance level and
  floors; a seeds column when the ablation is seeded; seconds (all seeds) and the command (the
  first seed's; the others differ only in `--config.seed` and the directory)."""
  seeded = any(row.seeds for row in table_rows)
  header = ["variant", "status"] + (["seeds"] if seeded else [])
  for h in headline:
    header += [f"`{h}`", "chance", *FLOORS.values()]
  header += ["seconds", "command"]
  lines = [f"## {title}", ""] if title else []
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table_rows:
    seconds = "-" if row.seconds is None else f"{row.seconds:.0f}"
    cells = [row.variant.label, row.status] + ([seeds_cell(row)] if seeded else [])
    for h in headline:
      cells += metric_cells(row, h)
    cells += [seconds, f"`{shell_command(row.results[0].command)}`"]
    lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
  lines += ["", "Beside each metric: its chance level (the same metric on random embeddings) and "
            "its floors, scored by the same evaluator on the flattened L2-normalised pixels (raw "
            "pixels) and on the untrained encoder (random init); n/a: not recorded by that run."]
  if seeded:
    lines.append("Over seeds: mean (min–max) of the seeds that finished; seconds summed.")
  lines.append("Commands run from the repository root.")
  return "\n".join(lines) + "\n"


def _summary_record(s: Summary | None) -> dict | None:
  return None if s is None else {"mean": s.mean, "min": s.low, "max": s.high, "n": s.n}


def result_record(r: Result) -> dict:
  """Everything about one run, as ablation.json lists it."""
  return {"label": r.variant.label, "seed": r.run.seed, "run": r.run.name,
          "command": shell_command(r.command), "status": r.status, "detail": r.detail,
          "exit_code": r.exit_code, "metrics": dict(r.metrics), "chance": dict(r.chance),
          "floors": {k: dict(v) for k, v in r.floors.items()}, "seconds": r.seconds,
          "log": r.log}


def row_record(row: Row, headline: Sequence[str]) -> dict:
  """One variant in ablation.json: its declaration, its runs, and per headline metric the
  summaries over seeds of the metric, its chance level and its floors."""
  summary = {h: {"metric": _summary_record(row.metric(h)),
                 "chance": _summary_record(row.chance(h)),
                 **{f: _summary_record(row.floor(f, h)) for f in FLOORS}} for h in headline}
  return {"label": row.variant.label, "overrides": dict(row.variant.overrides),
          "evaluates": row.variant.evaluates, "status": row.status, "seeds": row.seeds,
          "seconds": row.seconds, "summary": summary,
          "runs": [result_record(r) for r in row.results]}
