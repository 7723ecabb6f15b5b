"""sim_jax.losses.miners against explicit NumPy loops (the exact selected set) and
pytorch-metric-learning's miners (same selection in float64); the triplet / contrastive losses
with a miner's mask; mining="semi_hard_pml" against pml's semi-hard miner + TripletMarginLoss."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from sim_jax import losses
from sim_jax.losses import miners, objective

torch = pytest.importorskip("torch")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")

LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 4], np.int32)  # class 2 has no positive
M = len(LABELS)


def _emb(seed, dim=5, normalize=True):
  x = np.random.default_rng(seed).normal(size=(M, dim))
  return x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x


# ----------------------------------------------------------------------------- NumPy references
def ref_dist(x, distance="euclidean"):
  x = np.asarray(x, np.float64)
  d = np.zeros((M, M))
  for i in range(M):
    for j in range(M):
      if distance == "cosine":
        d[i, j] = 1 - x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
      else:
        d[i, j] = np.sqrt(np.sum((x[i] - x[j]) ** 2))
  return d


def pairs(y):
  pos = {(a, p) for a in range(M) for p in range(M) if a != p and y[a] == y[p]}
  neg = {(a, n) for a in range(M) for n in range(M) if y[a] != y[n]}
  return pos, neg


def as_sets(mask):
  pos, neg = (np.asarray(m) for m in mask)
  return ({tuple(i) for i in np.argwhere(pos > 0)}, {tuple(i) for i in np.argwhere(neg > 0)})


def triplet_set(mask):
  return {tuple(i) for i in np.argwhere(np.asarray(mask.mask))}


def ref_multi_similarity(x, y, eps):
  d, (pos, neg) = ref_dist(x, "cosine"), pairs(y)
  sel_p, sel_n = set(), set()
  for a in range(M):
    dn = [d[a, n] for (b, n) in neg if b == a]
    dp = [d[a, p] for (b, p) in pos if b == a]
    sel_p |= {(a, p) for (b, p) in pos if b == a and dn and d[a, p] + eps > min(dn)}
    sel_n |= {(a, n) for (b, n) in neg if b == a and dp and d[a, n] - eps < max(dp)}
  return sel_p, sel_n


def ref_pair_margin(x, y, pm, nm):
  d, (pos, neg) = ref_dist(x), pairs(y)
  return {q for q in pos if d[q] > pm}, {q for q in neg if d[q] < nm}


def ref_hdc(x, y, f):
  d, (pos, neg) = ref_dist(x), pairs(y)
  # d is symmetric: (a, b) and (b, a) tie; the lower flat index a * M + b goes first.
  pos_sorted = sorted(pos, key=lambda q: (-d[q], q))
  neg_sorted = sorted(neg, key=lambda q: (d[q], q))
  return (set(pos_sorted[:math.ceil(f * len(pos))]), set(neg_sorted[:math.ceil(f * len(neg))]))


def ref_batch_easy_hard(x, y, ps, ns):
  d, (pos, neg) = ref_dist(x), pairs(y)
  sel_p, sel_n = set(), set()
  for a in range(M):
    P = [p for (b, p) in pos if b == a]
    N = [n for (b, n) in neg if b == a]
    pick_p = {"easy": min, "hard": max, "semihard": max}
    pick_n = {"hard": min, "easy": max, "semihard": min}
    p = n = None
    if ps == "semihard":
      n = pick_n[ns](N, key=lambda k: d[a, k]) if N else None
      cand = [q for q in P if n is not None and d[a, q] < d[a, n]]
      p = max(cand, key=lambda q: d[a, q]) if cand else None
    elif ns == "semihard":
      p = pick_p[ps](P, key=lambda q: d[a, q]) if P else None
      cand = [k for k in N if p is not None and d[a, k] > d[a, p]]
      n = min(cand, key=lambda k: d[a, k]) if cand else None
    else:
      p = pick_p[ps](P, key=lambda q: d[a, q]) if P and ps != "all" else None
      n = pick_n[ns](N, key=lambda k: d[a, k]) if N and ns != "all" else None
    if "all" not in (ps, ns):
      if p is not None and n is not None:
        sel_p.add((a, p))
        sel_n.add((a, n))
    else:
      sel_p |= {(a, q) for q in P} if ps == "all" else ({(a, p)} if p is not None else set())
      sel_n |= {(a, k) for k in N} if ns == "all" else ({(a, n)} if n is not None else set())
  return sel_p, sel_n


def ref_triplet_margin(x, y, margin, kind):
  d, (pos, neg) = ref_dist(x), pairs(y)
  out = set()
  for (a, p) in pos:
    for (b, n) in neg:
      if b != a:
        continue
      t = d[a, n] - d[a, p]
      ok = {"all": t <= margin, "hard": t <= 0, "semihard": 0 < t <= margin,
            "easy": t > margin}[kind]
      if ok:
        out.add((a, p, n))
  return out


def ref_angular(x, y, angle_deg):
  (pos, neg), out = pairs(y), set()
  for (a, p) in pos:
    for (b, n) in neg:
      if b == a:
        c = (x[a] + x[p]) / 2
        ang = math.atan2(np.linalg.norm(x[a] - x[p]), 2 * np.linalg.norm(x[n] - c))
        if ang > math.radians(angle_deg):
          out.add((a, p, n))
  return out


# -------------------------------------------------------------------------------- exact sets
PAIR_CASES = [
    ("multi_similarity", dict(epsilon=0.1), lambda x: ref_multi_similarity(x, LABELS, 0.1)),
    ("pair_margin", dict(pos_margin=0.8, neg_margin=1.2),
     lambda x: ref_pair_margin(x, LABELS, 0.8, 1.2)),
    ("hdc", dict(filter_percentage=0.3), lambda x: ref_hdc(x, LABELS, 0.3)),
] + [("batch_easy_hard", dict(pos_strategy=ps, neg_strategy=ns),
      functools.partial(lambda x, ps, ns: ref_batch_easy_hard(x, LABELS, ps, ns), ps=ps, ns=ns))
     for ps, ns in [("easy", "semihard"), ("hard", "hard"), ("semihard", "hard"),
                    ("easy", "easy"), ("all", "hard"), ("hard", "all"), ("all", "all")]]


@pytest.mark.parametrize("name,kwargs,ref", PAIR_CASES,
                         ids=[f"{c[0]}-{'-'.join(map(str, c[1].values()))}" for c in PAIR_CASES])
def test_pair_miner_selects_the_numpy_loop_set(name, kwargs, ref):
  with jax.enable_x64(True):
    mine = jax.jit(functools.partial(getattr(miners, name), **kwargs))
    for seed in (0, 1):
      x = _emb(seed)
      got = mine(jnp.asarray(x), LABELS)
      exp_p, exp_n = ref(x)
      got_p, got_n = as_sets(got)
      assert got_p == exp_p and got_n == exp_n, (seed, got_p ^ exp_p, got_n ^ exp_n)
      assert exp_p or exp_n  # a case that selects something


@pytest.mark.parametrize("kind", miners.TRIPLET_TYPES)
def test_triplet_margin_selects_the_numpy_loop_set(kind):
  with jax.enable_x64(True):
    x = _emb(2)
    got = triplet_set(jax.jit(functools.partial(miners.triplet_margin, margin=0.3,
                                                type_of_triplets=kind))(jnp.asarray(x), LABELS))
    exp = ref_triplet_margin(x, LABELS, 0.3, kind)
    assert got == exp and exp


def test_angular_selects_the_numpy_loop_set():
  with jax.enable_x64(True):
    x = _emb(3)
    got = triplet_set(jax.jit(miners.angular)(jnp.asarray(x), LABELS, 35.0))
    exp = ref_angular(x, LABELS, 35.0)
    assert got == exp and exp and len(exp) < 100


# --------------------------------------------------------------------------- pml agreement
def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def _pml_pairs(out):
  a1, p, a2, n = (o.numpy() for o in out)
  return set(zip(a1.tolist(), p.tolist())), set(zip(a2.tolist(), n.tolist()))


PML_PAIR_CASES = [
    (pml_miners.MultiSimilarityMiner(epsilon=0.1), "multi_similarity", dict(epsilon=0.1)),
    (pml_miners.PairMarginMiner(pos_margin=0.8, neg_margin=1.2), "pair_margin",
     dict(pos_margin=0.8, neg_margin=1.2)),
    # 0.55 keeps 8 of 14 positive and 42 of 76 negative pairs: never half of a symmetric tie
    # (whose order torch's topk leaves open).
    (pml_miners.HDCMiner(filter_percentage=0.55), "hdc", dict(filter_percentage=0.55)),
    (pml_miners.BatchEasyHardMiner(), "batch_easy_hard", {}),
    (pml_miners.BatchEasyHardMiner(pos_strategy="semihard", neg_strategy="hard"),
     "batch_easy_hard", dict(pos_strategy="semihard", neg_strategy="hard")),
    (pml_miners.BatchEasyHardMiner(pos_strategy="all", neg_strategy="easy",
                                   allowed_neg_range=(0.5, 1.6)),
     "batch_easy_hard", dict(pos_strategy="all", neg_strategy="easy",
                             allowed_neg_range=(0.5, 1.6))),
]


@pytest.mark.parametrize("pml_miner,name,kwargs", PML_PAIR_CASES,
                         ids=[f"{c[1]}{i}" for i, c in enumerate(PML_PAIR_CASES)])
def test_pair_miners_agree_with_pml(pml_miner, name, kwargs):
  """pml's default distances normalise; the embeddings here are unit vectors already."""
  with jax.enable_x64(True):
    for seed in (4, 5):
      x = _emb(seed)
      got = as_sets(getattr(miners, name)(jnp.asarray(x), LABELS, **kwargs))
      exp = _pml_pairs(pml_miner(_t(x), torch.tensor(LABELS)))
      assert got == exp


