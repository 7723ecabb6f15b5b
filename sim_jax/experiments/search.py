r"""`sim-jax-search` / `python -m sim_jax.experiments.search`: a budgeted architecture search.

  python -m sim_jax.experiments.search --config=configs/icons.py --workdir=runs/icons_search \
      --trials=12 --objective=verification/head_roc_auc_validation --retrain_seeds=3

Optuna's TPE sampler (Bergstra et al. 2011; Optuna's default, a maintained black-box optimiser)
proposes points of the multi-scale encoder's design space (`SPACE`: branch kernel sets, base
width, depth in stages, attention placement, embedding size); each trial is one short
`launch.py` run in `<workdir>/trial_<NNN>`, launched, logged and checked by the ablation runner's
machinery (`commands.launch_command`, `checks.check_config`, `runner.run_logged`), with the
trial's overrides and then every `--set` (so `--set` fixes the budget: steps, eval splits). The
trial's value is `--objective` from its final_metrics.json (default: the config's first
HEADLINE metric, else its `eval.best_metric`). Choose an objective measured on a validation
split, never on the split the report quotes: the command above ranks by retrieval of the train
classes' `test` drawings against the `train` gallery, while the report quotes held-out classes.

Resumable: the study lives in `<workdir>/optuna.journal` (Optuna's journal file storage: an
append-only log, safe under kill -9). A rerun of the same command loads it: finished trials are
never run again, a trial that was running when the search died is finished first under its
own number (its launch.py run resumes from its checkpoint), then new trials are asked until the
study holds `--trials` of them (failed ones count: the budget is trials launched). Kill the
whole process group (the launch.py child too): one search per workdir (`search.lock`).

Writes `<workdir>/search.md` and `search.json` (every trial: number, state, parameters, value,
seconds; the budget: trials, the trials' --set overrides, wall time) and `best.json` (the best
trial's config overrides). With `--retrain_seeds=N`, the best architecture and the
hand-designed one (the config as is) are then trained with N seeds each, at the config's own
budget plus `--retrain_set`, as the ablation `nas` in `<workdir>/retrain` (`ablation.md`).

Needs the `search` extra (`pip install sim_jax[search]`, i.e. optuna).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence

from absl import app, flags

from sim_jax import config_tools, quiet

quiet.environment()  # before TensorFlow is imported (through the runner), as ablate.py does

from sim_jax.experiments import checks, commands, runner  # noqa: E402
from sim_jax.experiments.variants import Ablation, Variant, parse_seeds  # noqa: E402

try:  # the optional `search` extra: main() says how to install it when absent
  import optuna
except ImportError:  # pragma: no cover - exercised where optuna is not installed
  optuna = None

# The multi-scale encoder's design space: config key -> the values TPE chooses among. Kernel sets
# are written "1,3,5" (Optuna's categorical values are scalars) and become tuples for launch.py.
SPACE: dict[str, tuple] = {
    "model.multiscale_kernels": ("1,3", "3,5", "1,3,5", "3,5,7", "1,3,5,7"),
    "model.width": (4, 8, 12, 16),
    "model.multiscale_stages": (2, 3, 4),
    "model.attention": ("none", "before", "after"),
    "model.embedding_dim": (32, 64, 128),
}
JOURNAL, LOCK, STUDY = "optuna.journal", "search.lock", "search"

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Experiment config file whose model is `multiscale`.")
flags.DEFINE_string("workdir", None, "Directory of the search: the study, one dir per trial.")
flags.DEFINE_integer("trials", 12, "Budget: trials in the study (a rerun asks for the rest).")
flags.DEFINE_string("objective", None, "final_metrics.json metric to optimise (default: the "
                    "config's first HEADLINE metric); pick a validation-split metric.")
flags.DEFINE_enum("direction", "maximize", ["maximize", "minimize"], "Optimisation direction.")
flags.DEFINE_multi_string("set", [], "KEY=VALUE override of every trial (after the trial's).")
flags.DEFINE_integer("seed", 0, "Seed of the TPE sampler.")
flags.DEFINE_integer("startup_trials", 4, "Random trials before TPE models the results.")
flags.DEFINE_string("retrain_seeds", None, "After the search: train the best and the hand-designed "
                    "architecture with these seeds (a count or a list) in <workdir>/retrain.")
flags.DEFINE_multi_string("retrain_set", [], "KEY=VALUE override of the re-training runs.")
flags.DEFINE_string("root", None, "Directory the trials' launch.py runs from (default: the clone "
                    "holding this package, else the current directory).")


def trial_overrides(params: Mapping[str, object]) -> dict[str, object]:
  """A trial's Optuna parameters -> config overrides (kernel sets "1,3" -> (1, 3))."""
  out = dict(params)
  if "model.multiscale_kernels" in out:
    out["model.multiscale_kernels"] = tuple(int(k) for k in
                                            str(out["model.multiscale_kernels"]).split(","))
  return out


