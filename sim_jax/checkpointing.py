"""Orbax checkpoints of the train state *and* the data iterator, with a safe fallback.

Layout: `<workdir>/checkpoints/<step>/{state, data_iter, meta}` written by one
`ocp.CheckpointManager`:
- `state`: `{"step", "params", "batch_stats", "opt_state", "rng", "nonfinite_skips",
  "first_nonfinite_step"}` (StandardSave; restored onto the *current* mesh via an abstract target,
  so a run saved on 8 devices restores on 2);
- `data_iter`: the grain iterator, one file per process (grain's own handler);
- `meta`: the record of what the checkpoint was written with (`written_with`): the whole config
  and the process / device counts. A resume compares it with the current config
  (`check_resume`: the fields in `IMMUTABLE_KEYS`, which include the data pipeline and the seed
  that fix the iterator position, and the process count that shards it); evaluate / embed /
  search compare the fields that fix the parameter tree (`check_inference`). The workdir's
  `config.json` is a copy for people to read; nothing is checked against it.

What Orbax does not do and this module adds:
- An integrity record per step, `<step>/integrity.json`: the size and SHA-256 of every file of the
  step, written right after Orbax commits the step (`_RecordingManager._finalize`, on Orbax's
  finalize thread for async saves, so it never races the writes). `restore_latest` verifies it
  before reading the step; a mismatch, an unreadable record, an Orbax restore error or a
  non-finite restored array marks the step corrupt: it is logged (step, path, first line of the
  error), moved aside to `<workdir>/checkpoints.corrupt/`, the manager forgets it (`reload`), so
  training passing that step saves it again, and the previous step is tried. A step without a
  record (older checkpoints; a kill in the milliseconds between commit and record) is accepted
  when it restores with finite values, and its record is written then.
- When every step was moved aside, a re-run refuses to start from step 0 silently.
- `best_fn` + `max_to_keep` can delete the newest steps; we keep the latest N *and* the best N
  with `AnyPreservationPolicy`, so the resume point is never deleted.
- Async save errors only surface at the next save / `wait_until_finished()`; callers must call
  `finalize()` before exiting. `save` and `finalize` re-raise any save failure as
  `CheckpointSaveError` (a failed run, exit 1; never "bad input" whatever Orbax raised).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp_lib

from sim_jax import workdir as workdir_lib
from sim_jax.data import config as data_config_lib
from sim_jax.eval import config as eval_config_lib
from sim_jax.losses import config as loss_config_lib
from sim_jax.models import config as model_config_lib

STATE, DATA_ITER, META = "state", "data_iter", "meta"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"
INTEGRITY_FILE = "integrity.json"


# Sections whose change makes a checkpoint mean something else; `train.*` cadence fields, run
# length and `eval.*` may change between a run and its resume.
IMMUTABLE_KEYS = ("seed", "model", "data", "loss", "optimizer", "train.batch_size",
                  "train.grad_accum_chunks", "train.view_labels", "train.max_nonfinite_skips",
                  "train.memory.size")  # the shape of the state's cross-batch memory
# What evaluate / embed / search must share with the checkpoint: the parameter tree's structure.
# Data and eval may differ (another split, another metric).
INFERENCE_KEYS = ("model", "loss")


class NoRestorableCheckpointError(RuntimeError):
  """Every checkpoint step in the directory failed to restore (or all were moved aside)."""


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed (disk full, I/O error, a concurrent writer): the run failed."""


class CorruptCheckpointError(RuntimeError):
  """A step's files do not match its integrity record, or it restored non-finite values."""


class ConfigMismatchError(ValueError):
  """A config differs from the checkpoint's record in a field that must not change."""


