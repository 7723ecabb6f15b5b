"""GradCache-style gradient accumulation for contrastive losses (Gao et al. 2021, arXiv 2101.06983).

A contrastive loss couples every sample of the batch, so ordinary gradient accumulation (summing
per-micro-batch losses) changes the loss: negatives would only come from the micro-batch. GradCache
keeps the full-batch loss exactly and only bounds the *encoder's* activation memory:

1. embed every chunk with the parameters held constant (no activations kept: `jax.lax.scan`
   over chunks, `stop_gradient` on the parameters);
2. compute the loss on all B embeddings and its gradient g = d loss / d embeddings (B x E);
3. for each chunk again, recompute its embeddings under `jax.vjp` and pull g_chunk back to the
   parameters, accumulating the parameter gradient.

Peak activation memory is that of one chunk; the cost is one extra encoder forward pass. The
result equals `jax.value_and_grad(lambda p: loss_fn(embed_fn(p, batch)))(params)` whenever the
encoder treats samples independently.

Model state (e.g. batch-norm statistics): pass `state`; `embed_fn(params, state, chunk)` then
returns `(embeddings, new_state)`. The state is threaded through the chunks in order, so batch-
norm sees *per-chunk* batch statistics (normalisation over B / num_chunks samples, and the running
averages are updated num_chunks times per step): the result then equals the plain gradient of
the chunked model, not of a model that normalises over the whole batch. Step 3 replays the same
state sequence, so the recomputed embeddings equal those of step 1. Randomness (dropout,
augmentation) must be a function of the chunk (e.g. per-example keys inside `batch`), so that
step 3 recomputes exactly what step 1 produced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _split(tree, num_chunks: int, name: str):
  """[B, ...] leaves -> [num_chunks, B / num_chunks, ...]; ValueError if B is not divisible."""
  def split(a):
    if a.shape[0] % num_chunks:
      raise ValueError(f"{name} leading dimension ({a.shape[0]}) must be divisible by "
                       f"num_chunks={num_chunks}.")
    return a.reshape((num_chunks, a.shape[0] // num_chunks) + a.shape[1:])
  return jax.tree.map(split, tree)


def _merge(tree):
  return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), tree)


def gradcache_value_and_grad(embed_fn, loss_fn, params, batch, *, num_chunks: int, state=None):
  """Full-batch `(loss, d loss / d params)` with the encoder run one chunk at a time.

  Args:
    embed_fn: `embed_fn(params, chunk) -> embeddings` (a pytree of [b, ...] arrays); with
      `state` given: `embed_fn(params, state, chunk) -> (embeddings, new_state)`.
    loss_fn: `loss_fn(all_embeddings) -> scalar`, all_embeddings with leading dimension B
      (close over labels, temperature, ...).
    params: parameter pytree to differentiate.
    batch: pytree of [B, ...] arrays (images, per-example keys, ...), B divisible by num_chunks.
    num_chunks: number of sub-batches (1 = plain value_and_grad, with one extra forward).
    state: optional model state threaded through the chunks (see the module docstring).
  Returns:
    (loss, grads) or, with `state`, (loss, grads, new_state); grads has the structure of params.
  """
  if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
    raise ValueError(f"num_chunks must be a positive int, got {num_chunks!r}.")
  chunks = _split(batch, num_chunks, "batch")
  with_state = state is not None

  def embed(p, st, chunk):
    if with_state:
      return embed_fn(p, st, chunk)
    return embed_fn(p, chunk), st

  # 1. Embeddings of every chunk; constant parameters, so no activation is kept for a backward.
  frozen = lax.stop_gradient(params)
  new_state, embeddings = lax.scan(lambda st, chunk: embed(frozen, st, chunk)[::-1], state, chunks)
  # 2. The loss couples the whole batch: its value and gradient w.r.t. all embeddings.
  loss, d_embeddings = jax.value_and_grad(loss_fn)(_merge(embeddings))
  d_chunks = _split(d_embeddings, num_chunks, "embeddings")

  # 3. Per chunk: recompute under vjp (replaying the state sequence) and pull back to params.
  def backprop(carry, xs):
    st, acc = carry
    chunk, d_chunk = xs
    _, pullback, st = jax.vjp(lambda p: embed(p, st, chunk), params, has_aux=True)
    (grads,) = pullback(d_chunk)
    return (st, jax.tree.map(jnp.add, acc, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (_, grads), _ = lax.scan(backprop, (state, zeros), (chunks, d_chunks))
  if with_state:
    return loss, grads, new_state
  return loss, grads
