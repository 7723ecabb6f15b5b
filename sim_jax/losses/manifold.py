"""Manifold loss (Aziere & Todorovic, CVPR 2019, "Ensemble Deep Manifold Similarity Learning
using Hard Proxies"; pml `ManifoldLoss`), with the meta-class assignment as an explicit input.

pml draws the assignment of samples to proxies ("meta classes") inside the loss with torch's
global generator, unless it is passed as `indices_tuple`; here it is always an argument,
`meta_classes` [N] int in [0, K), and `random_meta_classes(key, n, k)` draws pml's rule with
`jax.random` (every proxy used once, the other N - K samples uniform, then shuffled). Labels are
not read (as pml).

With the N embeddings x and the K proxies p stacked as E = [x; p] [(N + K), D]:
  S_ij = exp(max(cos(E_i, E_j), 0) / 0.5) for i != j, S_ii = 0        (similarity graph)
  S_bar = Dg^{-1/2} S Dg^{-1/2},  Dg = diag(sum_j S_ij)                 (normalised)
  F = (1 - alpha) (I - alpha S_bar)^{-1}                                (random walk, eq. 3)
  G = F[:N, N:] [N, K]  (intrinsic: walk similarity of sample i to proxy k)
  C_ik = cos(F[i, :], F[N + k, :]) [N, K]  (context: of their whole walk profiles)
  h(A)_i = log(1 + sum_{k != m_i, t_ik >= 0} e^{t_ik}),  t_ik = A_ik - A_{i, m_i} + margin
  L = mean_i h(G)_i + lambda_c mean_i h(C)_i
A term with t < 0 contributes nothing (pml sets it to -inf before the exp), so the loss is
piecewise smooth. Dense O((N + K)^3) (a matrix inverse): no streaming or sharded form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim_jax.losses import _checks
from sim_jax.numerics import l2_normalize


def random_meta_classes(key: jax.Array, n: int, k: int) -> jax.Array:
  """pml's default assignment [n] int32: arange(k), then n - k draws uniform in [0, k), the whole
  shuffled. ValueError if n < k (pml's rule needs every proxy once)."""
  if k > n:
    raise ValueError(f"random_meta_classes needs n >= k (each proxy used once), got n={n}, "
                     f"k={k}.")
  k_draw, k_perm = jax.random.split(key)
  rest = jax.random.randint(k_draw, (n - k,), 0, k, jnp.int32)
  return jax.random.permutation(k_perm, jnp.concatenate([jnp.arange(k, dtype=jnp.int32), rest]))


def _hinge_log1p(a: jax.Array, meta: jax.Array, margin) -> jax.Array:
  """h(A) [N]: log(1 + sum_{k != m_i, t_ik >= 0} e^{t_ik}), t_ik = A_ik - A_{i, m_i} + margin."""
  own = jnp.take_along_axis(a, meta[:, None], axis=1)
  t = a - own + margin
  keep = (t >= 0) & (jnp.arange(a.shape[1])[None, :] != meta[:, None])
  terms = jnp.where(keep, jnp.exp(jnp.where(keep, t, 0.0)), 0.0)
  return jnp.log1p(jnp.sum(terms, axis=1))


def manifold(embeddings, proxies, meta_classes, lambda_c=1.0, alpha=0.8, margin=5e-4):
  """Manifold loss (see the module docstring for the formula); scalar.

  Args: embeddings [N, D] float; proxies [K, D] float (pml `proxies`, learnt); meta_classes [N]
    int in [0, K) (the proxy each sample belongs to; `random_meta_classes` draws pml's default);
    lambda_c >= 0 (finite): weight of the context term; alpha in (0, 1): random-walk parameter;
    margin: added to every difference.
  Computed in float32 (float64 for float64 inputs); pml inverts in float32 whatever the input.
  """
  _checks.check_embeddings(embeddings)
  _checks.check_embeddings(proxies, "proxies")
  n, d = embeddings.shape
  k = proxies.shape[0]
  if proxies.shape[1] != d:
    raise ValueError(f"proxies must have shape [K, D={d}], got {np.shape(proxies)}.")
  _checks.check_labels(meta_classes, n, "meta_classes")
  meta_np = _checks._concrete_values(meta_classes)
  if meta_np is not None and (np.any(meta_np < 0) or np.any(meta_np >= k)):
    raise ValueError(f"meta_classes must lie in [0, K={k}), got values in "
                     f"[{meta_np.min()}, {meta_np.max()}].")
  for name, value, ok, want in (("lambda_c", lambda_c, lambda v: 0 <= v < np.inf, "in [0, inf)"),
                                ("alpha", alpha, lambda v: 0 < v < 1, "in (0, 1)")):
    v = _checks._concrete_values(value)
    if v is not None and not np.all(ok(v)):
      raise ValueError(f"{name} must be {want}, got {value}.")
  dtype = _checks.compute_dtype(jnp.result_type(embeddings, proxies))
  e = l2_normalize(jnp.concatenate([embeddings.astype(dtype), proxies.astype(dtype)]))
  eye = jnp.eye(n + k, dtype=dtype)
  s = jnp.exp(jnp.maximum(e @ e.T, 0.0) / 0.5) * (1 - eye)
  inv_sqrt = jax.lax.rsqrt(jnp.sum(s, axis=1))  # every row sums to >= N + K - 1 > 0
  s_bar = inv_sqrt[:, None] * s * inv_sqrt[None, :]
  f = (1 - alpha) * jnp.linalg.inv(eye - alpha * s_bar)
  meta = jnp.asarray(meta_classes).astype(jnp.int32)
  loss_int = jnp.mean(_hinge_log1p(f[:n, n:], meta, margin))
  ctx = l2_normalize(f[:n]) @ l2_normalize(f[n:]).T                 # [N, K] cosines of rows
  loss_ctx = jnp.mean(_hinge_log1p(ctx, meta, margin))
  return loss_int + lambda_c * loss_ctx