# ------------------------------------------------------------- what a checkpoint was written with


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"section.field": value} of a config, tuples as lists (JSON's view of it)."""
  return _flatten(config_to_dict(config))


def _section_defaults() -> dict[str, Any]:
  """The package default of every field of the sections that have one, flattened
  (`loss.miner.name` -> "none"): a field a checkpoint predates is compared against it."""
  sections = {"data": data_config_lib, "eval": eval_config_lib, "loss": loss_config_lib,
              "model": model_config_lib}
  return _flatten(json.loads(json.dumps(
      {name: lib.default_config().to_dict() for name, lib in sections.items()}, default=list)))


def config_diff(saved: Mapping, current: Mapping,
                keys: tuple[str, ...] = IMMUTABLE_KEYS) -> list[str]:
  """Readable lines for every field under `keys` that differs between two config dicts."""
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(dict(current), default=list)))
  lines = []
  for key in sorted(set(a) | set(b)):
    if not any(key == p or key.startswith(p + ".") for p in keys):
      continue
    if key not in a and (b.get(key) is None or b.get(key) == _section_defaults().get(key)):
      continue  # A field added after the checkpoint was written, left at its default.
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      lines.append(f"  {key}: checkpoint {a.get(key, '<absent>')!r} != now "
                   f"{b.get(key, '<absent>')!r}")
  return lines


def written_with(config: ml_collections.ConfigDict) -> dict:
  """The record saved with every step: the config and the process / device counts."""
  return {"config": config_to_dict(config), "process_count": jax.process_count(),
          "device_count": jax.device_count()}


def check_resume(record: Mapping, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume `config` from a checkpoint written with `record` when a field of
  `IMMUTABLE_KEYS` differs or the process count (which shards the data order) does."""
  if "config" not in record:
    logging.warning("The checkpoint in %s was written before checkpoints recorded their "
                    "config; only its process count is checked.", workdir)
  else:
    diff = config_diff(record["config"], config_to_dict(config))
    if diff:
      raise ConfigMismatchError(
          f"Refusing to resume from {workdir}: the config differs from the one the checkpoint "
          f"was written with in fields that change what the checkpoint means:\n" +
          "\n".join(diff) + "\nUse a new --workdir for a new experiment (run length, logging "
          "and eval cadence may change on resume).")
  if record.get("process_count") != jax.process_count():
    raise ConfigMismatchError(
        f"The checkpoint's data iterator was written by {record.get('process_count')} "
        f"process(es) but this run has {jax.process_count()}: grain's order depends on the "
        f"process count, so the data position cannot be resumed. Resume with "
        f"--num_processes={record.get('process_count')} or start a new --workdir.")


def check_inference(record: Mapping, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses (before any restore is tried) a model / loss config the checkpoint was not written
  with: a failed restore would otherwise count the healthy checkpoint as corrupt."""
  diff = config_diff(record.get("config", {}), config_to_dict(config), INFERENCE_KEYS) \
      if "config" in record else []
  if diff:
    raise ConfigMismatchError(
        f"Refusing to load the checkpoint of {workdir}: it was written with a different model / "
        f"loss config:\n" + "\n".join(diff) + "\nPass the config it was trained with (eval.* "
        "and data.* may differ).")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`<workdir>/config.json`: the run's config for people (the checks read the checkpoint)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
      json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, "config.json"))


def latest_record(manager: ocp.CheckpointManager) -> dict | None:
  """The `written_with` record of the newest step, or None (no step, or it cannot be read:
  `restore_latest` then deals with that step)."""
  step = manager.latest_step()
  if step is None:
    return None
  try:
    # A step that fails its record may hold a garbled meta that reads as another config.
    verify_integrity_record(os.path.join(str(manager.directory), str(step)))
    return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
  except Exception:  # noqa: BLE001 - an unreadable step is restore_latest's to move aside.
    return None


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


