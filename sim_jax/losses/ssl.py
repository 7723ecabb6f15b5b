"""Self-supervised regularisers over two views: VICReg and Barlow Twins, global-batch statistics.

Both read per-dimension statistics of the batch (means, variances, a D x D covariance or
cross-correlation). With `mesh=None` they are plain array functions: under `jax.jit` on a
globally sharded batch XLA already computes the global statistics. With a `mesh`, the batch is
split over its "data" axis inside `jax.shard_map` and every statistic is an explicit `psum` of
per-device sums (two passes: the global mean first, then centred second moments, so nothing is
computed as a difference of large sums), so each device holds only its rows plus D x D:
the value and gradient equal the single-device ones on the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sim_jax.losses import _checks
from sim_jax.losses.distributed import DATA_AXIS, num_data_shards


def _check_views(z1, z2) -> None:
  _checks.check_embeddings(z1, "z1")
  _checks.check_embeddings(z2, "z2")
  _checks.check_same_shape(z1, z2, "z1", "z2")
  if z1.shape[0] < 2:
    raise ValueError(f"z1 and z2 need at least 2 rows for a variance, got N = {z1.shape[0]}.")


def _sum(x, axis_name):
  """Sum over rows (axis 0), then over the devices of `axis_name` (None: this device only)."""
  return _psum(jnp.sum(x, axis=0), axis_name)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _centred(z, n, axis_name):
  return z - _sum(z, axis_name) / n


def _vicreg_body(z1, z2, n, invariance, variance, covariance, eps, axis_name):
  d = z1.shape[1]
  inv = jnp.sum(_sum(jnp.square(z1 - z2), axis_name)) / (n * d)
  total = invariance * inv
  off = 1.0 - jnp.eye(d, dtype=z1.dtype)
  for z in (z1, z2):
    c = _centred(z, n, axis_name)
    cov = _psum(c.T @ c, axis_name) / (n - 1)
    std = jnp.sqrt(jnp.diagonal(cov) + eps)
    total = total + variance * jnp.mean(jax.nn.relu(1.0 - std)) / 2
    total = total + covariance * jnp.sum(jnp.square(cov * off)) / d
  return total


def _barlow_body(z1, z2, n, lambd, eps, axis_name):
  d = z1.shape[1]
  normed = []
  for z in (z1, z2):
    c = _centred(z, n, axis_name)
    var = _sum(jnp.square(c), axis_name) / n           # biased, as BatchNorm1d's batch statistic
    normed.append(c / jnp.sqrt(var + eps))
  cross = _psum(normed[0].T @ normed[1], axis_name) / n
  on = jnp.sum(jnp.square(jnp.diagonal(cross) - 1.0))
  off = jnp.sum(jnp.square(cross * (1.0 - jnp.eye(d, dtype=cross.dtype))))
  return on + lambd * off


def _run(body, z1, z2, mesh, *params):
  dtype = _checks.compute_dtype(jnp.result_type(z1, z2))
  z1, z2 = z1.astype(dtype), z2.astype(dtype)
  n = z1.shape[0]
  if mesh is None:
    return body(z1, z2, n, *params, None)
  k = num_data_shards(mesh)
  if n % k:
    raise ValueError(f"the global batch size must be divisible by the {k} shards of the mesh's "
                     f"{DATA_AXIS!r} axis, got N = {n}.")
  rows = NamedSharding(mesh, P(DATA_AXIS))
  mapped = jax.shard_map(lambda a, b: body(a, b, n, *params, DATA_AXIS), mesh=mesh,
                         in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P())
  return mapped(jax.device_put(z1, rows), jax.device_put(z2, rows))


def vicreg(z1, z2, invariance=25.0, variance=25.0, covariance=1.0, eps=1e-4, mesh=None):
  """VICReg (Bardes et al., ICLR 2022, eqs. 1-6; pml `VICRegLoss` with its MeanReducer).

  z1, z2 [N, D]: the two views' embeddings (row i of each is the same example). With
  Cov(z) = (z - mean)^T (z - mean) / (N - 1) and std_j = sqrt(Cov_jj + eps):
    L = invariance * mean_{i,j} (z1_ij - z2_ij)^2
        + variance * sum_{z in (z1, z2)} mean_j [1 - std_j(z)]_+ / 2
        + covariance * sum_{z in (z1, z2)} sum_{j != k} Cov_jk(z)^2 / D
  (the variance term is the paper's v(Z) + v(Z') halved, as pml). Statistics over the global
  batch; `mesh`: computed per device and psum-reduced (see the module docstring). Scalar.
  """
  _check_views(z1, z2)
  _checks.check_positive(eps, "eps")
  return _run(_vicreg_body, z1, z2, mesh, invariance, variance, covariance, eps)


def barlow_twins(z1, z2, lambd=0.0051, eps=1e-5, mesh=None):
  """Barlow Twins (Zbontar et al., ICML 2021, eq. 1 and the authors' code).

  Each view is standardised per dimension over the global batch (mean, biased variance + eps:
  BatchNorm1d(affine=False) in training mode, synchronised across devices as the authors' code),
  C = z1n^T z2n / N [D, D], and
    L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2
  (lambd = 0.0051, the code's default; the paper rounds it to 5e-3). Not in
  pytorch-metric-learning 2.9. `mesh`: as `vicreg`. Scalar.
  """
  _check_views(z1, z2)
  _checks.check_positive(eps, "eps")
  return _run(_barlow_body, z1, z2, mesh, lambd, eps)
