"""Quiet logs by default: the metrics, not ~60 lines of library notices, are what a run prints.

Hidden unless `--verbose_libraries` (or the variable already set by the user):
- TensorFlow's C++ notices (TF_CPP_MIN_LOG_LEVEL=2 keeps its errors) and its "oneDNN custom
  operations are on" line, which TensorFlow >= 2.20 prints before its log level is read: only
  TF_ENABLE_ONEDNN_OPTS=0 removes it. TensorFlow does I/O only here (TFDS, event files), never
  the model's arithmetic, which is JAX's: no number sim_jax computes depends on that switch;
- JAX's probe for a TPU ("Unable to initialize backend 'tpu'", an INFO record on every CPU/GPU
  machine);
- TFDS's progress bars and its per-builder notices ("Using custom data configuration ...",
  which printed the whole option set - the font list - each time a builder was made; sim_jax's
  registry logs a dataset's options once instead), and "OpenCV is not installed";
- INFO records of Orbax / grain internals (dozens per checkpoint save).

Warnings and errors of these libraries are kept, except the few known notices above.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

# Set before TensorFlow is imported (its C++ logging reads it once).
ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
# Logger names whose INFO records are internals.
NOISY_PATHS = (os.sep + "orbax" + os.sep, os.sep + "grain" + os.sep)
# Known notices (any level) that say nothing about the run.
NOTICES = (
    "Unable to initialize backend",  # jax's TPU / GPU probe on a machine without one
    "Using custom data configuration",  # TFDS, once per builder instance, with every option
    "OpenCV is not installed",  # TFDS's image decoder falls back to PIL
)


def environment(verbose: bool = False) -> None:
  """Sets the variables that quiet TensorFlow (call before it is imported); the user's win."""
  if verbose:
    return
  for key, value in ENVIRONMENT.items():
    os.environ.setdefault(key, value)


class LibraryFilter:
  """A logging filter: drops INFO of Orbax / grain internals and the known NOTICES."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno <= std_logging.INFO and any(n in record.pathname for n in NOISY_PATHS):
      return False
    if record.levelno < std_logging.ERROR:
      try:
        message = record.getMessage()
      except (TypeError, ValueError):  # a malformed record: keep it
        return True
      return not any(notice in message for notice in NOTICES)
    return True


def install(tfds_module, verbose: bool = False) -> None:
  """Filters absl's handler and turns off TFDS progress bars (after absl logging is set up).

  `tfds_module` is `tensorflow_datasets`, passed in so that importing this module (before the
  command line is parsed) does not import TensorFlow.
  """
  if verbose:
    return
  logging.get_absl_handler().addFilter(LibraryFilter())
  tfds_module.disable_progress_bar()