@pytest.mark.parametrize("kind", miners.TRIPLET_TYPES)
def test_triplet_margin_agrees_with_pml(kind):
  with jax.enable_x64(True):
    x = _emb(6)
    a, p, n = pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets=kind)(
        _t(x), torch.tensor(LABELS))
    exp = set(zip(a.tolist(), p.tolist(), n.tolist()))
    assert triplet_set(miners.triplet_margin(jnp.asarray(x), LABELS, 0.3, kind)) == exp


def test_angular_agrees_with_pml():
  with jax.enable_x64(True):
    x = _emb(7)
    a, p, n = pml_miners.AngularMiner(angle=35)(_t(x), torch.tensor(LABELS))
    assert triplet_set(miners.angular(jnp.asarray(x), LABELS, 35.0)) == \
        set(zip(a.tolist(), p.tolist(), n.tolist()))


def test_distance_weighted_weights_agree_with_pml(monkeypatch):
  """pml samples from its weights with torch's RNG; the weights themselves must agree."""
  seen = {}
  real = lmu.get_random_triplet_indices

  def spy(labels, ref_labels=None, t_per_anchor=None, weights=None):
    seen["w"] = weights.numpy().copy()
    return real(labels, ref_labels=ref_labels, t_per_anchor=t_per_anchor, weights=weights)

  monkeypatch.setattr(lmu, "get_random_triplet_indices", spy)
  with jax.enable_x64(True):
    x = _emb(8, dim=4)
    pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)(_t(x),
                                                                           torch.tensor(LABELS))
    got = jax.jit(miners.distance_weighted_weights)(jnp.asarray(x), LABELS, 0.5, 1.4)
    np.testing.assert_allclose(got, np.nan_to_num(seen["w"]), rtol=1e-9, atol=1e-12)
    # The sampled triplets: one negative per positive pair, always one with weight > 0.
    t = triplet_set(jax.jit(miners.distance_weighted)(jnp.asarray(x), LABELS,
                                                       jax.random.PRNGKey(0)))
    w = np.asarray(got)
    assert {(a, p) for a, p, _ in t} == {q for q in pairs(LABELS)[0] if w[q[0]].sum() > 0}
    assert len(t) == len({(a, p) for a, p, _ in t}) and all(w[a, n] > 0 for a, _, n in t)


