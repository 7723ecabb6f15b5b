"""Device mesh, shardings and host-local -> global arrays.

sim_jax is data parallel: one mesh axis, `data`, spans every device of every process. Batches are
sharded along it, parameters and optimizer state are replicated. Because the train step is a
`jax.jit` over global arrays (no `pmap`), XLA inserts the collectives: batch-norm statistics,
all-pairs losses and their gradients see the *global* batch.
"""

from __future__ import annotations

import datetime
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices (of every process) with axis `data`."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def stacked_data_sharding(mesh: Mesh) -> NamedSharding:
  """[steps, batch, ...] arrays: the step axis whole on every device, the batch split."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def _to_global(batch, sharding: NamedSharding):
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def host_to_global(batch, mesh: Mesh):
  """Turns a host-local batch (a pytree of NumPy arrays) into global `jax.Array`s.

  Each process passes its own slice of the global batch; the result has leading dimension
  `local_batch * process_count`, sharded over `data`.
  """
  return _to_global(batch, data_sharding(mesh))


def steps_to_global(batches: list, mesh: Mesh):
  """Several steps' host-local batches (same structure) as one pytree of global arrays
  [steps, local_batch * process_count, ...]: the batch axis sharded as `host_to_global`'s."""
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
  return _to_global(stacked, stacked_data_sharding(mesh))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> int:
  """Validates the global batch against the topology and returns the per-process batch."""
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise ValueError(
        f"config.train.batch_size={global_batch_size} is not divisible by the number of devices "
        f"({n_dev}); pick a multiple of {n_dev}.")
  return global_batch_size // jax.process_count()


def fetch(x):
  """Global (replicated or sharded) array -> NumPy on every process, without a collective when
  the array is replicated."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_shards[0].data)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def map_global_batches(fn, images: np.ndarray, global_batch: int, mesh: Mesh) -> np.ndarray:
  """`fn` (a jitted map of one global batch, e.g. an embedding) over `images` (the same array
  on every process) in fixed-shape global batches; the last one is padded, its padding dropped."""
  n = len(images)
  if n == 0:
    raise ValueError("no images to map (an empty split?)")
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch // pc
  out = []
  for start in range(0, n, global_batch):
    chunk = images[start:start + global_batch]
    valid = len(chunk)
    if valid < global_batch:  # Pad so every call has the compiled shape.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], global_batch - valid, axis=0)])
    local_chunk = chunk[pi * local:(pi + 1) * local]
    out.append(fetch(fn(host_to_global(local_chunk, mesh)))[:valid])
  return np.concatenate(out).astype(np.float32)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           timeout_s: int = 120) -> bool:
  """Starts `jax.distributed` when several processes are requested or a cluster is detected.

  Explicit flags win (also on one machine with CPU devices, which is how the tests run it);
  otherwise JAX's cluster auto-detection (TPU pods, SLURM, Open MPI) is used. Short timeouts make
  a dead peer end the survivors instead of hanging them for the default minutes.
  Returns True when the distributed runtime is running.
  """
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  auto = _cluster_detected()
  if not explicit and not auto:
    return False
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  kwargs["initialization_timeout"] = timeout_s
  heartbeat = int(os.environ.get("SIM_JAX_HEARTBEAT_TIMEOUT_S", "10"))
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat,
                             shutdown_timeout_seconds=timeout_s)
  logging.info("jax.distributed initialised: process %d of %d (coordinator %s)",
               jax.process_index(), jax.process_count(), coordinator_address or "auto")
  return True


def _cluster_detected() -> bool:
  """True on the clusters JAX can configure itself for (TPU pod slices, SLURM, Open MPI)."""
  if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if os.environ.get("OMPI_COMM_WORLD_SIZE") and int(os.environ["OMPI_COMM_WORLD_SIZE"]) > 1:
    return True
  # Multi-host TPU slices expose the worker list; single-host TPU VMs do not need initialize().
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def describe_topology() -> str:
  return (f"process {jax.process_index()}/{jax.process_count()}, "
          f"local devices {jax.local_device_count()}, global devices {jax.device_count()}, "
          f"platform {jax.default_backend()}, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}")
