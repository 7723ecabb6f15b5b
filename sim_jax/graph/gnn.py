"""A two-layer GCN that refines embeddings from their graph neighbours, and its full-batch fit.

  GCNLayer:      H' = A_hat H W + b                      (Kipf & Welling 2017, eq. 2, no act.)
  GraphRefiner:  Z  = l2( X + A_hat relu(A_hat X W1 + b1) W2 + b2 )
                 X [N, D] the encoder's embeddings, A_hat [N, N] `relations.normalized_adjacency`,
                 W1 [D, hidden], W2 [hidden, D]; Z [N, D] unit rows.
W2 starts at zero, so an untrained refiner returns the encoder's embeddings (L2-normalised): the
fit only moves them where neighbours help. `fit_refiner` trains it full-batch on one graph with
SupCon (`sim_jax.losses.supcon`) on the nodes' class labels; `refine` applies it to any graph of
any size (the weights do not depend on N: the model is inductive).

Why 40 lines of Flax rather than a graph library: jraph (google-deepmind), the JAX GNN library,
has had no release since 0.0.6.dev0 (August 2022) and is not maintained; the JAX-native
alternatives are young single releases on Flax NNX, while sim_jax is Linen. The graphs here are a
few thousand nodes, so a dense A_hat matmul is simpler and faster on CPU than padded
segment-sum message passing, and needs no new dependency.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sim_jax.losses import supcon


class GCNLayer(nn.Module):
  """H' = (A_hat H) W + b: neighbour-averaged features, then a Dense (no activation)."""
  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, adj: jax.Array, h: jax.Array) -> jax.Array:
    return nn.Dense(self.features, kernel_init=self.kernel_init, name="dense")(adj @ h)


class GraphRefiner(nn.Module):
  """Z = l2(X + GCN2(relu(GCN1(X)))); see the module docstring. Returns [N, D]."""
  hidden: int = 128

  @nn.compact
  def __call__(self, adj: jax.Array, x: jax.Array) -> jax.Array:
    h = nn.relu(GCNLayer(self.hidden, name="gcn1")(adj, x))
    h = GCNLayer(x.shape[-1], kernel_init=nn.initializers.zeros, name="gcn2")(adj, h)
    z = x + h
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def fit_refiner(adj, x, labels, *, hidden: int = 128, steps: int = 200,
                learning_rate: float = 1e-2, temperature: float = 0.1, seed: int = 0):
  """Params of a `GraphRefiner` trained `steps` full-batch Adam steps on SupCon of its output.

  adj [N, N] (A_hat), x [N, D] float, labels [N] int. Returns (params, losses [steps]).
  """
  if steps < 0:
    raise ValueError(f"fit_refiner steps must be >= 0; got {steps}")
  adj, x = jnp.asarray(adj, jnp.float32), jnp.asarray(x, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  model = GraphRefiner(hidden)
  params = model.init(jax.random.PRNGKey(seed), adj, x)["params"]
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    return supcon(model.apply({"params": p}, adj, x), labels, temperature=temperature)

  def step(carry, _):
    p, opt = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  (params, _), losses = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
      (params, tx.init(params)))
  return params, np.asarray(losses)


def refine(params, adj, x, hidden: int = 128) -> np.ndarray:
  """The refined embeddings [N, D] of `x` [N, D] over the graph `adj` [N, N]."""
  out = GraphRefiner(hidden).apply({"params": params}, jnp.asarray(adj, jnp.float32),
                                   jnp.asarray(x, jnp.float32))
  return np.asarray(out)