def test_uniform_histogram_draws_per_bin_as_the_numpy_loop():
  with jax.enable_x64(True):
    x = _emb(9)
    num_bins, per_bin = 4, 3
    got = jax.jit(functools.partial(miners.uniform_histogram, num_bins=num_bins,
                                    pos_per_bin=per_bin, neg_per_bin=per_bin))(
        jnp.asarray(x), LABELS, jax.random.PRNGKey(1))
    d = ref_dist(x)
    for side, counts in zip(pairs(LABELS), got):
      vals = {q: d[q] for q in side}
      lo, hi = min(vals.values()), max(vals.values())
      edges = np.linspace(lo, hi, num_bins + 1)
      counts = np.asarray(counts)
      for b in range(num_bins):  # pml's rule: [lo, hi) except the last bin, [lo, hi]
        members = {q for q, v in vals.items()
                   if edges[b] <= v and (v < edges[b + 1] or (b == num_bins - 1 and
                                                              v <= edges[b + 1]))}
        drawn = sum(counts[q] for q in members)
        assert drawn == (per_bin if members else 0), (b, members)
      assert counts.sum() == per_bin * sum(
          1 for b in range(num_bins) if any(edges[b] <= v <= edges[b + 1] for v in vals.values()))
      assert all(counts[q] == 0 for q in zip(*np.nonzero(counts == counts)) if q not in vals)