def distributions() -> dict:
  """SPACE as Optuna distributions (for `study.ask`)."""
  return {k: optuna.distributions.CategoricalDistribution(v) for k, v in SPACE.items()}


def open_study(workdir: str, direction: str, seed: int, startup: int):
  """The study in `<workdir>/optuna.journal`, created or loaded."""
  storage = optuna.storages.JournalStorage(
      optuna.storages.journal.JournalFileBackend(os.path.join(workdir, JOURNAL)))
  sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
  return optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                             direction=direction, load_if_exists=True)


def run_trial(number: int, params: Mapping, experiment_path: str, workdir: str, root: str,
              sets: Sequence[tuple[str, str]], objective: str) -> tuple[float | None, str, float]:
  """Launches (or resumes) one trial's run; returns (value or None, detail, seconds)."""
  run_dir = commands.display_path(os.path.join(workdir, f"trial_{number:03d}"), root)
  cmd = commands.launch_command(commands.display_path(experiment_path, root), run_dir,
                                trial_overrides(params), sets)
  abs_run = os.path.join(root, run_dir)
  final = os.path.join(abs_run, runner.FINAL)
  start = time.time()
  if not os.path.exists(final):  # finished before the last kill: read it, never run it again
    try:
      checks.check_config(commands.child_config(cmd, root))
    except Exception as e:  # noqa: BLE001  (an invalid point of the space is a failed trial)
      return None, f"invalid config: {e}", 0.0
    os.makedirs(abs_run, exist_ok=True)
    code = runner.run_logged(cmd, os.path.join(abs_run, runner.LOG), f"[trial {number}]", root)
    if code != 0 or not os.path.exists(final):
      detail = runner.error_line(runner._tail(os.path.join(abs_run, runner.LOG)))
      return None, f"exit code {code}: {detail}", time.time() - start
  metrics = runner._read_json(final).get("metrics", {})
  if objective not in metrics:
    return None, f"{objective!r} not in final_metrics.json (has {sorted(metrics)[:8]})", 0.0
  return float(metrics[objective]), "", time.time() - start


def _tell(study, trial, value: float | None, detail: str, seconds: float) -> None:
  """Records a trial's outcome (`trial` an optuna Trial) in the study."""
  trial.set_user_attr("seconds", seconds)
  if detail:
    trial.set_user_attr("detail", detail)
  if value is None:
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
  else:
    study.tell(trial, value)


def search(study, n_trials: int, experiment_path: str, workdir: str, root: str,
           sets: Sequence[tuple[str, str]], objective: str) -> None:
  """Finishes the study's interrupted trials, then asks new ones up to `n_trials` in all."""
  args = (experiment_path, workdir, root, sets, objective)
  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    print(f"[trial {t.number}] resuming (interrupted) {t.params}", flush=True)
    # A live handle on the stored trial: Optuna's own `Trial(study, trial_id)` constructor, the
    # id being the FrozenTrial's (Optuna exposes it only as `_trial_id`).
    trial = optuna.trial.Trial(study, t._trial_id)
    _tell(study, trial, *run_trial(t.number, t.params, *args))
  while len(study.trials) < n_trials:
    trial = study.ask(distributions())
    print(f"[trial {trial.number}] {trial.params}", flush=True)
    _tell(study, trial, *run_trial(trial.number, trial.params, *args))


def command_text(argv: Sequence[str]) -> str:
  """The search command as typed from the repository root (whatever started the process)."""
  return " ".join(["python -m sim_jax.experiments.search", *map(shlex.quote, argv[1:])])


def records(study) -> list[dict]:
  """One JSON-able dict per trial, in trial order."""
  return [{"number": t.number, "state": t.state.name, "value": t.value,
           "params": dict(t.params), "seconds": t.user_attrs.get("seconds"),
           "detail": t.user_attrs.get("detail", "")} for t in study.trials]


