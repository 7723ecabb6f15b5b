r"""sim_jax's command line: train, evaluate, embed, search a gallery, list the config fields.

  sim-jax --config=configs/default.py --workdir=runs/default
  sim-jax --config=configs/default.py:small --workdir=runs/small          # a quick run
  sim-jax --config=configs/default.py --workdir=runs/default --config.train.steps=2000
  sim-jax --config=configs/default.py --workdir=runs/default --mode=evaluate
  sim-jax --config=configs/default.py --workdir=runs/ens --mode=evaluate --ensemble=runs/a,runs/b
  sim-jax --config=configs/default.py --workdir=runs/default --mode=embed --output=emb.npz
  sim-jax --config=configs/default.py --workdir=runs/default --mode=search --query=x.png
  sim-jax --config=configs/default.py --workdir=runs/floors --mode=floors
  sim-jax --config=configs/default.py --mode=config     # every field, its value and comment

`sim-jax` (the console script), `python -m sim_jax` and, from a clone, `python launch.py` are the
same program. `--config` is a config file (a clone's path, or the name of one shipped with the
package: `--config=default`); `FILE:ARG` calls its `get_config(ARG)`. Any field can be overridden
with `--config.FIELD=VALUE`.

Several processes (one per host, or several on one machine with CPU devices):
  sim-jax ... --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0
On TPU pods / SLURM, jax.distributed is initialised automatically.

Exit codes: 0 done, 1 the run failed (NaN, no restorable checkpoint, failed save), 2 bad input
(unknown or ill-typed config field, missing file, data that cannot be prepared here).

Intentionally short: training happens in `sim_jax.train`, the other modes in `sim_jax.inference`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sim_jax import config_tools, quiet
from sim_jax import workdir as workdir_lib  # standard library only: the SIGTERM latch
from sim_jax.cpu import malloc  # standard library only: safe before the re-exec

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file "
                                "(FILE or FILE:ARG; see --mode=config for its fields).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and plots.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "embed", "search", "floors", "config"],
                  "What to run (floors: chance and the raw-pixel / random-init floors of the "
                  "config's evaluation, without training; writes <workdir>/floors.json; config: "
                  "print every config field with its value and comment, then exit).")
flags.DEFINE_string("output", None, "--mode=embed: the .npz file to write.")
flags.DEFINE_string("split", None, "--mode=embed: the split to embed (default: every eval split).")
flags.DEFINE_string("query", None, "--mode=search: the query image file.")
flags.DEFINE_string("gallery_split", None, "--mode=search: split searched (default: eval query "
                    "split).")
flags.DEFINE_integer("k", 5, "--mode=search: number of matches.")
flags.DEFINE_string("ensemble", None, "--mode=evaluate / embed: comma-separated workdirs whose "
                    "latest checkpoints are evaluated as one ensemble (sets config.eval.ensemble; "
                    "combined by config.eval.ensemble_mode, see sim_jax/inference.py); --workdir "
                    "receives the output.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-process runs).")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/sim_jax/jax_cache"),
                    "Persistent XLA compilation cache directory ('' disables): a second launch "
                    "of the same config skips most compilation.")
flags.DEFINE_bool("verbose_libraries", False, "Keep the TensorFlow / oneDNN / TPU-probe / TFDS "
                  "notices that are hidden by default.")

# Exit codes: 1 = the run failed (NaN, no restorable checkpoint, failed save), 2 = bad input.
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "-help")


def bad_input(message: str) -> None:
  """One line on stderr, exit code 2 (never a traceback for a mistyped command line)."""
  print(f"sim_jax: error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def usage() -> str:
  """--help: this module's docstring and its flags."""
  return f"{__doc__}\nFlags:\n{FLAGS.module_help(__name__)}\n"


def _load_config_alone(argv):
  """The config `--config` names, without the overrides (to name the bad ones)."""
  only = [argv[0]] + [a for a in argv[1:] if a.startswith("--config=")]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=only)
  fv(only)
  return fv.config


def parse_flags(argv):
  """absl's flag parsing, with `--help` exiting 0 and any bad flag exiting 2 in one line.

  absl parses `--config.KEY=VALUE` (and loads the config file) before `main`, raising a
  traceback (exit 1) for an unknown key and "FATAL Flags parsing error" (exit 1) for a bad
  value; both are bad input.
  """
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    argv = config_tools.resolve_config_argv(argv)
  except ValueError as e:
    bad_input(str(e))
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = config_tools.first_line(e)
    try:
      errors = config_tools.override_errors(_load_config_alone(argv), argv[1:])
    except Exception:  # noqa: BLE001  (the config file itself fails: its own error says why)
      errors = []
    bad_input("; ".join(errors) if errors else message)


