r"""sim_jax entry point: train, evaluate, export embeddings, or search a gallery.

  python launch.py --config=configs/default.py --workdir=runs/default
  python launch.py --config=configs/default.py --workdir=runs/default --config.train.steps=2000
  python launch.py --config=configs/default.py --workdir=runs/default --mode=evaluate
  python launch.py --config=configs/default.py --workdir=runs/default --mode=embed --output=emb.npz
  python launch.py --config=configs/default.py --workdir=runs/default --mode=search --query=x.png
  python launch.py --config=configs/default.py --workdir=runs/floors --mode=floors

Several processes (one per host, or several on one machine with CPU devices):
  python launch.py ... --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0
On TPU pods / SLURM, jax.distributed is initialised automatically.

Intentionally short: training happens in `sim_jax.train`, the other modes in `sim_jax.inference`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sim_jax import workdir  # standard library only
from sim_jax.cpu import malloc  # standard library only: safe before the re-exec

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and plots.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "embed", "search", "floors"],
                  "What to run (floors: chance and the raw-pixel / random-init floors of the "
                  "config's evaluation, without training; writes <workdir>/floors.json).")
flags.DEFINE_string("output", None, "--mode=embed: the .npz file to write.")
flags.DEFINE_string("split", None, "--mode=embed: the split to embed (default: every eval split).")
flags.DEFINE_string("query", None, "--mode=search: the query image file.")
flags.DEFINE_string("gallery_split", None, "--mode=search: split searched (default: eval query "
                    "split).")
flags.DEFINE_integer("k", 5, "--mode=search: number of matches.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-process runs).")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/sim_jax/jax_cache"),
                    "Persistent XLA compilation cache directory ('' disables): a second launch "
                    "of the same config skips most compilation.")
flags.mark_flags_as_required(["config", "workdir"])

# Exit codes: 1 = the run failed (NaN, no restorable checkpoint, failed save), 2 = bad input.
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


def _hide_gpus_from_tensorflow():
  # TensorFlow is only used for I/O (CLU writers, TFDS); it must not grab GPU memory from JAX.
  # An optional dependency, hence imported here.
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass


class _QuietLibraries:
  """Drops INFO records of Orbax/grain internals (dozens per save) so progress stays readable."""

  NOISY = (os.sep + "orbax" + os.sep, os.sep + "grain" + os.sep)

  def filter(self, record):
    return record.levelno > 20 or not any(n in record.pathname for n in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.mode != "train":
    workdir.release_sigterm()  # Nothing to checkpoint: a SIGTERM ends these modes as usual.
  # Imported here, not at the top: `malloc.maybe_reexec()` (under __main__) may re-exec this
  # process before JAX or TensorFlow is loaded, and importing them would be wasted work.
  import jax

  from sim_jax import checkpointing, data, inference, sharding, train

  _hide_gpus_from_tensorflow()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  logging.info("%s", sharding.describe_topology())
  logging.info("local devices: %s", jax.local_devices())
  logging.info("%s", malloc.describe())
  config = FLAGS.config
  try:
    # Before anything is built or trained: a dataset this machine cannot prepare is named with
    # the Debian package (or path, or TFDS command) that would fix it.
    reason = data.unavailable_reason(config.data)
    if reason:
      raise ValueError(f"data {config.data.name!r} cannot be prepared on this machine: {reason}")
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


if __name__ == "__main__":
  # glibc reads GLIBC_TUNABLES only at process start: with SIM_JAX_HUGEPAGES=1, re-exec with
  # malloc's transparent-huge-page tunable before JAX allocates anything (docs/performance.md).
  malloc.maybe_reexec()
  # Before anything slow (absl, the config file, JAX): a SIGTERM from here on is honoured at the
  # first train step boundary (or re-raised by modes with nothing to save) instead of exit -15.
  workdir.latch_sigterm()
  app.run(main)
