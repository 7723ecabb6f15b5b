r"""Checks the trainer's batch-hard triplet objective on one real glyph_han batch against an
independent NumPy loop (docs/experiments/characters.md, "Is batch-hard implemented as the seed
ran it?").

  python docs/experiments/characters_check_batch_hard.py [--margin=0.2] [--soft] [--init_from=RUN]

The batch is the trainer's own: `configs/characters.py` with the triplet settings of its
`hard_mining` ablation, one P x K batch (32 characters x 4) from `create_train_iterator`, the
glyph augmentation of `prepare_inputs`, and the encoder at its step-0 parameters run with
`model.normalize=False` to expose the raw embedding x [N, D]. The trainer's path from x to the
loss is then `heads.l2_normalize` (what the encoder applies when `model.normalize`) and
`objective.loss` (the loss table entry `loss.name="triplet"` selects, with `loss.mining` and
`loss.soft`). `--init_from` embeds the batch with a trained run's encoder instead.
One label is replaced by a fresh class so that the batch holds an anchor with no
positive (it must be excluded) and three anchors with two positives instead of three.

The NumPy reference (float64, written from the definitions, not from sim_jax):
  z_i = x_i / |x_i|,  d_ij = |z_i - z_j|_2 (not squared),
  P(a) = {p != a : y_p = y_a},  N(a) = {n : y_n != y_a},  A = {a : P(a) and N(a) non-empty},
  p*(a) = argmax_{p in P(a)} d_ap,  n*(a) = argmin_{n in N(a)} d_an,
  L = 1/|A| sum_{a in A} [d_ap* - d_an* + m]_+   (soft: log(1 + exp(d_ap* - d_an*))),
  dL/dz by the chain rule through the two selected distances of each anchor (the selection
  itself carries no gradient), then dL/dx_i = (g_i - z_i <z_i, g_i>) / |x_i|.
Prints both losses, the largest gradient difference, and the batch's active-anchor count.
Exits 1 when they differ by more than 1e-4 (relative to the gradient's largest entry).
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import characters
from sim_jax import train
from sim_jax.data import pipeline
from sim_jax.losses import objective
from sim_jax.models import l2_normalize


def numpy_batch_hard(x: np.ndarray, labels: np.ndarray, margin: float, soft: bool):
  """(loss, dL/dx [N, D], #anchors in A, #active anchors, #anchors with d_ap* > d_an*) by an
  explicit loop over anchors."""
  x = x.astype(np.float64)
  norms = np.sqrt(np.sum(x * x, axis=1))
  z = x / norms[:, None]
  n = len(labels)
  g = np.zeros_like(z)
  terms, valid = [], 0
  active = inverted = 0
  for a in range(n):
    pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
    neg = [q for q in range(n) if labels[q] != labels[a]]
    if not pos or not neg:
      continue
    valid += 1
    d_pos = [np.linalg.norm(z[a] - z[p]) for p in pos]
    d_neg = [np.linalg.norm(z[a] - z[q]) for q in neg]
    p, q = pos[int(np.argmax(d_pos))], neg[int(np.argmin(d_neg))]
    d_ap, d_an = max(d_pos), min(d_neg)
    u = d_ap - d_an
    inverted += u > 0  # the hardest positive farther than the hardest negative
    if soft:
      terms.append(np.log1p(np.exp(u)))
      coef = 1.0 / (1.0 + np.exp(-u))  # d softplus / du
    else:
      terms.append(max(u + margin, 0.0))
      coef = 1.0 if u + margin > 0 else 0.0
    active += coef > 0 and not soft
    # d d_ap / d z_a = (z_a - z_p) / d_ap, d d_ap / d z_p = -(z_a - z_p) / d_ap; same for n.
    e_ap = (z[a] - z[p]) / d_ap
    e_an = (z[a] - z[q]) / d_an
    g[a] += coef * (e_ap - e_an)
    g[p] -= coef * e_ap
    g[q] += coef * e_an
  loss = sum(terms) / max(valid, 1)
  g /= max(valid, 1)
  gx = (g - z * np.sum(z * g, axis=1, keepdims=True)) / norms[:, None]
  return loss, gx, valid, active, inverted


def trainer_batch(margin: float, soft: bool, init_from: str = ""):
  """(config, raw embeddings x [N, D], labels [N], params, batch) of one real training batch,
  embedded at step 0 or by the encoder of the run `init_from`."""
  config = characters.get_config()
  config.unlock()
  config.update_from_flattened_dict({**characters.HARD, "loss.margin": margin, "loss.soft": soft})
  raw = characters.get_config()
  raw.unlock()
  raw.update_from_flattened_dict({**characters.HARD, "model.normalize": False,
                                  "model.init_from": init_from})
  setup = train.make_setup(raw)
  state = train.init_state(setup)
  it = pipeline.create_train_iterator(config.data, global_batch_size=config.train.batch_size,
                                      seed=config.seed)
  batch = jax.tree.map(jnp.asarray, next(it))
  images, labels = train.prepare_inputs(
      batch, jax.random.PRNGKey(1), config=config,
      augment_fn=train.make_augment_fn(config.data.augment), train=True)
  x, _, _ = train.forward(setup.model, state.params, state.batch_stats, images, train=True,
                          rng=jax.random.PRNGKey(2))
  labels = np.asarray(labels).copy()
  labels[0] = labels.max() + 1  # an anchor without a positive; its 3 partners keep 2 each
  return config, np.asarray(x), labels, state.params, batch


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--margin", type=float, default=0.2)
  parser.add_argument("--soft", action="store_true")
  parser.add_argument("--init_from", default="",
                      help="a run directory: embed the batch with its trained encoder")
  args = parser.parse_args(argv)
  config, x, labels, params, batch = trainer_batch(args.margin, args.soft, args.init_from)

  def trainer_loss(x_):
    return objective.loss(config, params, l2_normalize(x_), jnp.asarray(labels), batch,
                          rng=jax.random.PRNGKey(3))

  loss, grad = jax.value_and_grad(trainer_loss)(jnp.asarray(x))
  ref_loss, ref_grad, valid, active, inverted = numpy_batch_hard(x, labels, args.margin, args.soft)
  scale = np.max(np.abs(ref_grad))
  err = np.max(np.abs(np.asarray(grad, np.float64) - ref_grad)) / scale
  z = x / np.linalg.norm(x, axis=1, keepdims=True)
  spread = np.mean(np.std(z, axis=0)) * np.sqrt(x.shape[1])
  print(f"batch: N={len(labels)} D={x.shape[1]}, {len(set(labels.tolist()))} labels, "
        f"{valid} anchors with a positive and a negative, {active} active (hinge > 0), "
        f"{inverted} with d_ap* > d_an*; "
        f"normalised embedding std * sqrt(D) = {spread:.3f}")
  print(f"loss: trainer {float(loss):.7f}  numpy {ref_loss:.7f}  "
        f"|diff| {abs(float(loss) - ref_loss):.2e}")
  print(f"dL/dx: max |trainer - numpy| / max |numpy| = {err:.2e} (max |numpy| = {scale:.3e})")
  ok = abs(float(loss) - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)) and err <= 1e-4
  print("MATCH" if ok else "MISMATCH")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
