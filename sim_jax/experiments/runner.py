"""The resumable launch of an ablation's runs, then its table, JSON and plot (`run_ablation`).

Every run is its own `launch.py` process (XLA flags and memory are per process) in
`<workdir>/<label>` (`<workdir>/<label>/seed_<s>` in a seeded ablation), with
`--config.<key>=<value>` for the variant's overrides and then the `--set` ones (so `--set` has
the last word). Variants another one refers to (`{run:LABEL}`, `evaluates=LABEL`) run first.

Resumable: a run whose `final_metrics.json` exists is not run again, and an unfinished one
resumes from its checkpoint (launch.py's behaviour). A failed run does not stop the others. A
dataset that cannot be prepared here (a missing Debian package, a TFDS dataset not prepared and
no --allow_download) is reported as "not run" with the reason.
"""

from __future__ import annotations

import datetime
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from sim_jax.experiments import checks, commands, plots, tables
from sim_jax.experiments.tables import FINISHED, Result
from sim_jax.experiments.variants import (
    Ablation,
    Run,
    as_ablation,
    plan_runs,
    run_overrides,
    run_refs,
    select_variants,
)

FINAL = "final_metrics.json"
LOG = "log.txt"


class Experiment(NamedTuple):
  """What the runner reads from an experiment config module."""

  path: str  # the config file as given on the command line
  ablations: dict[str, Ablation]
  headline: tuple[str, ...]  # metric names of final_metrics.json; the first one is plotted


class Context(NamedTuple):
  """What every run of one invocation shares."""

  experiment: Experiment
  ablation: Ablation
  workdir: str  # absolute
  root: str  # the repository root: commands run from it, paths are shown relative to it
  sets: Sequence[tuple[str, str]] = ()
  extra: Sequence[str] = ()
  dry_run: bool = False
  allow_download: bool = False


