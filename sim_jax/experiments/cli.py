r"""`sim-jax-ablate` / `python ablate.py`: runs one ablation of a config, then a table and plots.

  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/icons_attention
  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/icons_attention \
      --set train.steps=300 --set train.eval_every=100
  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/x --seeds=3
  python ablate.py --config=configs/icons.py --ablation=attention --workdir=runs/x --dry_run
  python ablate.py --config=configs/embeddings.py --ablation=backbones_pretrained \
      --workdir=runs/embeddings_backbones_pretrained --variants=resnet18 --seeds=1,2
  sim-jax-ablate --config=configs/icons.py          # lists the config's ablations

The config declares `get_ablations()` and `HEADLINE` (see sim_jax/experiments/variants.py).
Every run is its own `launch.py` process in `<workdir>/<label>` (`<workdir>/<label>/seed_<s>`
when the ablation, or --seeds, names seeds), with `--config.<key>=<value>` for the variant's
overrides and then the `--set` ones (so `--set` has the last word). Variants another one refers
to (`{run:LABEL}`, `evaluates=LABEL`) run first; seeds are interleaved (seed 0 of every variant,
then seed 1, ...).

`--variants=A,B` runs only those variants and the ones they refer to (`resnet18` above also
runs `simclr_resnet18`, whose encoder it starts from), into the same run directories as the
whole ablation, so a later full run skips them; the table it writes has those rows only.

Resumable: a run whose `final_metrics.json` exists is not run again, and an unfinished one
resumes from its checkpoint (launch.py's behaviour). A failed run does not stop the others;
the script exits with 1 at the end if any failed. A dataset that cannot be prepared on this
machine (the Debian package it needs is named) is reported as "not run", as is a TFDS dataset
not prepared in data_dir (`--allow_download` launches that one anyway). `--dry_run` checks every
run's config and data and prints the commands.

Writes `<workdir>/ablation.json` (everything), `<workdir>/ablation.md` (one row per variant: each
headline metric with its chance level and its two floors, raw pixels and random init; over
seeds the mean and min–max; and the command that reproduces the row, to be run from the
repository root) and `<workdir>/ablation.png` (the first headline metric per variant, and over
training steps where the runs logged it). The logic lives in `sim_jax.experiments`.

Installed without a clone, `sim-jax-ablate` runs the same way from the current directory: the
config is a path or the name of a shipped one (`--config=icons`), each run is
`python -m sim_jax ...`.
"""

import os
import sys

from absl import app, flags

from sim_jax import config_tools, quiet

# Before `runner` imports TensorFlow (through TFDS): its notices stay hidden, here and in the
# runs, which inherit the environment (a variable the user set wins).
quiet.environment()

from sim_jax.experiments import commands, runner, variants  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("config", None, "Experiment config file (a configs/*.py with "
                    "get_ablations()).")
flags.DEFINE_string("ablation", None, "Name of the ablation to run (omit to list them).")
flags.DEFINE_string("workdir", None, "Directory of the ablation: one sub-directory per variant.")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every variant, in "
                          "launch.py's --config.KEY=VALUE syntax (repeatable; applied last).")
flags.DEFINE_multi_string("launch_args", [], "Extra launch.py flag for every variant, e.g. "
                          "--launch_args=--compilation_cache=/tmp/cache (repeatable).")
flags.DEFINE_string("seeds", None, "Seeds every variant runs with, replacing the ablation's: a "
                    "count (3: seeds 0, 1, 2) or a list (0,1,2).")
flags.DEFINE_list("variants", None, "Run only these variants of the ablation (comma-separated "
                  "labels), with the variants they refer to; the table then has their rows only.")
flags.DEFINE_bool("dry_run", False, "Check every run's config and data and print the commands; "
                  "run and write nothing.")
flags.DEFINE_bool("allow_download", False, "Launch variants whose TFDS dataset is not prepared "
                  "(launch.py then downloads it) instead of reporting them as not run.")


def command_root() -> str:
  """Where the runs' commands run and are shown relative to: a clone's root (it has launch.py,
  and ablation tables then read `python launch.py ...`), else the current directory (an
  installed package: the runs start as `python -m sim_jax`)."""
  clone = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return clone if os.path.isfile(os.path.join(clone, commands.LAUNCH)) else os.getcwd()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.config:
    raise app.UsageError("--config is required")
  try:
    config_path = config_tools.resolve_config_path(FLAGS.config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  experiment = runner.load_experiment(config_path)
  if not FLAGS.ablation:
    print(f"Ablations of {FLAGS.config}:")
    for name, ablation in experiment.ablations.items():
      seeds = f" (seeds {', '.join(map(str, ablation.seeds))})" if ablation.seeds else ""
      print(f"  {name}: {', '.join(v.label for v in ablation.variants)}{seeds}")
    return 0
  if FLAGS.ablation not in experiment.ablations:
    raise app.UsageError(f"--ablation={FLAGS.ablation!r} is not one of "
                         f"{', '.join(experiment.ablations)} (in {FLAGS.config})")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  try:
    sets = commands.parse_sets(FLAGS.set)
    seeds = None if FLAGS.seeds is None else variants.parse_seeds(FLAGS.seeds)
    if FLAGS.variants is not None:
      variants.select_variants(experiment.ablations[FLAGS.ablation], FLAGS.variants)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  return runner.run_ablation(experiment, FLAGS.ablation, FLAGS.workdir, root=command_root(),
                             sets=sets, extra=FLAGS.launch_args, seeds=seeds,
                             only=FLAGS.variants,
                             dry_run=FLAGS.dry_run, allow_download=FLAGS.allow_download,
                             argv=sys.argv)


def run():
  """The `sim-jax-ablate` console script and `python ablate.py`."""
  app.run(main)