# -------------------------------------------------------------------------------- integrity record


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def step_files(step_dir: str) -> dict[str, dict[str, Any]]:
  """{relative path: {"size", "sha256"}} of every file under `step_dir` but the record itself
  (and its temporary file, left behind by a kill while it was written)."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel not in (INTEGRITY_FILE, INTEGRITY_FILE + ".tmp"):
        out[rel] = {"size": os.path.getsize(path), "sha256": _file_digest(path)}
  return dict(sorted(out.items()))


def write_integrity_record(step_dir: str) -> None:
  """Writes `<step_dir>/integrity.json` atomically (temporary file + rename)."""
  record = {"version": 1, "algorithm": "sha256", "files": step_files(step_dir)}
  tmp = os.path.join(step_dir, INTEGRITY_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, INTEGRITY_FILE))


def verify_integrity_record(step_dir: str) -> bool:
  """True when `step_dir` matches its record; False when it has none (see the module docstring).

  Raises `CorruptCheckpointError` naming the first files that are missing or differ in size or
  SHA-256, or when the record itself cannot be read.
  """
  path = os.path.join(step_dir, INTEGRITY_FILE)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      expected = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(f"integrity record {path} unreadable: {type(e).__name__}: "
                                 f"{e}") from e
  actual = step_files(step_dir)
  bad = [rel for rel, want in expected.items() if actual.get(rel) != want]
  if bad:
    raise CorruptCheckpointError(
        f"{len(bad)} file(s) differ from the integrity record {path}: " +
        ", ".join(f"{rel} ({_describe_difference(expected[rel], actual.get(rel))})"
                  for rel in bad[:3]) + (" ..." if len(bad) > 3 else ""))
  return True


def _describe_difference(want: Mapping, got: Mapping | None) -> str:
  if got is None:
    return "missing"
  if got["size"] != want["size"]:
    return f"{got['size']} bytes, recorded {want['size']}"
  return "checksum differs"


def _all_finite(tree) -> bool:
  """Whether every float leaf of a (possibly multi-process) restored tree is finite."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.inexact)]
  if not leaves:
    return True
  ok = jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(leaves)
  return bool(np.asarray(ok.addressable_shards[0].data) if isinstance(ok, jax.Array) else ok)


class _RecordingManager(ocp.CheckpointManager):
  """A CheckpointManager that writes each step's integrity record right after Orbax commits it.

  `_finalize(step, steps_to_remove)` is where Orbax (0.12) commits a step: on its finalize
  thread for async saves, inline for synchronous ones. Overriding it is the only point that
  runs after the commit for both, with the step number, before `wait_until_finished` returns;
  `tests/reliability_test.py` fails if Orbax stops calling it.
  """

  def _finalize(self, step: int, steps_to_remove):
    super()._finalize(step, steps_to_remove)
    step_dir = os.path.join(str(self.directory), str(step))
    if jax.process_index() == 0 and os.path.isdir(step_dir):
      write_integrity_record(step_dir)


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
  return _RecordingManager(
      epath.Path(checkpoint_dir(workdir)).absolute(),
      options=options,
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     DATA_ITER: grain.checkpoint.CheckpointHandler(),
                     META: ocp.JsonCheckpointHandler()},
  )


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iter, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
  """Starts an (async) save of `state`, the data iterator position and `meta` at `step`.

  Raises `CheckpointSaveError` for a failure of this save or of the previous async one.
  """
  args = ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      META: ocp.args.JsonSave(meta),
  })
  try:
    return manager.save(step, args=args, metrics=metrics, force=force)
  except Exception as e:  # noqa: BLE001 - whatever Orbax raises, the run failed (exit 1).
    raise CheckpointSaveError(f"Saving checkpoint step {step} in {manager.directory} failed: "
                              f"{_first_line(e)}") from e


def finalize(manager: ocp.CheckpointManager) -> None:
  """Waits for pending async saves and releases the manager; a failed save raises
  `CheckpointSaveError`."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise CheckpointSaveError(f"Saving a checkpoint in {manager.directory} failed: "
                              f"{_first_line(e)}") from e
  finally:
    manager.close()


def _first_line(error: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, at most `limit` characters (TensorStore errors carry
  kilobytes of spec after the first line)."""
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= limit else text[:limit] + " ..."


def _move_aside(workdir: str, step: int, error: Exception) -> str:
  src = os.path.join(checkpoint_dir(workdir), str(step))
  dst_root = os.path.join(workdir, CORRUPT_DIR)
  dst = os.path.join(dst_root, f"{step}.{int(time.time())}")
  if jax.process_index() == 0 and os.path.exists(src):
    os.makedirs(dst_root, exist_ok=True)
    while os.path.exists(dst):  # The same step moved aside twice within a second.
      dst += "_"
    shutil.move(src, dst)
    with open(dst + ".error.txt", "w") as f:
      f.write(f"{type(error).__name__}: {error}\n")
  return dst


def _moved_aside(workdir: str) -> list[str]:
  root = os.path.join(workdir, CORRUPT_DIR)
  return sorted(n for n in os.listdir(root) if not n.endswith(".error.txt")) \
      if os.path.isdir(root) else []