def test_maximum_loss_picks_the_subset_of_largest_numpy_loss():
  with jax.enable_x64(True):
    x = jnp.asarray(_emb(10))
    key = jax.random.PRNGKey(3)
    loss_fn = functools.partial(losses.triplet, margin=0.5, mining="batch_all")
    got = jax.jit(lambda e: miners.maximum_loss(e, LABELS, key,
                                                lambda e, y, mk: loss_fn(e, y, mask=mk),
                                                output_batch_size=6, num_trials=4))(x)
    best, best_rows = -1.0, None
    for k in jax.random.split(key, 4):
      rows = sorted(np.asarray(jax.random.permutation(k, M)[:6]).tolist())
      xs, ys = np.asarray(x)[rows], LABELS[rows]
      terms = [max(np.linalg.norm(xs[a] - xs[p]) - np.linalg.norm(xs[a] - xs[n]) + 0.5, 0)
               for a in range(6) for p in range(6) for n in range(6)
               if a != p and ys[a] == ys[p] and ys[n] != ys[a]]
      active = [t for t in terms if t > 0]
      value = sum(active) / len(active) if active else 0.0
      if value > best:
        best, best_rows = value, rows
    exp_p = {(a, p) for (a, p) in pairs(LABELS)[0] if a in best_rows and p in best_rows}
    exp_n = {(a, n) for (a, n) in pairs(LABELS)[1] if a in best_rows and n in best_rows}
    assert as_sets(got) == (exp_p, exp_n)


# ------------------------------------------------------------------- losses with a miner's mask
def _pml_value_and_grad(loss, miner, x):
  xt = _t(x).requires_grad_(True)
  y = torch.tensor(LABELS)
  value = loss(xt, y, miner(xt, y) if miner is not None else None)
  value.backward()
  return float(value.detach()), xt.grad.numpy()