def print_config(config_path: str, config) -> None:
  """--mode=config: every field, its value (overrides applied) and its one-line comment."""
  path = config_tools.resolve_config_path(config_path).partition(":")[0]
  comments = config_tools.field_comments(config_tools.config_sources(path))
  print("\n".join(config_tools.field_lines(config, comments)))


def _hide_gpus_from_tensorflow():
  # TensorFlow is only used for I/O (CLU writers, TFDS); it must not grab GPU memory from JAX.
  # An optional dependency, hence imported here.
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass


def main(argv):
  if len(argv) > 1:
    bad_input(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None:
    bad_input("--config is required, e.g. --config=configs/default.py")
  if FLAGS.mode == "config":
    print_config(FLAGS["config"].config_filename, config)
    return
  if not FLAGS.workdir:
    bad_input("--workdir is required, e.g. --workdir=runs/default")
  if FLAGS.ensemble is not None:
    if FLAGS.mode not in ("evaluate", "embed"):
      bad_input(f"--ensemble is for --mode=evaluate or --mode=embed, not --mode={FLAGS.mode}")
    config.eval.ensemble = FLAGS.ensemble
  if FLAGS.mode != "train":
    workdir_lib.release_sigterm()  # Nothing to checkpoint: a SIGTERM ends these modes as usual.
  # Imported here, not at the top: `malloc.maybe_reexec()` (in run()) may re-exec this process
  # before JAX or TensorFlow is loaded, and `--help` / `--mode=config` need neither.
  import jax
  import tensorflow_datasets as tfds

  from sim_jax import checkpointing, data, inference, sharding, train

  _hide_gpus_from_tensorflow()
  quiet.install(tfds, verbose=FLAGS.verbose_libraries)
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  logging.info("%s", sharding.describe_topology())
  logging.info("local devices: %s", jax.local_devices())
  logging.info("%s", malloc.describe())
  try:
    # Before anything is built or trained: a dataset this machine cannot prepare is named with
    # the Debian package (or path, or TFDS command) that would fix it.
    reason = data.unavailable_reason(config.data)
    if reason:
      raise ValueError(f"data {config.data.name!r} cannot be prepared on this machine: {reason}")
    if FLAGS.mode != "evaluate" and str(config.eval.graph.relations) not in ("none", ""):
      raise ValueError(f"eval.graph.relations={config.eval.graph.relations!r} refines "
                       f"embeddings in --mode=evaluate only; got --mode={FLAGS.mode}")
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "evaluate":
      inference.evaluate_checkpoint(config, FLAGS.workdir)
    elif FLAGS.mode == "embed":
      if not FLAGS.output:
        raise ValueError("--mode=embed needs --output=FILE.npz")
      inference.export_embeddings(config, FLAGS.workdir, FLAGS.output, FLAGS.split)
    elif FLAGS.mode == "search":
      if not FLAGS.query:
        raise ValueError("--mode=search needs --query=IMAGE")
      inference.search_gallery(config, FLAGS.workdir, FLAGS.query, FLAGS.k,
                               FLAGS.gallery_split)
    elif FLAGS.mode == "floors":
      inference.config_floors(config, FLAGS.workdir)
  except (train.NonFiniteError, checkpointing.NoRestorableCheckpointError,
          checkpointing.CheckpointSaveError) as e:
    logging.error("%s", e)
    print(f"sim_jax: error: {e}", file=sys.stderr)
    sys.exit(EXIT_FAILED)
  except (checkpointing.ConfigMismatchError, ValueError, FileNotFoundError) as e:
    logging.exception("Bad input:")  # Full traceback in the log, one clear line on stderr.
    print(f"sim_jax: error: {e}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def run():
  """The `sim-jax` console script, `python -m sim_jax` and `python launch.py`."""
  # glibc reads GLIBC_TUNABLES only at process start: with SIM_JAX_HUGEPAGES=1, re-exec with
  # malloc's transparent-huge-page tunable before JAX allocates anything (docs/performance.md).
  malloc.maybe_reexec()
  # Before anything slow (absl, the config file, JAX): a SIGTERM from here on is honoured at the
  # first train step boundary (or re-raised by modes with nothing to save) instead of exit -15.
  workdir_lib.latch_sigterm()
  quiet.environment(verbose="--verbose_libraries" in sys.argv)
  app.run(main, flags_parser=parse_flags)