def _restore_step(manager: ocp.CheckpointManager, step: int, step_dir: str,
                  abstract_state: dict, data_iter, check_meta) -> tuple[dict, dict]:
  """`(state, meta)` of one step, verified; raises `CorruptCheckpointError` or Orbax's error
  for a corrupt step and `ConfigMismatchError` (from `check_meta`) for an incompatible one."""
  recorded = verify_integrity_record(step_dir)
  meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
  if check_meta is not None:
    check_meta(meta)  # A user-facing refusal, not corruption: never fall back silently.
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:  # None: weights only (evaluate / embed / search).
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  state = manager.restore(step, args=ocp.args.Composite(**items))[STATE]
  if not _all_finite(state):
    raise CorruptCheckpointError(f"step {step} restored non-finite (NaN/Inf) values")
  if not recorded:
    logging.warning("Checkpoint step %d at %s has no integrity record (written by an older "
                    "version, or killed right after the commit); it restored with finite "
                    "values, so it is accepted and its record written now.", step, step_dir)
    if jax.process_index() == 0:
      write_integrity_record(step_dir)
  return state, meta


def restore_latest(manager: ocp.CheckpointManager, workdir: str, abstract_state: dict,
                   data_iter=None, check_meta: Callable[[dict], None] | None = None):
  """Restores the newest step that restores cleanly; returns `(step, state, meta)` or None.

  A step that fails its integrity record, whose restore raises, or that restores non-finite
  values is logged (step, path, first line of the error), moved aside, forgotten by `manager`
  (so a later save of that step happens), and the previous step is tried. `check_meta` may
  raise to refuse an incompatible checkpoint (e.g. a data pipeline with another seed); that
  refusal is *not* treated as corruption. Raises `NoRestorableCheckpointError` when steps exist
  but none restores, and when there are none but earlier ones were moved aside (a fresh start
  must be asked for explicitly). None: a new workdir.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    moved = _moved_aside(workdir)
    if moved:
      raise NoRestorableCheckpointError(
          f"{checkpoint_dir(workdir)} has no checkpoint left: every step was found corrupt and "
          f"moved to {os.path.join(workdir, CORRUPT_DIR)} ({', '.join(moved)}). Refusing to "
          f"start again from step 0 silently: to start this workdir over, remove or rename "
          f"{os.path.join(workdir, CORRUPT_DIR)}, or use a new --workdir.")
    return None
  failures = []
  for step in steps:
    step_dir = os.path.join(checkpoint_dir(workdir), str(step))
    try:
      state, meta = _restore_step(manager, step, step_dir, abstract_state, data_iter, check_meta)
    except ConfigMismatchError:
      raise
    except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable.
      logging.error("Checkpoint step %d at %s could not be restored: %s", step, step_dir,
                    _first_line(e))
      dst = _move_aside(workdir, step, e)
      logging.error("Moved step %d aside to %s; trying the previous step.", step, dst)
      failures.append((step, e))
      _sync(f"sim_jax_move_aside_{step}")
      manager.reload()  # Forget the step: Orbax skips every save at or below a listed step.
      continue
    if failures:
      logging.warning("Restored step %d after skipping corrupt step(s) %s.", step,
                      [s for s, _ in failures])
    return step, state, meta
  details = "\n".join(f"  step {s}: {_first_line(e)}" for s, e in failures)
  raise NoRestorableCheckpointError(
      f"No checkpoint in {checkpoint_dir(workdir)} could be restored; every step was moved to "
      f"{os.path.join(workdir, CORRUPT_DIR)} (the full errors are in its *.error.txt):\n"
      f"{details}\nTo start this workdir over, remove or rename "
      f"{os.path.join(workdir, CORRUPT_DIR)}, or use a new --workdir.")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
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


# ----------------------------------------------------------------------------------- preemption


class PreemptionWatcher:
  """SIGTERM -> save at the next step boundary and exit 0.

  With several processes, JAX's preemption sync manager (started by `jax.distributed`) catches
  the signal and `reached_preemption_sync_point` makes every process agree on the same step;
  with one process we install our own handler, since Orbax/JAX only catch SIGTERM after
  `jax.distributed.initialize`.
  """

  def __init__(self):
    self._requested = False
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      # A SIGTERM caught by launch.py's latch before this handler existed counts as received.
      self._requested = workdir_lib.sigterm_latched()

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will checkpoint at the next step boundary and exit.",
                    signum)
    self._requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
