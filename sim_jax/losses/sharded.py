"""Sharded forms of the row-core all-pairs losses (`tuple_streaming`): one device per row shard.

The global batch x [M, D] (labels [M]) is split over the mesh's "data" axis into k contiguous
shards of M/k rows. Inside `jax.shard_map` each device

  1. all-gathers the columns: x [M, D], labels [M] (and any per-column data a second sweep needs,
     e.g. lifted structure's per-row negative log-sum-exp), O(M D) per device, not the M x M
     matrix;
  2. streams its own M/k rows against all M columns in strips of `block_size` rows
     (`tuple_streaming.stream_row_subset`, each strip rematerialised in the backward pass), with
     the rows' global indices, so that "another sample" and the per-row look-ups are the global
     ones: per-device memory O(M D + block_size M);
  3. returns its rows' (num, den), sharded over "data" like the input rows.

The loss reduces (num, den) over the global batch (`_checks.reduce_per_anchor`: sum / sum, a psum
across the shards under `jax.jit`). The gradient is the single-device one: the transpose of the
all-gather is a reduce-scatter (`psum_scatter`), which adds every device's column gradient into
the device that holds the row. Tests: `tests/losses_tuple_sharded_test.py` (1, 2 and 4 fake CPU
devices, value and gradient equal the dense single-device loss, rtol 1e-5).

Which losses: `multi_similarity`, `circle`, `generalized_lifted_structure`, `nca` (one sweep) and
`lifted_structure` (two sweeps), by passing `mesh=` (with or without `block_size`; without, each
device's rows form one strip).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sim_jax.losses import tuple_streaming

DATA_AXIS = "data"


def num_shards(mesh, m: int) -> int:
  """Shards of the mesh's "data" axis; ValueError if it has none or M does not split evenly."""
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh must have a {DATA_AXIS!r} axis to shard the batch rows over, got "
                     f"axes {tuple(mesh.axis_names)}.")
  k = mesh.shape[DATA_AXIS]
  if m % k:
    raise ValueError(f"the global batch size must be divisible by the {k} shards of the mesh's "
                     f"{DATA_AXIS!r} axis, got M = {m}.")
  return k


def sharded_rows(make_core: Callable, x: jax.Array, labels: jax.Array, kind: str, mesh,
                 block_size: int | None = None, col_data: tuple = (), with_index: bool = False):
  """(num [M], den [M]) of a row core over the global batch, rows sharded over `mesh`.

  make_core(*col_data_gathered) -> core(matrix [b, M], pos, neg[, index]) -> (num [b], den [b]);
  col_data: per-row arrays [M] the core reads for rows and columns (gathered whole on each
  device). block_size None: each device's M/k rows in one strip. Outputs are sharded over "data".
  """
  m = x.shape[0]
  k = num_shards(mesh, m)
  local_rows = m // k
  block = local_rows if block_size is None else block_size

  def local(x_l, labels_l, *data_l):
    x_g = lax.all_gather(x_l, DATA_AXIS, tiled=True)
    labels_g = lax.all_gather(labels_l, DATA_AXIS, tiled=True)
    data_g = [lax.all_gather(a, DATA_AXIS, tiled=True) for a in data_l]
    index = lax.axis_index(DATA_AXIS) * local_rows + jnp.arange(local_rows)
    return tuple_streaming.stream_row_subset(make_core(*data_g), x_l, labels_l, index, x_g,
                                             labels_g, kind, block, with_index)

  rows = P(DATA_AXIS)
  specs = (rows,) * (2 + len(col_data))
  # check_vma=False: the strips mix gathered (device-invariant) columns with the device's own
  # rows, which the varying-manual-axes type check would ask to annotate by hand.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(rows, rows),
                         check_vma=False)
  # Inputs made inside the loss (the prepared embeddings) are laid out as the specs say first:
  # shard_map over an explicit-axes mesh does not reshard by itself.
  placed = [jax.device_put(a, NamedSharding(mesh, rows)) for a in (x, labels) + tuple(col_data)]
  return mapped(*placed)
