"""Orbax checkpoints of the train state *and* the data iterator, with a safe fallback.

Layout: `<workdir>/checkpoints/<step>/{state, data_iter, meta}` written by one
`ocp.CheckpointManager`:
- `state`: `{"step", "params", "batch_stats", "opt_state", "rng", "nonfinite_skips",
  "first_nonfinite_step"}` (StandardSave; restored onto the *current* mesh via an abstract target,
  so a run saved on 8 devices restores on 2);
- `data_iter`: the grain iterator, one file per process (grain's own handler);
- `meta`: JSON with what must match for the iterator position to mean the same thing
  (data fingerprint, process count).

What Orbax does not do and this module adds (see shared/reference/RELIABILITY.md):
- A finished-but-corrupt latest step makes `restore()` raise: we log the step, path and error,
  move the step aside to `<workdir>/checkpoints.corrupt/`, and fall back to the previous step.
- `best_fn` + `max_to_keep` can delete the newest steps; we keep the latest N *and* the best N
  with `AnyPreservationPolicy`, so the resume point is never deleted.
- Async save errors only surface at the next save / `wait_until_finished()`; callers must call
  `finalize()` before exiting, which re-raises them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp_lib

STATE, DATA_ITER, META = "state", "data_iter", "meta"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"


class NoRestorableCheckpointError(RuntimeError):
  """Every checkpoint step in the directory failed to restore."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def create_manager(workdir: str, *, keep: int = 3, keep_best: int = 0,
                   best_metric: str | None = None, best_mode: str = "max",
                   async_save: bool = True) -> ocp.CheckpointManager:
  """One manager for state + data iterator + meta, keeping the latest `keep` and best `keep_best`.

  `best_mode="max"` keeps the highest values of `best_metric` (e.g. `retrieval/mrr@5`).
  """
  if best_mode not in ("max", "min"):
    raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
  policies: list[Any] = [pp_lib.LatestN(n=max(1, keep))]
  if keep_best and best_metric:
    def metric_fn(metrics, name=best_metric):
      value = metrics.get(name, float("nan"))
      # NaN sorts unpredictably; rank a missing or non-finite metric as the worst.
      if not np.isfinite(value):
        return -np.inf if best_mode == "max" else np.inf
      return float(value)
    policies.append(pp_lib.BestN(get_metric_fn=metric_fn, reverse=best_mode == "min",
                                 n=keep_best, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=pp_lib.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      # A kill during a save leaves `<step>.orbax-checkpoint-tmp`; it is never listed as a step,
      # and cleaning it at start-up keeps the directory tidy for the next save of that step.
      cleanup_tmp_directories=True,
      create=True,
  )
  return ocp.CheckpointManager(
      epath.Path(checkpoint_dir(workdir)).absolute(),
      options=options,
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     DATA_ITER: grain.checkpoint.CheckpointHandler(),
                     META: ocp.JsonCheckpointHandler()},
  )


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iter, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
  """Starts an (async) save of `state`, the data iterator position and `meta` at `step`."""
  args = ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      META: ocp.args.JsonSave(meta),
  })
  return manager.save(step, args=args, metrics=metrics, force=force)


def finalize(manager: ocp.CheckpointManager) -> None:
  """Waits for pending async saves (re-raising their errors) and releases the manager."""
  try:
    manager.wait_until_finished()
  finally:
    manager.close()


def _move_aside(workdir: str, step: int, error: Exception) -> str:
  src = os.path.join(checkpoint_dir(workdir), str(step))
  dst_root = os.path.join(workdir, CORRUPT_DIR)
  dst = os.path.join(dst_root, f"{step}.{int(time.time())}")
  if jax.process_index() == 0 and os.path.exists(src):
    os.makedirs(dst_root, exist_ok=True)
    shutil.move(src, dst)
    with open(dst + ".error.txt", "w") as f:
      f.write(f"{type(error).__name__}: {error}\n")
  return dst


def restore_latest(manager: ocp.CheckpointManager, workdir: str, abstract_state: dict,
                   data_iter=None, check_meta: Callable[[dict], None] | None = None):
  """Restores the newest step that restores cleanly; returns `(step, state, meta)` or None.

  A step whose restore raises is logged (step, path, error) and moved aside, and the previous
  step is tried. `check_meta` may raise to refuse an incompatible checkpoint (e.g. a data
  pipeline with another seed); that refusal is *not* treated as corruption. Raises
  `NoRestorableCheckpointError` when steps exist but none restores.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  failures = []
  for step in steps:
    path = os.path.join(checkpoint_dir(workdir), str(step))
    try:
      meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable.
      meta, error = None, e
    if meta is not None:
      if check_meta is not None:
        check_meta(meta)  # Raises a user-facing error; do not fall back silently.
      try:
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:  # None: weights only (evaluate / embed / search).
          items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        if failures:
          logging.warning("Restored step %d after skipping corrupt step(s) %s.", step,
                          [s for s, _ in failures])
        return step, restored[STATE], meta
      except Exception as e:  # noqa: BLE001
        error = e
    logging.error("Checkpoint step %d at %s could not be restored: %s: %s", step, path,
                  type(error).__name__, error)
    dst = _move_aside(workdir, step, error)
    logging.error("Moved step %d aside to %s; trying the previous step.", step, dst)
    failures.append((step, error))
    _sync(f"sim_jax_move_aside_{step}")
  manager.reload()
  details = "; ".join(f"step {s}: {type(e).__name__}: {e}" for s, e in failures)
  raise NoRestorableCheckpointError(
      f"No checkpoint in {checkpoint_dir(workdir)} could be restored ({details}). The failed "
      f"steps were moved to {os.path.join(workdir, CORRUPT_DIR)}; start a fresh run with a new "
      f"--workdir or repair them.")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _resolve_state_path(path: str) -> epath.Path:
  """Workdir, checkpoints dir, step dir or state dir -> the `state` item directory."""
  p = epath.Path(path).absolute()
  if (p / CHECKPOINT_DIR).exists():
    p = p / CHECKPOINT_DIR
  if (p / STATE).exists():
    return p / STATE
  if (p / "_CHECKPOINT_METADATA").exists() and p.name == STATE:
    return p
  steps = sorted((int(c.name) for c in p.iterdir() if c.name.isdigit()), reverse=True) \
      if p.exists() else []
  for step in steps:
    if (p / str(step) / STATE).exists():
      return p / str(step) / STATE
  raise FileNotFoundError(
      f"No sim_jax checkpoint found at {path!r}: expected a workdir containing "
      f"'{CHECKPOINT_DIR}/<step>/{STATE}', a '{CHECKPOINT_DIR}' directory, or a step directory.")


def load_variables(path: str) -> dict:
  """`{"params": ..., "batch_stats": ...}` as NumPy trees from a workdir or checkpoint path.

  Used to initialise an encoder from another run (`config.model.init_from`) and by tools that
  only need weights. The arrays are restored onto one local device whatever the saving topology.
  """
  state_path = _resolve_state_path(path)
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  metadata = checkpointer.metadata(state_path)
  tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  wanted = {k: tree[k] for k in ("params", "batch_stats") if k in tree}
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), wanted)
  restored = checkpointer.restore(
      state_path, args=ocp.args.PyTreeRestore(
          item=abstract,
          restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract),
          partial_restore=True))
  checkpointer.close()
  return jax.tree.map(np.asarray, restored)