def test_semi_hard_pml_equals_pml_value_and_gradient():
  """#28: pml's semi-hard rule (TripletMarginMiner("semihard") + TripletMarginLoss)."""
  dist = pml_distances.LpDistance(normalize_embeddings=False)
  with jax.enable_x64(True):
    for seed in (11, 12):
      x = _emb(seed, normalize=False)
      exp_v, exp_g = _pml_value_and_grad(
          pml_losses.TripletMarginLoss(margin=0.5, distance=dist),
          pml_miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard", distance=dist), x)
      v, g = jax.jit(jax.value_and_grad(
          lambda e: losses.triplet(e, LABELS, 0.5, "semi_hard_pml")))(jnp.asarray(x))
      np.testing.assert_allclose(v, exp_v, rtol=1e-9)
      np.testing.assert_allclose(g, exp_g, rtol=1e-9, atol=1e-12)
      # ... and it differs from TF Addons' rule (the pinned-definitions table says how).
      assert abs(float(losses.triplet(jnp.asarray(x), LABELS, 0.5, "semi_hard")) - exp_v) > 1e-3


@pytest.mark.parametrize("case", ["pair_margin", "triplet_margin"])
def test_triplet_loss_with_a_miner_equals_pml(case):
  """pml's TripletMarginLoss over a miner's tuples == sim_jax's batch_all with the mask."""
  dist = pml_distances.LpDistance(normalize_embeddings=False)
  with jax.enable_x64(True):
    x = _emb(13, normalize=False) * 0.6
    if case == "pair_margin":
      pml_miner = pml_miners.PairMarginMiner(pos_margin=0.8, neg_margin=1.4, distance=dist)
      mine = lambda e: miners.pair_margin(e, LABELS, 0.8, 1.4)
    else:
      pml_miner = pml_miners.TripletMarginMiner(margin=0.4, type_of_triplets="hard",
                                                distance=dist)
      mine = lambda e: miners.triplet_margin(e, LABELS, 0.4, "hard")
    exp_v, exp_g = _pml_value_and_grad(pml_losses.TripletMarginLoss(margin=0.4, distance=dist),
                                       pml_miner, x)

    @jax.jit
    def f(e):
      return losses.triplet(e, LABELS, 0.4, "batch_all", mask=mine(e))

    v, g = jax.value_and_grad(f)(jnp.asarray(x))
    np.testing.assert_allclose(v, exp_v, rtol=1e-9)
    np.testing.assert_allclose(g, exp_g, rtol=1e-9, atol=1e-12)


def test_batch_hard_with_a_pair_mask_picks_among_the_mined_pairs():
  with jax.enable_x64(True):
    x = _emb(14)
    mined = miners.pair_margin(jnp.asarray(x), LABELS, 0.8, 1.2)
    got = losses.triplet(jnp.asarray(x), LABELS, 0.2, "batch_hard", mask=mined,
                         reduction="none")
    d, (sp, sn) = ref_dist(x), as_sets(mined)
    for a in range(M):
      dp = [d[a, p] for (b, p) in sp if b == a]
      dn = [d[a, n] for (b, n) in sn if b == a]
      exp = max(max(dp) - min(dn) + 0.2, 0) if dp and dn else 0.0
      np.testing.assert_allclose(got[a], exp, rtol=1e-12, atol=1e-15)


def test_contrastive_with_miner_weights():
  with jax.enable_x64(True):
    x = _emb(15)
    same = (LABELS[0::2] == LABELS[1::2]).astype(np.int32)
    w = np.asarray(jax.jit(lambda e: miners.pair_weights(
        miners.pair_margin(e, LABELS, 0.5, 1.0), same))(jnp.asarray(x)))
    d = ref_dist(x)
    exp_w = [(d[2 * i, 2 * i + 1] > 0.5) if same[i] else (d[2 * i, 2 * i + 1] < 1.0)
             for i in range(M // 2)]
    np.testing.assert_array_equal(w, np.asarray(exp_w, float))
    terms = [0.5 * d[2 * i, 2 * i + 1] ** 2 if same[i] else
             0.5 * max(1.0 - d[2 * i, 2 * i + 1], 0) ** 2 for i in range(M // 2)]
    exp = sum(wi * t for wi, t in zip(exp_w, terms)) / max(sum(exp_w), 1)
    got = jax.jit(functools.partial(losses.contrastive, margin=1.0))(
        jnp.asarray(x[0::2]), jnp.asarray(x[1::2]), same, weights=w)
    np.testing.assert_allclose(got, exp, rtol=1e-12)
    zero = jax.jit(functools.partial(losses.contrastive, margin=1.0))(
        jnp.asarray(x[0::2]), jnp.asarray(x[1::2]), same, weights=np.zeros(M // 2))
    assert float(zero) == 0.0


def test_miners_under_vmap_equal_per_example():
  xs = jnp.asarray(np.stack([_emb(s) for s in (20, 21)]), jnp.float32)
  ys = np.stack([LABELS, LABELS[::-1]])
  one_fn = jax.jit(lambda e, y: miners.multi_similarity(e, y, 0.1))
  got = jax.jit(jax.vmap(one_fn))(xs, ys)
  for i in range(2):
    one = one_fn(xs[i], ys[i])
    np.testing.assert_array_equal(got.pos[i], one.pos)
    np.testing.assert_array_equal(got.neg[i], one.neg)


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,match", [
    (lambda x: miners.multi_similarity(x, LABELS, distance="manhattan"), "distance.*manhattan"),
    (lambda x: miners.hdc(x, LABELS, filter_percentage=1.5), "filter_percentage.*1.5"),
    (lambda x: miners.batch_easy_hard(x, LABELS, pos_strategy="medium"),
     "pos_strategy.*medium"),
    (lambda x: miners.batch_easy_hard(x, LABELS, "semihard", "semihard"), "semihard"),
    (lambda x: miners.batch_easy_hard(x, LABELS, allowed_pos_range=(2, 1)),
     r"allowed_pos_range.*\(2, 1\)"),
    (lambda x: miners.triplet_margin(x, LABELS, type_of_triplets="some"),
     "type_of_triplets.*some"),
    (lambda x: miners.uniform_histogram(x, LABELS, jax.random.PRNGKey(0), num_bins=0),
     "num_bins.*0"),
    (lambda x: miners.maximum_loss(x, LABELS, jax.random.PRNGKey(0), None, 99),
     "output_batch_size.*99"),
    (lambda x: miners.pair_margin(x, LABELS[:4]), r"labels.*\[10\]"),
    (lambda x: losses.triplet(x, LABELS, mask=miners.PairMask(jnp.ones((3, 3)),
                                                             jnp.ones((3, 3)))),
     r"mask.pos.*\[10, 10\]"),
    (lambda x: losses.triplet(x, LABELS, mining="batch_hard",
                              mask=miners.triplet_margin(x, LABELS)), "TripletMask.*batch_hard"),
    (lambda x: losses.triplet(x, LABELS, mining="semi_hard_pml", soft=True), "semi_hard_pml"),
    (lambda x: losses.triplet(x, LABELS, mining="semi_hard_pml", block_size=4),
     "block_size=4.*semi_hard_pml"),
    (lambda x: losses.contrastive(x[:5], x[5:], LABELS[:5] > 0, weights=-np.ones(5)),
     "weights must be >= 0"),
])
def test_bad_input_names_the_argument_and_value(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.asarray(_emb(0), jnp.float32))


# ------------------------------------------------------------------------------------ config
def _loss_config(name="triplet", miner="pair_margin", sampler="pk"):
  c = test_config.get_config()
  c.loss.name, c.data.sampler, c.loss.miner.name = name, sampler, miner
  if name == "triplet":
    c.loss.margin = 0.3
  return c


def test_config_miner_reaches_the_triplet_and_contrastive_losses():
  x, y = jnp.asarray(_emb(16), jnp.float32), jnp.asarray(LABELS)
  c = _loss_config()
  c.loss.miner.pos_margin, c.loss.miner.neg_margin = 0.7, 1.3
  c.loss.mining = "batch_all"  # (batch_hard's extremes survive a pair-margin miner)
  objective.validate(c)
  got = jax.jit(lambda e, yy: objective.loss(c, {}, e, yy, {}))(x, y)
  mined = miners.pair_margin(x, y, 0.7, 1.3)
  np.testing.assert_allclose(got, losses.triplet(x, y, 0.3, "batch_all", mask=mined), rtol=1e-6)
  assert abs(float(got) - float(losses.triplet(x, y, 0.3, "batch_all"))) > 1e-4
  c = _loss_config("contrastive", "pair_margin", "pairs")
  same = LABELS[0::2] == LABELS[1::2]
  got = jax.jit(lambda e, yy: objective.loss(c, {}, e, yy, {"same": same}))(x, y)
  w = miners.pair_weights(miners.pair_margin(x, y), same)
  np.testing.assert_allclose(got, losses.contrastive(x[0::2], x[1::2], same, weights=w),
                             rtol=1e-6)


@pytest.mark.parametrize("name,miner,sampler,match", [
    ("nt_xent", "pair_margin", "pk",
     "config.loss.miner.name='pair_margin' is not read by.*nt_xent"),
    ("triplet", "hungry", "pk", "config.loss.miner.name.*hungry"),
    ("contrastive", "triplet_margin", "pairs", "config.loss.miner.name.*triplet_margin"),
])
def test_bad_miner_config_is_refused_naming_the_key(name, miner, sampler, match):
  with pytest.raises(ValueError, match=match):
    objective.validate(_loss_config(name, miner, sampler))
