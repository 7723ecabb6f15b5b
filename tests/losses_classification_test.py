"""softmax_ce / linear_logits (seed 001's classifier baseline) against NumPy and torch,
and the trainer's softmax_ce objective: its parameters, validation and evaluation by logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax import losses


def _ce_loop(logits, labels):
  """Per-example -log softmax(x_i)[y_i] by a float64 loop (max-shifted)."""
  out = []
  for row, y in zip(np.asarray(logits, np.float64), labels):
    m = max(row)
    lse = m + np.log(sum(np.exp(v - m) for v in row))
    out.append(lse - row[y])
  return np.array(out)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_matches_a_numpy_loop_and_torch(scale):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(9, 5)) * scale).astype(np.float32)
  labels = rng.integers(0, 5, size=9).astype(np.int32)
  want = _ce_loop(logits, labels)
  got = losses.softmax_ce(jnp.asarray(logits), jnp.asarray(labels), reduction="none")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * scale)
  np.testing.assert_allclose(losses.softmax_ce(logits, labels), want.mean(),
                             rtol=1e-5, atol=1e-4 * scale)
  np.testing.assert_allclose(losses.softmax_ce(logits, labels, reduction="sum"),
                             want.sum(), rtol=1e-5, atol=1e-3 * scale)
  torch = pytest.importorskip("torch", reason="torch (the [test] extra) is the second reference")
  ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(),
                                          torch.from_numpy(labels).long())
  np.testing.assert_allclose(losses.softmax_ce(logits, labels), ref.item(),
                             rtol=1e-5, atol=1e-4 * scale)


def test_gradient_is_softmax_minus_one_hot():
  """d mean_i l_i / d x_ic = (softmax(x_i)_c - [c = y_i]) / N, the closed form."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 4))
  y = np.array([0, 3, 1, 1, 2, 0], np.int32)
  p = np.exp(x - x.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  want = (p - np.eye(4)[y]) / 6
  got = jax.grad(lambda v: losses.softmax_ce(v, jnp.asarray(y)))(
      jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_linear_logits_and_input_errors():
  z = jnp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
  w = jnp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
  b = jnp.asarray([1.0, 0.0, -1.0, 2.0])
  np.testing.assert_allclose(losses.linear_logits(z, w, b), np.asarray(z) @ np.asarray(w) + b)
  with pytest.raises(ValueError, match=r"kernel must have shape \[D=3, C\]"):
    losses.linear_logits(z, w.T, b)
  with pytest.raises(ValueError, match=r"bias must have shape \[C=4\]"):
    losses.linear_logits(z, w, b[:3])
  with pytest.raises(ValueError, match=r"class ids in \[0, 4\).*\[0, 4\]"):
    losses.softmax_ce(w, jnp.array([0, 1, 4]))
  with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
    losses.softmax_ce(w, jnp.array([0, 1]))
  with pytest.raises(ValueError, match=r"logits must have shape \[N, D\]"):
    losses.softmax_ce(w[0], jnp.array([0]))


def _config(**loss):
  from configs import test as test_config
  cfg = test_config.get_config()
  cfg.loss.name = "softmax_ce"
  cfg.model.normalize = False
  for k, v in loss.items():
    cfg[k.split(".")[0]][k.split(".")[1]] = v
  return cfg


@pytest.mark.parametrize("override, needle", [
    ({"data.sampler": "views"}, "view_labels='class'"),
    ({"model.projection_depth": 2}, "projection_depth=0"),
    ({"train.grad_accum_chunks": 2}, "grad_accum_chunks=2"),
    ({"loss.num_classes": 0}, "num_classes must be positive"),
])
def test_softmax_ce_config_errors_name_the_field(override, needle):
  from sim_jax import train
  with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    train.validate_config(_config(**override))


@pytest.mark.slow
def test_trainer_learns_a_classifier_and_evaluates_by_its_distributions():
  """The classifier lives in params["loss"] with shape [D, C]; training lowers the loss from
  log C; a kl metric ranks by logits, euclidean by the embedding; too few classes is refused."""
  from sim_jax import data, sharding, train
  cfg = _config()
  cfg.eval.metric = "kl"
  cfg.train.steps = 60  # the cosine schedule spans the steps taken here
  cfg.optimizer.learning_rate = 1e-2
  tr = train.make_setup(cfg)
  c = tr.info.num_classes
  state = train.init_state(tr)
  kernel = state.params["loss"]["classifier_kernel"]
  assert kernel.shape == (cfg.model.embedding_dim, c) == (16, 10)
  assert np.all(np.asarray(state.params["loss"]["classifier_bias"]) == 0)
  it = data.create_train_iterator(cfg.data, global_batch_size=16, seed=0, process_index=0,
                                  process_count=1)
  step = train.jit_train_step(tr)
  seen = []
  for _ in range(60):
    state, m = step(state, sharding.host_to_global(next(it), tr.mesh))
    seen.append(float(m.compute()["loss"]))
  assert abs(seen[0] - np.log(c)) < 1.0, seen[0]  # near-uniform at LeCun-normal init
  assert np.mean(seen[-10:]) < 0.75 * np.log(c), seen
  images = np.zeros((3, *tr.image_shape), np.uint8)
  logits = train.embed_images(tr, state, images)
  emb = np.asarray(train.embed_step(state.params, state.batch_stats, images, model=tr.model))
  p = {k: np.asarray(v) for k, v in state.params["loss"].items()}
  np.testing.assert_allclose(logits, emb @ p["classifier_kernel"] + p["classifier_bias"],
                             rtol=1e-5, atol=1e-5)
  cfg.eval.metric = "euclidean"
  assert train.embed_images(train.make_setup(cfg), state, images).shape == (3, 16)
  cfg.loss.num_classes = 4
  with pytest.raises(ValueError, match="num_classes=4 is smaller than the 10 classes"):
    train.make_setup(cfg)