def load_experiment(path: str) -> Experiment:
  """Imports the config file and returns its ablations and headline metrics."""
  spec = importlib.util.spec_from_file_location("sim_jax_experiment", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot import {path!r} as a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_ablations"):
    raise ValueError(f"{path} defines no get_ablations(); see sim_jax/experiments/variants.py")
  ablations = {name: as_ablation(declared) for name, declared in module.get_ablations().items()}
  headline = tuple(getattr(module, "HEADLINE", ()) or (module.get_config().eval.best_metric,))
  return Experiment(path, ablations, headline)


def run_dirs(ctx: Context, seed: int | None) -> dict[str, str]:
  """label -> the run directory of that variant at `seed`, as commands show it."""
  return {v.label: commands.display_path(os.path.join(ctx.workdir, Run(v, seed).name), ctx.root)
          for v in ctx.ablation.variants}


def config_differences(saved: Mapping, planned: Mapping, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two config dicts (tuples compare as lists)."""
  out = []
  for key in sorted(set(saved) | set(planned)):
    a, b = saved.get(key), planned.get(key)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += config_differences(a, b, f"{prefix}{key}.")
    elif json.loads(json.dumps(a, default=list)) != json.loads(json.dumps(b, default=list)):
      out.append(f"{prefix}{key}")
  return out


# --------------------------------------------------------------------------------------- running


def fmt_time(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s"


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


ATTEMPT_HEADER = "=== ablate.py "  # run_logged's first line of each attempt in a run's log


def _tail(path: str, n: int = 20) -> list[str]:
  """The last n lines of the latest attempt in a run's log (a resumed run appends to the log of
  the failed attempts before it, whose errors are not this attempt's)."""
  if not os.path.exists(path):
    return []
  with open(path, errors="replace") as f:
    lines = [line.rstrip("\n") for line in f.readlines()]
  starts = [i for i, line in enumerate(lines) if line.startswith(ATTEMPT_HEADER)]
  return lines[starts[-1] + 1 if starts else 0:][-n:]


def error_line(lines: Sequence[str]) -> str:
  """launch.py ends a failure with one "sim_jax: error: ..." line; else the last traceback line."""
  for line in reversed(lines):
    if line.startswith("sim_jax: error:"):
      return line
  for line in reversed(lines):
    if line.strip() and not line.startswith(" "):
      return line.strip()[:300]
  return ""


def run_logged(cmd: Sequence[str], log_path: str, prefix: str, root: str) -> int:
  """Runs launch.py from `root`, appending its output to log_path and echoing its progress."""
  start = time.time()
  with open(log_path, "a") as log:
    log.write(f"\n{ATTEMPT_HEADER}{datetime.datetime.now().isoformat(timespec='seconds')}: "
              f"{commands.shell_command(cmd)}\n")
    log.flush()
    # Installed without a clone, `root` has no launch.py: the same program is `-m sim_jax`.
    argv = ["-m", "sim_jax", *cmd[1:]] if cmd[0] == commands.LAUNCH and not os.path.isfile(
        os.path.join(root, commands.LAUNCH)) else list(cmd)
    proc = subprocess.Popen([sys.executable, *argv], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
      log.write(line)
      if "Setting work unit notes:" in line:  # CLU's progress: steps/s, percent, ETA
        note = line.split("Setting work unit notes:", 1)[1].strip()
        print(f"{prefix} {note} (elapsed {fmt_time(time.time() - start)})", flush=True)
    return proc.wait()


def finish_evaluation(run_dir: str, source: str, since: float) -> None:
  """Turns the eval_step<N>.json that --mode=evaluate wrote into the run's final_metrics.json."""
  written = [p for p in glob.glob(os.path.join(run_dir, "eval_step*.json"))
             if os.path.getmtime(p) >= since - 1]
  if not written:
    raise FileNotFoundError(f"--mode=evaluate wrote no eval_step*.json in {run_dir}")
  data = _read_json(max(written, key=os.path.getmtime))
  final = {"metrics": data["metrics"], "chance": data["chance"], "step": data["step"],
           "evaluates": source}
  if "floors" in data:
    final["floors"] = data["floors"]
  with open(os.path.join(run_dir, FINAL), "w") as f:
    json.dump(final, f, indent=2, sort_keys=True)


def link_checkpoints(run_dir: str, source_dir: str) -> None:
  """Makes `<run_dir>/checkpoints/<step>` links to the source run's step directories.

  --mode=evaluate reads `<workdir>/checkpoints`; its own eval_step*.json then stays in this
  variant's directory. Each step is linked on its own (relatively, so the ablation directory can
  be moved) rather than the whole directory: a step that fails to restore is moved aside to
  `checkpoints.corrupt/` by the checkpoint code, and that must move this link, never the source
  run's checkpoint.
  """
  source = os.path.join(source_dir, "checkpoints")
  own = os.path.join(run_dir, "checkpoints")
  if os.path.islink(own):
    raise FileExistsError(f"{own} is a link; remove it (ablate.py now links each step)")
  os.makedirs(own, exist_ok=True)
  steps = [d for d in os.listdir(source) if d.isdigit()] if os.path.isdir(source) else []
  if not steps:
    raise FileNotFoundError(f"{source} holds no checkpoint to evaluate")
  for step in steps:
    link = os.path.join(own, step)
    if not os.path.lexists(link):
      os.symlink(os.path.relpath(os.path.join(source, step), own), link)


def run_one(run: Run, index: int, total: int, ctx: Context, done: Mapping[tuple, Result],
            seconds_before: Mapping[str, float]) -> Result:
  """Plans, checks and (unless finished before, blocked or dry) launches one run.

  `done`: (label, seed) -> the results of the runs launched before this one; `seconds_before`:
  run name -> run time an earlier invocation recorded.
  """
  v = run.variant
  dirs = run_dirs(ctx, run.seed)
  run_dir = dirs[v.label]
  cmd = [commands.LAUNCH]
  prefix = f"[{index}/{total}] {v.label}" + ("" if run.seed is None else f" seed {run.seed}") + ":"
  log = os.path.join(run_dir, LOG)
  result = Result(run, cmd, "dry run" if ctx.dry_run else "ok", log=log)
  try:
    overrides = run_overrides(run, ctx.ablation.variants, dirs)
    cmd = commands.launch_command(commands.display_path(ctx.experiment.path, ctx.root), run_dir,
                                  overrides, ctx.sets, evaluate=bool(v.evaluates),
                                  extra=ctx.extra)
  except (ValueError, TypeError) as e:
    print(f"{prefix} invalid: {e}", flush=True)
    return result._replace(status="invalid", detail=str(e))
  result = result._replace(command=cmd)
  abs_run = os.path.join(ctx.root, run_dir)
  final = os.path.join(abs_run, FINAL)

  blocked = [f"{ref} ({done[ref, run.seed].status})" for ref in run_refs(v)
             if done[ref, run.seed].status not in (*FINISHED, "dry run")]
  if blocked:
    print(f"{prefix} not run: needs {', '.join(blocked)}", flush=True)
    return result._replace(status="not run", detail=f"needs {', '.join(blocked)}")
  try:
    config = commands.child_config(cmd, ctx.root)
    checks.check_config(config)
  except Exception as e:  # noqa: BLE001  (report the variant, run the others)
    print(f"{prefix} invalid config: {e}", flush=True)
    return result._replace(status="invalid", detail=str(e))

  if os.path.exists(final):
    saved = os.path.join(abs_run, "config.json")
    if not v.evaluates and os.path.exists(saved):
      changed = config_differences(_read_json(saved), json.loads(config.to_json_best_effort()))
      if changed:
        print(f"{prefix} WARNING: its finished run used other values of {', '.join(changed)}; "
              f"delete {run_dir} to re-run it with this config", flush=True)
    print(f"{prefix} finished earlier ({FINAL} exists): not re-run", flush=True)
    return tables.from_final(result._replace(status="cached",
                                             seconds=seconds_before.get(run.name)),
                             _read_json(final))

  missing = checks.dataset_unavailable(config.data, ctx.allow_download)
  if missing:
    print(f"{prefix} not run: {missing}", flush=True)
    return result._replace(status="not run", detail=missing)
  if ctx.dry_run:
    print(f"{prefix} {commands.shell_command(cmd)}", flush=True)
    return result

  print(f"{prefix} running (log: {log})", flush=True)
  os.makedirs(abs_run, exist_ok=True)
  start = time.time()
  try:
    if v.evaluates:
      link_checkpoints(abs_run, os.path.join(ctx.root, dirs[v.evaluates]))
    code = run_logged(cmd, os.path.join(ctx.root, log), prefix, ctx.root)
    if code == 0 and v.evaluates:
      finish_evaluation(abs_run, v.evaluates, start)
  except Exception as e:  # noqa: BLE001  (a broken variant must not stop the ablation)
    code, detail = -1, f"{type(e).__name__}: {e}"
  else:
    detail = error_line(_tail(os.path.join(ctx.root, log)))
  seconds = time.time() - start
  if code != 0 or not os.path.exists(final):
    detail = detail if code != 0 else f"exit code 0 but no {FINAL} (preempted?)"
    print(f"{prefix} FAILED after {fmt_time(seconds)} (exit code {code}): {detail}", flush=True)
    return result._replace(status="failed", exit_code=code, detail=detail, seconds=seconds)
  out = tables.from_final(result._replace(exit_code=0, seconds=seconds), _read_json(final))
  head = ctx.experiment.headline[0]
  value = out.metrics.get(head)
  print(f"{prefix} done in {fmt_time(seconds)}: {head} "
        f"{'-' if value is None else f'{value:.4f}'}", flush=True)
  return out


# ------------------------------------------------------------------------------------- outputs


def command_text(argv: Sequence[str]) -> str:
  return commands.shell_command(list(argv))


def write_outputs(ctx: Context, name: str, results: Sequence[Result], argv: Sequence[str]) -> str:
  """Writes ablation.json (everything), ablation.md and ablation.png; returns the table."""
  experiment, workdir = ctx.experiment, ctx.workdir
  headline = experiment.headline
  table_rows = tables.rows(results, ctx.ablation.variants)
  now = datetime.datetime.now().isoformat(timespec="minutes")
  config = commands.display_path(experiment.path, ctx.root)
  with open(os.path.join(workdir, "ablation.json"), "w") as f:
    json.dump({"config": config, "ablation": name, "headline": list(headline),
               "seeds": list(ctx.ablation.seeds), "floors": list(tables.FLOORS),
               "sets": [f"{k}={v}" for k, v in ctx.sets], "command": command_text(argv),
               "written": now, "cpu_count": os.cpu_count(),
               "variants": [tables.row_record(row, headline) for row in table_rows]},
              f, indent=2)
  table = tables.render_table(table_rows, headline, f"Ablation `{name}` of `{config}`")
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(table + f"\nWritten {now} by `{command_text(argv)}` on a machine with "
            f"{os.cpu_count()} CPU cores.\n")
  curves = {row.variant.label: [plots.eval_curve(os.path.join(workdir, r.run.name), headline[0])
                                for r in row.finished] for row in table_rows}
  plots.write_plot(os.path.join(workdir, "ablation.png"), table_rows, headline[0], curves)
  return table


def previous_seconds(workdir: str) -> dict[str, float]:
  """Run name -> seconds, from an earlier ablation.json: a cached run keeps its run time."""
  path = os.path.join(workdir, "ablation.json")
  if not os.path.exists(path):
    return {}
  try:
    out = {}
    for v in _read_json(path)["variants"]:
      for r in v.get("runs", [v]):  # records written before seeds held one run per variant
        if r.get("seconds") is not None:
          out[r.get("run", r["label"])] = r["seconds"]
    return out
  except (ValueError, KeyError, TypeError, AttributeError):
    return {}


def run_ablation(experiment: Experiment, name: str, workdir: str, *, root: str,
                 sets: Sequence[tuple[str, str]] = (), extra: Sequence[str] = (),
                 seeds: tuple[int, ...] | None = None, only: Sequence[str] | None = None,
                 dry_run: bool = False, allow_download: bool = False,
                 argv: Sequence[str] = ()) -> int:
  """Runs (or, with `dry_run`, checks) every run of ablation `name`; returns the exit code:
  1 if any run failed or was invalid, else 0. `seeds` (not None) replaces the declared ones;
  `only` (not None) keeps those variants and the ones they refer to (`select_variants`)."""
  ablation = experiment.ablations[name]
  if seeds is not None:
    ablation = as_ablation(Ablation(ablation.variants, seeds))
  if only is not None:
    ablation = select_variants(ablation, only)
  ctx = Context(experiment, ablation, os.path.abspath(workdir), root, tuple(sets), tuple(extra),
                dry_run, allow_download)
  before = previous_seconds(ctx.workdir)
  planned = plan_runs(ablation)
  done: dict[tuple, Result] = {}
  start = time.time()
  for i, run in enumerate(planned, 1):
    done[run.variant.label, run.seed] = run_one(run, i, len(planned), ctx, done, before)
  results = [done[r.variant.label, r.seed] for r in sorted(
      planned, key=lambda r: ([v.label for v in ablation.variants].index(r.variant.label),
                              -1 if r.seed is None else ablation.seeds.index(r.seed)))]
  bad = [r.run.name for r in results if r.status in ("failed", "invalid")]
  print(f"{len(results)} runs in {fmt_time(time.time() - start)}: "
        f"{sum(r.status in FINISHED for r in results)} finished, {len(bad)} failed, "
        f"{sum(r.status == 'not run' for r in results)} not run.")
  if dry_run:
    return 1 if bad else 0
  os.makedirs(ctx.workdir, exist_ok=True)
  print(write_outputs(ctx, name, results, argv))
  print(f"Wrote {os.path.join(commands.display_path(ctx.workdir, root), 'ablation.md')}, "
        "ablation.json, ablation.png")
  if bad:
    print(f"Failed: {', '.join(bad)}", file=sys.stderr)
    return 1
  return 0
