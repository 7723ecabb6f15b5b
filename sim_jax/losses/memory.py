"""Cross-batch memory (XBM, Wang et al., CVPR 2020): a FIFO ring buffer of past loss vectors and
labels kept in the train state, whose rows join every all-pairs loss as extra positives and
negatives.

State (`init`), a dict of fixed shapes; {} when `config.train.memory.size` is None
(the default) or 0:
  z       [S, D] the loss vectors of past batches (float32), written under stop_gradient
  labels  [S]    their labels (int32)
  valid   [S]    bool, the slot has been written
  ptr     []     int32, the next slot to write
z, labels and valid are sharded over the mesh's `data` axis (`state_shardings`), ptr is
replicated; all of it is checkpointed with the rest of the state and restored exactly.

One step (`sim_jax.train.train_step`):
  1. the loss of the batch z [M, D] uses the memory once it is ready - `step >= start_step` and
     every slot written (`view`): loss_fn([z; stop_gradient(memory.z)], [labels;
     memory.labels]), the dense loss over the concatenation, memory rows included as anchors
     (they carry no gradient). Before that, loss_fn(z, labels). Both are compiled; `lax.cond`
     picks one (`loss`).
  2. the batch's rows z (the vectors the loss saw, before this step's update) are written
     at slots (ptr + i) mod S, i < M, oldest first out (`enqueue`); skipped with the update on a
     non-finite step.
So the memory holds the S most recent rows of earlier steps, never the current batch (no row
meets itself), and is read from the first step >= start_step at which S rows have been written
(step ceil(S / M) at the earliest). pytorch-metric-learning's `CrossBatchMemory` instead adds
the batch to the memory first, uses batch rows only as anchors and drops self-comparisons; the
two differ in which rows are anchors (here: all of [batch; memory]).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sim_jax import sharding
from sim_jax.losses import objective

SHARDED = ("z", "labels", "valid")  # over the data axis; "ptr" is replicated


def check_config(config) -> None:
  """ValueError naming the key unless `config.train.memory` has size >= 0 (None, 0 = off) and
  start_step >= 0, and, with a memory, the loss is an all-pairs loss of labelled vectors (not
  explicit pairs, not the classifier) and GradCache is off (it never holds the batch's
  vectors). The size is checked against the batch (`enqueue`) and the device count
  (`state_shardings`) where those are known."""
  mem_cfg = config.train.memory
  size = mem_cfg.size or 0  # None (the default) = off
  if size < 0:
    raise ValueError(f"config.train.memory.size must be >= 0 (None or 0 = off), got {size}")
  if mem_cfg.start_step < 0:
    raise ValueError(f"config.train.memory.start_step must be >= 0, got {mem_cfg.start_step}")
  if not size:
    return
  spec = objective.spec(config.loss.name)
  # The two-view regularisers split the batch into its halves: [batch; memory] has none.
  if (spec.inputs != "labels" or "classifier" in spec.params
      or config.loss.name in objective.VIEW_LOSSES):
    raise ValueError(f"config.train.memory.size={size}: the cross-batch memory joins "
                     f"the all-pairs losses of labelled vectors, not config.loss.name="
                     f"{config.loss.name!r}")
  if config.train.grad_accum_chunks > 1:
    raise ValueError(f"config.train.memory.size={size} needs "
                     f"config.train.grad_accum_chunks=1 (got {config.train.grad_accum_chunks})")


def init(size: int | None, dim: int) -> dict:
  """An empty memory of `size` rows of `dim` (nothing valid); {} when size is None or 0."""
  if not size:
    return {}
  return dict(z=jnp.zeros((size, dim), jnp.float32), labels=jnp.zeros((size,), jnp.int32),
              valid=jnp.zeros((size,), bool), ptr=jnp.zeros((), jnp.int32))


def state_shardings(state_shapes, mesh):
  """Shardings of a train state: replicated, except the memory's rows over `data`."""
  rep, rows = sharding.replicated(mesh), sharding.data_sharding(mesh)
  out = jax.tree.map(lambda _: rep, state_shapes)
  if state_shapes.memory:
    size = state_shapes.memory["z"].shape[0]
    if size % mesh.size:
      raise ValueError(f"config.train.memory.size={size} does not split over the {mesh.size} "
                       f"devices; use a multiple of {mesh.size}")
    out = out.replace(memory={k: rows if k in SHARDED else rep for k in state_shapes.memory})
  return out


def view(memory: dict, step: jax.Array, start_step: int) -> dict | None:
  """What the loss reads: the memory with `ready` = step >= start_step and every slot written;
  None when there is no memory."""
  if not memory:
    return None
  return dict(memory, ready=(step >= start_step) & jnp.all(memory["valid"]))


def loss(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], z: jax.Array, labels: jax.Array,
         memory: dict | None) -> jax.Array:
  """loss_fn over [z; memory] once the memory is ready, else over z (see the module docstring).
  z [M, D], labels [M]; `memory` from `view` (None: loss_fn(z, labels))."""
  if memory is None:
    return loss_fn(z, labels)

  def with_memory():
    past = jax.lax.stop_gradient(memory["z"]).astype(z.dtype)
    return loss_fn(jnp.concatenate([z, past]),
                   jnp.concatenate([labels, memory["labels"].astype(labels.dtype)]))

  return jax.lax.cond(memory["ready"], with_memory, lambda: loss_fn(z, labels))


def enqueue(memory: dict, z: jax.Array, labels: jax.Array, mesh=None, apply=True) -> dict:
  """Writes the M rows of z / labels at slots (ptr + i) mod S where `apply` (a bool scalar: the
  step's update is applied), else keeps `memory`; the rows keep the `data` sharding when a mesh
  is given. {} stays {}. ValueError when M > S (a batch would overwrite itself)."""
  if not memory:
    return memory
  size, m = memory["z"].shape[0], z.shape[0]
  if m > size:
    raise ValueError(f"config.train.memory.size={size} is smaller than the {m} loss vectors of "
                     f"one batch; use at least {m} (or 0 = off)")
  slots = (memory["ptr"] + jnp.arange(m)) % size
  out = dict(z=memory["z"].at[slots].set(jax.lax.stop_gradient(z).astype(jnp.float32)),
             labels=memory["labels"].at[slots].set(labels.astype(jnp.int32)),
             valid=memory["valid"].at[slots].set(True),
             ptr=((memory["ptr"] + m) % size).astype(jnp.int32))
  out = jax.tree.map(lambda new, old: jnp.where(apply, new, old), out, memory)
  if mesh is not None:
    rows = sharding.data_sharding(mesh)
    out.update({k: jax.lax.with_sharding_constraint(out[k], rows) for k in SHARDED})
  return out
