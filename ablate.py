r"""Runs one ablation of an experiment config, then writes a markdown table and plots.

  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/icons_attention
  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/icons_attention \
      --set train.steps=300 --set train.eval_every=100
  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/x --dry_run
  python ablate.py --config=configs/icons.py          # lists the config's ablations

The config declares `get_ablations()` and `HEADLINE` (see configs/ablation.py). Every variant is
its own `launch.py` process (XLA flags and memory are per process) in `<workdir>/<label>`, with
`--config.<key>=<value>` for the variant's overrides and then the `--set` ones (so `--set` has the
last word). Variants another one refers to (`{run:LABEL}`, `evaluates=LABEL`) run first.

Resumable: a variant whose `final_metrics.json` exists is not run again, and an unfinished one
resumes from its checkpoint (launch.py's behaviour). A failed variant does not stop the others;
the script exits with 1 at the end if any failed. A TFDS dataset that is not prepared in data_dir
is reported as "not run" with the reason (`--allow_download` launches it anyway).

Writes `<workdir>/ablation.json` (everything), `<workdir>/ablation.md` (one row per variant: the
headline metrics with their chance levels and the command that reproduces the row, to be run
from the repository root) and `<workdir>/ablation.png` (the first headline metric per variant,
and over training steps where the runs logged it).
"""

from __future__ import annotations

import datetime
import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from absl import app, flags

from configs.ablation import RUN_REF, Variant, check_variants, effective_overrides, run_refs

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
LAUNCH = "launch.py"
FINAL = "final_metrics.json"
LOG = "log.txt"

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined when run as a script only, so that tests can import the functions below next to
  # other modules that define absl flags of the same names.
  flags.DEFINE_string("config", None, "Experiment config file (a configs/*.py with "
                      "get_ablations()).")
  flags.DEFINE_string("ablation", None, "Name of the ablation to run (omit to list them).")
  flags.DEFINE_string("workdir", None, "Directory of the ablation: one sub-directory per "
                      "variant.")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every variant, in "
                            "launch.py's --config.KEY=VALUE syntax (repeatable; applied last).")
  flags.DEFINE_multi_string("launch_args", [], "Extra launch.py flag for every variant, e.g. "
                            "--launch_args=--compilation_cache=/tmp/cache (repeatable).")
  flags.DEFINE_bool("dry_run", False, "Check every variant's config and print the commands; "
                    "run and write nothing.")
  flags.DEFINE_bool("allow_download", False, "Launch variants whose TFDS dataset is not "
                    "prepared (launch.py then downloads it) instead of reporting them as not "
                    "run.")


class Experiment(NamedTuple):
  """What ablate.py reads from an experiment config module."""

  path: str  # the config file as given on the command line
  ablations: dict[str, list[Variant]]
  headline: tuple[str, ...]  # metric names of final_metrics.json; the first one is plotted


class Result(NamedTuple):
  """The outcome of one variant (one row of the table)."""

  variant: Variant
  command: list[str]  # argv without the interpreter: ["launch.py", "--config=...", ...]
  status: str  # ok | cached | failed | invalid | not run | dry run
  detail: str = ""  # why it failed / was not run
  exit_code: int | None = None
  metrics: Mapping[str, float] = {}
  chance: Mapping[str, float] = {}
  seconds: float | None = None
  log: str = ""


# ------------------------------------------------------------------------ pure parts (tested)