def write_outputs(study, workdir: str, objective: str, sets, wall: float, argv) -> dict | None:
  """search.json, search.md and (when a trial finished) best.json; returns the best record."""
  rows = records(study)
  done = [r for r in rows if r["state"] == "COMPLETE"]
  reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
  best = sorted(done, key=lambda r: r["value"], reverse=reverse)[0] if done else None
  budget = {"trials": len(rows), "complete": len(done), "sets": [f"{k}={v}" for k, v in sets],
            "trial_seconds": sum(r["seconds"] or 0.0 for r in rows), "wall_seconds": wall}
  with open(os.path.join(workdir, "search.json"), "w") as f:
    json.dump({"objective": objective, "direction": study.direction.name, "budget": budget,
               "space": {k: list(v) for k, v in SPACE.items()}, "trials": rows, "best": best,
               "command": command_text(argv)}, f, indent=2)
  keys = list(SPACE)
  lines = [f"# Architecture search: `{objective}` ({study.direction.name.lower()})", "",
           f"{len(rows)} trials ({len(done)} complete), trial overrides "
           f"{', '.join(budget['sets']) or 'none'}; {runner.fmt_time(budget['trial_seconds'])} "
           f"in trials, this invocation {runner.fmt_time(wall)} wall.", "",
           "| trial | " + " | ".join(k.split(".")[-1] for k in keys) + f" | {objective} | time |",
           "|" + "---|" * (len(keys) + 3)]
  for r in rows:
    value = f"{r['value']:.4f}" if r["value"] is not None else r["state"].lower()
    mark = " **best**" if best and r["number"] == best["number"] else ""
    cells = " | ".join(str(r["params"].get(k, "")) for k in keys)
    lines.append(f"| {r['number']}{mark} | {cells} | {value} | "
                 f"{runner.fmt_time(r['seconds'] or 0.0)} |")
  lines += ["", f"Written by `{command_text(argv)}`."]
  with open(os.path.join(workdir, "search.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  if best:
    with open(os.path.join(workdir, "best.json"), "w") as f:
      json.dump({"trial": best["number"], "value": best["value"],
                 "overrides": trial_overrides(best["params"])}, f, indent=2)
  return best


def retrain(experiment: runner.Experiment, best: Mapping, workdir: str, root: str,
            seeds: tuple[int, ...], sets, argv) -> int:
  """The best trial's architecture vs the config as is, `seeds` each: ablation `nas`."""
  ablation = Ablation([Variant("hand_designed", {}),
                       Variant("searched", trial_overrides(best["params"]))], seeds)
  experiment = experiment._replace(ablations={"nas": ablation})
  return runner.run_ablation(experiment, "nas", os.path.join(workdir, "retrain"), root=root,
                             sets=sets, argv=argv)


def load_config(path: str) -> runner.Experiment:
  """The config file's headline (HEADLINE, else eval.best_metric); ablations are not needed."""
  spec = importlib.util.spec_from_file_location("sim_jax_search_config", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot import {path!r} as a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  headline = tuple(getattr(module, "HEADLINE", ()) or (module.get_config().eval.best_metric,))
  return runner.Experiment(path, {}, headline)


def command_root() -> str:
  """The clone holding this package when it has launch.py, else the current directory."""
  clone = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return clone if os.path.isfile(os.path.join(clone, commands.LAUNCH)) else os.getcwd()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if optuna is None:
    print("sim_jax: error: the architecture search needs optuna: pip install 'sim_jax[search]' "
          "(or pip install optuna)", file=sys.stderr)
    return 2
  if not FLAGS.config or not FLAGS.workdir:
    raise app.UsageError("--config and --workdir are required")
  if FLAGS.trials < 1:
    raise app.UsageError(f"--trials must be >= 1; got {FLAGS.trials}")
  try:
    config_path = config_tools.resolve_config_path(FLAGS.config)
    sets = commands.parse_sets(FLAGS.set)
    retrain_sets = commands.parse_sets(FLAGS.retrain_set)
    seeds = parse_seeds(FLAGS.retrain_seeds) if FLAGS.retrain_seeds else ()
    experiment = load_config(config_path)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  root = os.path.abspath(FLAGS.root or command_root())
  objective = FLAGS.objective or experiment.headline[0]
  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK), "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      print(f"sim_jax: error: another search holds {os.path.join(workdir, LOCK)}",
            file=sys.stderr)
      return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.time()
    study = open_study(workdir, FLAGS.direction, FLAGS.seed, FLAGS.startup_trials)
    search(study, FLAGS.trials, config_path, workdir, root, sets, objective)
    best = write_outputs(study, workdir, objective, sets, time.time() - start, sys.argv)
    print(open(os.path.join(workdir, "search.md")).read())
    if best is None:
      print("sim_jax: error: no trial finished", file=sys.stderr)
      return 1
    if seeds:
      return retrain(experiment, best, workdir, root, seeds, retrain_sets, sys.argv)
  return 0


def run():
  """The `sim-jax-search` console script and `python -m sim_jax.experiments.search`."""
  app.run(main)


if __name__ == "__main__":
  run()