def load_experiment(path: str) -> Experiment:
  """Imports the config file and returns its ablations and headline metrics."""
  spec = importlib.util.spec_from_file_location("sim_jax_experiment", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot import {path!r} as a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_ablations"):
    raise ValueError(f"{path} defines no get_ablations(); see configs/ablation.py")
  ablations = {name: list(variants) for name, variants in module.get_ablations().items()}
  for variants in ablations.values():
    check_variants(variants)
  headline = tuple(getattr(module, "HEADLINE", ()) or (module.get_config().eval.best_metric,))
  return Experiment(path, ablations, headline)


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


def flag_value(value: Any) -> str:
  """`value` as ml_collections' config_flags parses it back from `--config.KEY=<text>`.

  Bools as true/false (absl's BooleanParser), tuples as a Python literal (TupleParser runs
  ast.literal_eval), strings as they are (a str field keeps the text verbatim). None cannot be
  written: the int / float / str parsers of a placeholder field refuse or keep the text "None".
  """
  if value is None:
    raise ValueError("None cannot be passed on the command line (config_flags parses the text "
                     "'None' with the field's type); leave the field at the config's default")
  if isinstance(value, bool):  # before int: bool is an int
    return "true" if value else "false"
  if isinstance(value, (int, str)):
    return str(value)
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  raise TypeError(f"cannot write {type(value).__name__} {value!r} as a config flag")


def parse_sets(sets: Iterable[str]) -> list[tuple[str, str]]:
  """`--set KEY=VALUE` strings -> [(KEY, VALUE)]; VALUE stays text for launch.py to parse."""
  out = []
  for item in sets:
    key, sep, value = item.partition("=")
    key = key.strip().removeprefix("--config.").removeprefix("config.")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
      raise ValueError(f"--set {item!r}: expected KEY=VALUE with a dotted config key, e.g. "
                       "--set train.steps=300")
    out.append((key, value))
  return out


def launch_command(config_path: str, run_dir: str, overrides: Mapping[str, Any],
                   sets: Sequence[tuple[str, str]] = (), evaluate: bool = False,
                   extra: Sequence[str] = ()) -> list[str]:
  """launch.py's argv (without the interpreter) for one variant; `overrides` already resolved.

  The variant's overrides come before the `--set` ones: for a flag given twice, absl keeps the
  last, so `--set` has the last word.
  """
  cmd = [LAUNCH, f"--config={config_path}", f"--workdir={run_dir}"]
  if evaluate:
    cmd.append("--mode=evaluate")
  cmd += [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]
  cmd += [f"--config.{k}={v}" for k, v in sets]
  return cmd + list(extra)


def shell_command(cmd: Sequence[str]) -> str:
  """The command as one would type it (from the repository root)."""
  return " ".join(["python", *(shlex.quote(a) for a in cmd)])


def _md(text: str) -> str:
  # A table cell: one line, no column breaks.
  return " ".join(str(text).split()).replace("|", "\\|")


def format_metric(result: Result, name: str) -> str:
  """"0.8123 (0.4975)": the value and, in parentheses, its chance level; "-" when absent."""
  if name not in result.metrics:
    return "-"
  value = f"{result.metrics[name]:.4f}"
  if name in result.chance:
    value += f" ({result.chance[name]:.4f})"
  return value


def status_text(result: Result) -> str:
  if result.status in ("ok", "cached"):
    return result.status
  if result.status == "failed":
    return (f"failed: exit code {result.exit_code}" + (f": {result.detail}" if result.detail
                                                       else "") + f" (log: {result.log})")
  return f"{result.status}: {result.detail}" if result.detail else result.status


def render_table(results: Sequence[Result], headline: Sequence[str], title: str = "") -> str:
  """The markdown table: one row per variant, the headline metrics, seconds and the command."""
  lines = [f"## {title}", ""] if title else []
  lines += ["| variant | status | " + " | ".join(f"`{h}`" for h in headline) + " | seconds | "
            "command |",
            "|---|---|" + "---|" * len(headline) + "---|---|"]
  for r in results:
    seconds = "-" if r.seconds is None else f"{r.seconds:.0f}"
    cells = [r.variant.label, status_text(r), *(format_metric(r, h) for h in headline), seconds,
             f"`{shell_command(r.command)}`"]
    lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
  lines += ["", "Metric cells: value (chance level: the same metric on random embeddings). "
            "Commands run from the repository root."]
  return "\n".join(lines) + "\n"


def display_path(path: str) -> str:
  """Relative to the repository root when inside it (commands then read naturally), else as is."""
  path = os.path.abspath(path)
  rel = os.path.relpath(path, REPO_ROOT)
  return path if rel == ".." or rel.startswith(".." + os.sep) else rel


# --------------------------------------------------------------------- checks before launching


def child_config(cmd: Sequence[str]):
  """The ConfigDict that launch.py builds from `cmd`'s --config flags (same parser, same file)."""
  from ml_collections import config_flags
  argv = ["launch.py"] + [a for a in cmd if a.startswith("--config")]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  try:
    fv(argv)
  except Exception as e:  # noqa: BLE001  (absl, KeyError, TypeError: name the flags instead)
    raise ValueError(f"launch.py would refuse these flags: {type(e).__name__}: {e}") from e
  return fv.config


def check_config(config) -> None:
  """Every check that fails before training starts: the trainer's own, and each part's."""
  from sim_jax import models, train
  from sim_jax.data import augment, pipeline
  from sim_jax.eval import evaluators
  train.validate_config(config)
  pipeline.validate_train_args(config.data, config.train.batch_size, 1)
  models.get_model(config.model)
  evaluators.get_evaluators(config.eval)
  if config.data.augment.name != "none":
    augment.make_augment_fn(config.data.augment)


def dataset_unavailable(data_config) -> str:
  """Why the variant's dataset cannot be read here ("" if it can or will be built offline)."""
  from sim_jax.data import registry
  from sim_jax.data.builders import common
  name = str(data_config.name)
  if name in registry.DATASETS:
    return ""  # sim_jax's own builders render offline on first use
  import tensorflow_datasets as tfds
  data_dir = data_config.data_dir or common.default_data_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  (DatasetNotFoundError and friends)
    return f"unknown dataset {name!r} ({type(e).__name__})"
  if builder.is_prepared():
    return ""
  return (f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and this run does not "
          f"download (prepare it with `tfds build {name} --file_format=array_record "
          f"--data_dir={data_dir}` where there is network, or pass --allow_download)")


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


def _fmt_time(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s"


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _tail(path: str, n: int = 20) -> list[str]:
  if not os.path.exists(path):
    return []
  with open(path, errors="replace") as f:
    return [line.rstrip("\n") for line in f.readlines()[-n:]]


def _error_line(lines: Sequence[str]) -> str:
  # launch.py ends a failure with one "sim_jax: error: ..." line; else the last traceback line.
  for line in reversed(lines):
    if line.startswith("sim_jax: error:"):
      return line
  for line in reversed(lines):
    if line.strip() and not line.startswith(" "):
      return line.strip()[:300]
  return ""


def run_logged(cmd: Sequence[str], log_path: str, prefix: str) -> int:
  """Runs launch.py, appending its output to log_path and echoing its progress lines."""
  start = time.time()
  with open(log_path, "a") as log:
    log.write(f"\n=== ablate.py {datetime.datetime.now().isoformat(timespec='seconds')}: "
              f"{shell_command(cmd)}\n")
    log.flush()
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
      log.write(line)
      if "Setting work unit notes:" in line:  # CLU's progress: steps/s, percent, ETA
        note = line.split("Setting work unit notes:", 1)[1].strip()
        print(f"{prefix} {note} (elapsed {_fmt_time(time.time() - start)})", flush=True)
    return proc.wait()


def _finish_evaluation(run_dir: str, source: str, since: float) -> None:
  """Turns the eval_step<N>.json that --mode=evaluate wrote into the run's final_metrics.json."""
  written = [p for p in glob.glob(os.path.join(run_dir, "eval_step*.json"))
             if os.path.getmtime(p) >= since - 1]
  if not written:
    raise FileNotFoundError(f"--mode=evaluate wrote no eval_step*.json in {run_dir}")
  data = _read_json(max(written, key=os.path.getmtime))
  with open(os.path.join(run_dir, FINAL), "w") as f:
    json.dump({"metrics": data["metrics"], "chance": data["chance"], "step": data["step"],
               "evaluates": source}, f, indent=2, sort_keys=True)


def _link_checkpoints(run_dir: str, source_dir: str) -> None:
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


def run_variant(v: Variant, index: int, total: int, *, experiment: Experiment,
                variants: list[Variant], run_dirs: Mapping[str, str], sets,
                extra: Sequence[str], done: Mapping[str, Result],
                seconds_before: Mapping[str, float], dry_run: bool,
                allow_download: bool) -> Result:
  """Plans, checks and (unless finished before, blocked or dry) runs one variant.

  `variants`: the whole ablation; `run_dirs`: label -> run directory as commands show it;
  `done`: the results of the variants run before this one; `seconds_before`: run times an
  earlier invocation recorded.
  """
  run_dir = run_dirs[v.label]
  overrides = substitute_runs(effective_overrides(v, variants), run_dirs)
  cmd = launch_command(display_path(experiment.path), run_dir, overrides, sets,
                       evaluate=bool(v.evaluates), extra=extra)
  prefix = f"[{index}/{total}] {v.label}:"
  log = os.path.join(run_dir, LOG)
  result = Result(v, cmd, "dry run" if dry_run else "ok", log=log)
  abs_run = os.path.join(REPO_ROOT, run_dir)
  final = os.path.join(abs_run, FINAL)

  blocked = [f"{ref} ({done[ref].status})" for ref in run_refs(v)
             if done[ref].status not in ("ok", "cached", "dry run")]
  if blocked:
    print(f"{prefix} not run: needs {', '.join(blocked)}", flush=True)
    return result._replace(status="not run", detail=f"needs {', '.join(blocked)}")
  try:
    config = child_config(cmd)
    check_config(config)
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
    data = _read_json(final)
    seconds = seconds_before.get(v.label)
    print(f"{prefix} finished earlier ({FINAL} exists): not re-run", flush=True)
    return result._replace(status="cached", metrics=data.get("metrics", {}),
                           chance=data.get("chance", {}), seconds=seconds)

  missing = "" if allow_download else dataset_unavailable(config.data)
  if missing:
    print(f"{prefix} not run: {missing}", flush=True)
    return result._replace(status="not run", detail=missing)
  if dry_run:
    print(f"{prefix} {shell_command(cmd)}", flush=True)
    return result

  print(f"{prefix} running (log: {log})", flush=True)
  os.makedirs(abs_run, exist_ok=True)
  start = time.time()
  try:
    if v.evaluates:
      _link_checkpoints(abs_run, os.path.join(REPO_ROOT, run_dirs[v.evaluates]))
    code = run_logged(cmd, os.path.join(REPO_ROOT, log), prefix)
    if code == 0 and v.evaluates:
      _finish_evaluation(abs_run, v.evaluates, start)
  except Exception as e:  # noqa: BLE001  (a broken variant must not stop the ablation)
    code, detail = -1, f"{type(e).__name__}: {e}"
  else:
    detail = _error_line(_tail(os.path.join(REPO_ROOT, log)))
  seconds = time.time() - start
  if code != 0 or not os.path.exists(final):
    detail = detail if code != 0 else f"exit code 0 but no {FINAL} (preempted?)"
    print(f"{prefix} FAILED after {_fmt_time(seconds)} (exit code {code}): {detail}", flush=True)
    return result._replace(status="failed", exit_code=code, detail=detail, seconds=seconds)
  data = _read_json(final)
  head = experiment.headline[0]
  value = data["metrics"].get(head)
  print(f"{prefix} done in {_fmt_time(seconds)}: {head} "
        f"{'-' if value is None else f'{value:.4f}'}", flush=True)
  return result._replace(status="ok", exit_code=0, metrics=data["metrics"],
                         chance=data.get("chance", {}), seconds=seconds)


# ------------------------------------------------------------------------------------- outputs


def eval_curve(run_dir: str, metric: str) -> list[tuple[int, float]]:
  """`metric` over training steps: from eval_step<N>.json files, else the TensorBoard events."""
  points = []
  for path in glob.glob(os.path.join(run_dir, "eval_step*.json")):
    data = _read_json(path)
    if metric in data.get("metrics", {}):
      points.append((int(data["step"]), float(data["metrics"][metric])))
  if points or not glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
    return sorted(points)
  import logging
  logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader logs every file
  from sim_jax.eval import plots
  return sorted(plots.read_scalars(run_dir).get(f"eval/{metric}", []))


def write_plot(path: str, results: Sequence[Result], metric: str, curves) -> None:
  """Bar chart of `metric` per variant (chance as a tick), and its curve over steps if any."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = {k: v for k, v in curves.items() if v}
  fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 6.5, 4.2),
                           squeeze=False)
  ax = axes[0, 0]
  labels = [r.variant.label for r in results]
  values = [r.metrics.get(metric, 0.0) for r in results]
  bars = ax.bar(range(len(results)), values, color="tab:blue")
  labelled = False
  for i, r in enumerate(results):
    if metric in r.chance:
      ax.plot([i - 0.4, i + 0.4], [r.chance[metric]] * 2, color="black", lw=1.5,
              label=None if labelled else "chance")
      labelled = True
    text = f"{r.metrics[metric]:.3f}" if metric in r.metrics else r.status
    ax.annotate(text, (bars[i].get_x() + bars[i].get_width() / 2, bars[i].get_height()),
                ha="center", va="bottom", fontsize=8)
  ax.set_xticks(range(len(results)), labels, rotation=20, ha="right")
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} per variant")
  if any(metric in r.chance for r in results):
    ax.legend(loc="lower right", fontsize=8)
  if curves:
    ax2 = axes[0, 1]
    for label, points in curves.items():
      steps, vals = zip(*points)
      ax2.plot(steps, vals, marker="o", ms=3, label=label)
    ax2.set_xlabel("step")
    ax2.set_ylabel(metric)
    ax2.set_title(f"{metric} during training")
    ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def result_record(r: Result) -> dict:
  return {"label": r.variant.label, "overrides": dict(r.variant.overrides),
          "evaluates": r.variant.evaluates, "command": shell_command(r.command),
          "status": r.status, "detail": r.detail, "exit_code": r.exit_code,
          "metrics": dict(r.metrics), "chance": dict(r.chance), "seconds": r.seconds,
          "log": r.log}


def ablate_command(argv: Sequence[str]) -> str:
  return " ".join(["python", *(shlex.quote(a) for a in argv)])


def write_outputs(workdir: str, experiment: Experiment, ablation: str, results: Sequence[Result],
                  sets, argv: Sequence[str]) -> None:
  headline = experiment.headline
  now = datetime.datetime.now().isoformat(timespec="minutes")
  with open(os.path.join(workdir, "ablation.json"), "w") as f:
    json.dump({"config": display_path(experiment.path), "ablation": ablation,
               "headline": list(headline), "sets": [f"{k}={v}" for k, v in sets],
               "command": ablate_command(argv), "written": now, "cpu_count": os.cpu_count(),
               "variants": [result_record(r) for r in results]}, f, indent=2)
  title = f"Ablation `{ablation}` of `{display_path(experiment.path)}`"
  table = render_table(results, headline, title)
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(table + f"\nWritten {now} by `{ablate_command(argv)}` on a machine with "
            f"{os.cpu_count()} CPU cores.\n")
  curves = {r.variant.label: eval_curve(os.path.join(workdir, r.variant.label), headline[0])
            for r in results if r.status in ("ok", "cached")}
  write_plot(os.path.join(workdir, "ablation.png"), results, headline[0], curves)


def _previous_seconds(workdir: str) -> dict[str, float]:
  # A cached variant keeps the run time recorded when it ran.
  path = os.path.join(workdir, "ablation.json")
  if not os.path.exists(path):
    return {}
  try:
    return {v["label"]: v["seconds"] for v in _read_json(path)["variants"]
            if v.get("seconds") is not None}
  except (ValueError, KeyError, TypeError):
    return {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.config:
    raise app.UsageError("--config is required")
  experiment = load_experiment(FLAGS.config)
  if not FLAGS.ablation:
    print(f"Ablations of {FLAGS.config}:")
    for name, variants in experiment.ablations.items():
      print(f"  {name}: {', '.join(v.label for v in variants)}")
    return 0
  if FLAGS.ablation not in experiment.ablations:
    raise app.UsageError(f"--ablation={FLAGS.ablation!r} is not one of "
                         f"{', '.join(experiment.ablations)} (in {FLAGS.config})")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  try:
    sets = parse_sets(FLAGS.set)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  workdir = os.path.abspath(FLAGS.workdir)
  variants = experiment.ablations[FLAGS.ablation]
  run_dirs = {v.label: display_path(os.path.join(workdir, v.label)) for v in variants}
  seconds_before = _previous_seconds(workdir)
  results: dict[str, Result] = {}
  start = time.time()
  order = dependency_order(variants)
  for i, v in enumerate(order, 1):
    results[v.label] = run_variant(v, i, len(order), experiment=experiment, variants=variants,
                                   run_dirs=run_dirs, sets=sets, extra=FLAGS.launch_args,
                                   done=results, seconds_before=seconds_before,
                                   dry_run=FLAGS.dry_run, allow_download=FLAGS.allow_download)
  declared = [results[v.label] for v in variants]
  bad = [r.variant.label for r in declared if r.status in ("failed", "invalid")]
  print(f"{len(declared)} variants in {_fmt_time(time.time() - start)}: "
        f"{sum(r.status in ('ok', 'cached') for r in declared)} finished, {len(bad)} failed, "
        f"{sum(r.status == 'not run' for r in declared)} not run.")
  if FLAGS.dry_run:
    return 1 if bad else 0
  os.makedirs(workdir, exist_ok=True)
  write_outputs(workdir, experiment, FLAGS.ablation, declared, sets, sys.argv)
  print(render_table(declared, experiment.headline))
  print(f"Wrote {os.path.join(display_path(workdir), 'ablation.md')}, ablation.json, "
        "ablation.png")
  if bad:
    print(f"Failed: {', '.join(bad)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
