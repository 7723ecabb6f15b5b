"""Trainer tests: the real launch.py path, resume, multi-device equivalence, config validation."""

import json
import os
import re

import numpy as np
import pytest

from tests import helpers

pytestmark = pytest.mark.slow

# A `--mode=search` result line: "  1. U+2192 RIGHTWARDS ARROW  similarity 0.9993  label 3  id 42".
SEARCH_ROW = re.compile(
    r"^\s+(\d+)\. (.+?)  (similarity|distance) (-?[\d.]+)  label (\d+)  id (\d+)$")


def _events(workdir):
  return [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]


def _logged_steps(event_file, tag):
  from tensorboard.backend.event_processing import event_accumulator
  ea = event_accumulator.EventAccumulator(event_file, size_guidance={"tensors": 0, "scalars": 0})
  ea.Reload()
  events = ea.Tensors(tag) if tag in ea.Tags()["tensors"] else ea.Scalars(tag)
  return [e.step for e in events]


def test_end_to_end_then_resume(tmp_path):
  workdir = str(tmp_path / "run")
  proc = helpers.run_launch(workdir)
  assert proc.returncode == 0, helpers.describe(proc)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert _events(workdir), os.listdir(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["train"]["steps"] == 6 and saved["model"]["name"] == "lenet5"
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  # A few steps on real handwriting already beat random embeddings by a wide margin.
  assert final["metrics"]["retrieval/mrr@5"] > final["chance"]["retrieval/mrr@5"] + 0.2
  # Floors beside chance, with the metrics' keys; raw digits are far above chance too.
  assert sorted(final) == ["chance", "floors", "metrics"]
  assert sorted(final["floors"]) == ["random_init", "raw_pixels"]
  for values in (final["chance"], *final["floors"].values()):
    assert values.keys() == final["metrics"].keys()
  assert final["floors"]["raw_pixels"]["retrieval/mrr@5"] > final["chance"]["retrieval/mrr@5"]
  assert "Starting a new run" in proc.stderr and "Resumed" not in proc.stderr
  line = [x for x in proc.stderr.splitlines() if "eval retrieval/mrr@5 " in x][0]
  assert "(chance " in line and ", raw pixels " in line and ", random init " in line, line
  first_events = _events(workdir)
  assert len(first_events) == 1
  # Floors are computed once, at the first evaluation, into TensorBoard as floors/*.
  assert _logged_steps(os.path.join(workdir, first_events[0]),
                       "floors/raw_pixels/retrieval/mrr@5") == [3]

  proc2 = helpers.run_launch(workdir, "--config.train.steps=9", "--config.train.plots=True")
  assert proc2.returncode == 0, helpers.describe(proc2)
  assert "Resumed from step 6" in proc2.stderr, helpers.describe(proc2)
  # The resumed run trained steps 7-9 only: its own event file logs steps 8 and 9 (log_every=2
  # and the last step), not a run restarted from step 0 (2, 4, 6, 8, 9).
  new_events = [f for f in _events(workdir) if f not in first_events]
  assert len(new_events) == 1, (first_events, _events(workdir))
  assert _logged_steps(os.path.join(workdir, new_events[0]), "train/loss") == [8, 9]
  assert set(os.listdir(os.path.join(workdir, "plots"))) - {"umap_test.png"} == {
      "distances.png", "per_class.png", "retrieval_test.png", "roc.png", "tables.md",
      "training_curves.png", "tsne_test.png"}
  _check_tensorboard(workdir, os.path.join(workdir, new_events[0]))
  assert "9" in os.listdir(os.path.join(workdir, "checkpoints"))
  # Running again with nothing left to do neither retrains nor fails.
  proc3 = helpers.run_launch(workdir, "--config.train.steps=9")
  assert proc3.returncode == 0, helpers.describe(proc3)
  assert "Nothing to train" in proc3.stderr
  _check_modes(workdir, tmp_path)
  _check_init_from(workdir, tmp_path)
  _check_floors_mode(final, tmp_path)


def _check_floors_mode(final, tmp_path):
  """--mode=floors trains nothing and finds the floors and chance levels the run reported:
  none of them depends on training."""
  out = str(tmp_path / "floors")
  proc = helpers.run_launch(out, "--mode=floors")
  assert proc.returncode == 0, helpers.describe(proc)
  assert not os.path.exists(os.path.join(out, "checkpoints"))
  with open(os.path.join(out, "floors.json")) as f:
    got = json.load(f)
  assert got["floors"] == final["floors"] and got["chance"] == final["chance"]
  row = [x for x in proc.stdout.splitlines() if x.startswith("retrieval/mrr@5 ")][0].split()
  assert [float(v) for v in row[1:]] == pytest.approx(
      [final["chance"]["retrieval/mrr@5"], final["floors"]["raw_pixels"]["retrieval/mrr@5"],
       final["floors"]["random_init"]["retrieval/mrr@5"]], abs=1e-4)


def _check_tensorboard(workdir, event_file):
  """The resumed run's event file holds the end-of-run images and the config text; the
  projector files of the query split exist and parse."""
  from google.protobuf import text_format
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.projector import projector_config_pb2
  ea = event_accumulator.EventAccumulator(event_file, size_guidance={"tensors": 0})
  ea.Reload()
  plugin = {t: ea.SummaryMetadata(t).plugin_data.plugin_name for t in ea.Tags()["tensors"]}
  assert plugin["plots/roc"] == plugin["plots/retrieval_test"] == "images", plugin
  assert plugin["config"] == plugin["tables"] == "text", plugin
  assert "eval/retrieval/recall@1" not in plugin and "eval/retrieval/precision@1" in plugin
  with open(os.path.join(workdir, "projector_config.pbtxt")) as f:
    (emb,) = text_format.Parse(f.read(), projector_config_pb2.ProjectorConfig()).embeddings
  tensors = np.loadtxt(os.path.join(workdir, emb.tensor_path), delimiter="\t")
  with open(os.path.join(workdir, emb.metadata_path)) as f:
    assert len(f.read().splitlines()) == 1 + len(tensors)
  assert os.path.exists(os.path.join(workdir, emb.sprite.image_path))


def _check_modes(workdir, tmp_path):
  """--mode=evaluate / embed / search on the checkpoint of the run above."""
  from PIL import Image

  from configs import test as test_config
  from sim_jax import data

  ev = helpers.run_launch(workdir, "--mode=evaluate", "--config.train.steps=9")
  assert ev.returncode == 0, helpers.describe(ev)
  line = [x for x in ev.stdout.splitlines() if x.startswith("step 9  retrieval/mrr@5 ")]
  assert line and "(chance " in line[0] and ", raw pixels " in line[0] \
      and ", random init " in line[0], ev.stdout
  with open(os.path.join(workdir, "eval_step9.json")) as f:
    assert sorted(json.load(f)) == ["chance", "floors", "metrics", "step"]
  out = str(tmp_path / "emb.npz")
  em = helpers.run_launch(workdir, "--mode=embed", f"--output={out}", "--split=test")
  assert em.returncode == 0, helpers.describe(em)
  test_split = data.load_split(test_config.get_config().data, "test")
  with np.load(out) as z:
    assert z["embeddings"].shape == (len(test_split["label"]), 16)
    np.testing.assert_array_equal(z["labels"], test_split["label"])
    np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, rtol=1e-5)
    emb = z["embeddings"]
    one = {k: (z[k].dtype.kind, z[k].shape[1:]) for k in z.files}
    assert sorted(z.files) == ["class_names", "dataset", "embeddings", "ids", "label_names",
                               "labels", "metric", "splits", "step"]
    assert list(z["class_names"]) == [str(i) for i in range(10)]  # digits' names
    assert set(z["splits"]) == {"test"} and list(z["label_names"][:3]) == [
        str(y) for y in test_split["label"][:3]]
  # Every eval split: the same keys, dtype kinds and row shapes; rows concatenated in split order.
  out_all = str(tmp_path / "emb_all.npz")
  em_all = helpers.run_launch(workdir, "--mode=embed", f"--output={out_all}")
  assert em_all.returncode == 0, helpers.describe(em_all)
  with np.load(out_all) as z:
    assert {k: (z[k].dtype.kind, z[k].shape[1:]) for k in z.files} == one
    rows = z["splits"] == "test"
    assert list(dict.fromkeys(z["splits"])) == ["train", "test"]
    np.testing.assert_allclose(z["embeddings"][rows], emb, atol=1e-6)
  # A gallery image as the query: its own embedding is the best match (cosine 1).
  query = str(tmp_path / "query.png")
  Image.fromarray(test_split["image"][7][..., 0]).save(query)
  se = helpers.run_launch(workdir, "--mode=search", f"--query={query}", "--k=3")
  assert se.returncode == 0, helpers.describe(se)
  # Independent reference: the gallery is the test split (config.eval.query_split), embedded by
  # --mode=embed above, and the query is test image 7, so NumPy ranks emb @ emb[7] (cosine, float64,
  # ties to the lower index). Printed rows: "  1. 3  similarity 1.0000  label 3  id 42" (the
  # class name first: digits' names are the digits).
  rows = [SEARCH_ROW.match(line) for line in se.stdout.splitlines()]
  rows = [r.groups() for r in rows if r]
  assert len(rows) == 3 and all(r[2] == "similarity" for r in rows), se.stdout
  ref = emb.astype(np.float64) @ emb[7].astype(np.float64)
  top = np.argsort(-ref, kind="stable")[:3]
  np.testing.assert_allclose([float(r[3]) for r in rows], ref[top], atol=2e-4)  # 4 decimals
  np.testing.assert_allclose(ref[top[0]], 1.0, atol=1e-5)  # the query's own embedding is first
  by_id = {int(i): k for k, i in enumerate(test_split["id"])}
  got = [by_id[int(r[5])] for r in rows]
  np.testing.assert_array_equal([int(r[4]) for r in rows], test_split["label"][got])
  assert [r[1] for r in rows] == [str(y) for y in test_split["label"][got]]
  gaps = -np.diff(np.sort(ref)[::-1][:4])
  if gaps.min() > 1e-4:  # no near-tie among the first four: the ranking itself is determined
    np.testing.assert_array_equal(got, top)
  else:  # near-ties may order differently: each printed match must still score its rank's score
    np.testing.assert_allclose(ref[got], ref[top], atol=2e-4)
  assert os.path.exists(os.path.join(workdir, "search_query.png"))
  del emb
  bad = str(tmp_path / "bad.png")
  with open(bad, "wb") as f:
    f.write(b"not an image")
  se_bad = helpers.run_launch(workdir, "--mode=search", f"--query={bad}")
  assert se_bad.returncode == 2 and "bad.png" in se_bad.stderr, helpers.describe(se_bad)
  _check_search_names(workdir, tmp_path, test_split)


def _check_search_names(workdir, tmp_path, digits):
  """--mode=search prints class names: a gallery of image folders named `U+2192` (displayed with
  its Unicode name) and `star` (as is); data.* may differ from the checkpoint's."""
  from PIL import Image

  root = tmp_path / "folders"
  folder_of = {}
  for c, name in enumerate(["U+2192", "star"]):
    (root / name).mkdir(parents=True)
    for j, i in enumerate(np.flatnonzero(digits["label"] == c)[:6]):
      path = root / name / f"{j}.png"
      Image.fromarray(digits["image"][i][..., 0]).save(path)
      folder_of[str(path)] = name
  query = str(root / "U+2192" / "0.png")
  se = helpers.run_launch(workdir, "--mode=search", f"--query={query}", "--k=6",
                          "--gallery_split=train", "--config.data.name=image_folder",
                          f"--config.data.path={root}", "--config.data.channels=1",
                          "--config.data.test_fraction=0.0", f"--config.data.data_dir={tmp_path}")
  assert se.returncode == 0, helpers.describe(se)
  rows = [SEARCH_ROW.match(line) for line in se.stdout.splitlines()]
  rows = [r.groups() for r in rows if r]
  assert len(rows) == 6, se.stdout
  # The query is in the gallery: it is first, as the class of its folder.
  assert rows[0][1] == "U+2192 RIGHTWARDS ARROW" and float(rows[0][3]) > 0.9999, se.stdout
  assert {r[1] for r in rows} <= {"U+2192 RIGHTWARDS ARROW", "star"}


def _check_init_from(workdir, tmp_path):
  """A new run initialises its encoder from the checkpoint and reports what was loaded."""
  new = str(tmp_path / "finetune")
  proc = helpers.run_launch(new, f"--config.model.init_from={workdir}",
                            "--config.model.projection_depth=1", "--config.train.steps=1",
                            "--config.train.eval_every=0")
  assert proc.returncode == 0, helpers.describe(proc)
  assert "init_from" in proc.stderr and "loaded" in proc.stderr
  missing = helpers.run_launch(str(tmp_path / "x"), "--config.model.init_from=/no/such/run")
  assert missing.returncode == 2 and "/no/such/run" in missing.stderr, helpers.describe(missing)


@pytest.mark.parametrize("override, needle", [
    ("--config.train.stepz=3", "stepz"),
    ("--config.train.steps=three", "steps"),
    ("--config.model.nam=resnet18", "nam"),
])
def test_bad_override_fails_before_compiling(tmp_path, override, needle):
  workdir = str(tmp_path / "run")
  proc = helpers.run_launch(workdir, override)
  assert proc.returncode != 0
  assert needle in proc.stderr, helpers.describe(proc)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_bad_value_is_refused_with_its_key(tmp_path):
  workdir = str(tmp_path / "run")
  proc = helpers.run_launch(workdir, "--config.loss.name=contrastive")
  assert proc.returncode == 2, helpers.describe(proc)
  assert "config.loss.name='contrastive'" in proc.stderr
  assert "sampler" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_data_that_cannot_be_prepared_is_named_before_anything_is_built(tmp_path):
  workdir = str(tmp_path / "run")
  proc = helpers.run_launch(workdir, "--config.data.name=image_folder",
                            "--config.data.path=/no/such/images")
  assert proc.returncode == 2, helpers.describe(proc)
  assert "data 'image_folder' cannot be prepared on this machine" in proc.stderr
  assert "/no/such/images" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


MULTI_DEVICE = """
import jax, numpy as np
from configs import test as test_config
from sim_jax import data, sharding, train

cfg = test_config.get_config()
cfg.unlock()
cfg.model.name = "resnet_tiny"  # has batch norm: its statistics must span the global batch
cfg.model.width = 4
cfg.train.batch_size = 16
cfg.lock()
out = {}
for n in (1, 4):
  tr = train.make_setup(cfg, devices=jax.devices()[:n])
  state = train.init_state(tr)
  it = data.create_train_iterator(cfg.data, global_batch_size=16, seed=0, process_index=0,
                                  process_count=1)
  step = train.jit_train_step(tr)
  losses = []
  for _ in range(3):
    batch = sharding.host_to_global(next(it), tr.mesh)
    assert len(batch["image"].sharding.device_set) == n
    state, m = step(state, batch)
    losses.append(float(m.compute()["loss"]))
  out[n] = (np.array(losses), jax.tree.map(np.asarray, (state.params, state.batch_stats)))
np.testing.assert_allclose(out[1][0], out[4][0], rtol=2e-5, atol=2e-6)
flat1, flat4 = jax.tree.leaves(out[1][1]), jax.tree.leaves(out[4][1])
assert len(flat1) == len(flat4) > 0
for a, b in zip(flat1, flat4):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print("OK", out[1][0])
"""


def test_four_devices_match_one_device():
  proc = helpers.run_python(MULTI_DEVICE, num_devices=4, timeout=300)
  assert "OK" in proc.stdout


def test_config_diff_names_immutable_fields_only():
  from configs import test as test_config
  from sim_jax import checkpointing

  a = checkpointing.config_to_dict(test_config.get_config())
  b = test_config.get_config()
  b.train.steps = 100  # may change
  b.train.log_every = 7  # may change
  assert checkpointing.config_diff(a, checkpointing.config_to_dict(b)) == []
  b.seed = 3
  b.model.embedding_dim = 8
  diff = checkpointing.config_diff(a, checkpointing.config_to_dict(b))
  assert len(diff) == 2
  assert any("seed" in line and "0" in line and "3" in line for line in diff)
  assert any("model.embedding_dim" in line for line in diff)
  # A checkpoint from before a field existed: unset (None) now means the same; set does not.
  del a["loss"]["num_classes"]
  c = test_config.get_config()
  assert checkpointing.config_diff(a, checkpointing.config_to_dict(c)) == []
  c.loss.num_classes = 10
  assert checkpointing.config_diff(a, checkpointing.config_to_dict(c)) == [
      "  loss.num_classes: checkpoint '<absent>' != now 10"]
  # A field added later with a non-None package default (the miner section, written out by
  # hand here): at that default it means the same; set to anything else it does not.
  del a["loss"]["miner"]
  d = test_config.get_config()
  assert d.loss.miner.name == "none" and d.loss.miner.margin == 0.2
  assert checkpointing.config_diff(a, checkpointing.config_to_dict(d)) == []
  d.loss.miner.margin = 0.3
  assert checkpointing.config_diff(a, checkpointing.config_to_dict(d)) == [
      "  loss.miner.margin: checkpoint '<absent>' != now 0.3"]


def test_checkpoint_record_holds_the_config_and_refuses_what_changes_its_meaning():
  """One record per checkpoint (config + process count), read back as JSON as Orbax stores it."""
  from configs import test as test_config
  from sim_jax import checkpointing

  cfg = test_config.get_config()
  record = json.loads(json.dumps(checkpointing.written_with(cfg)))
  assert record["config"]["model"]["name"] == "lenet5" and record["process_count"] == 1
  checkpointing.check_resume(record, cfg, "/w")
  longer = test_config.get_config()
  longer.train.steps = 99  # run length may change on resume
  checkpointing.check_resume(record, longer, "/w")
  other_data = test_config.get_config()
  other_data.data.sampler = "random"
  with pytest.raises(checkpointing.ConfigMismatchError,
                     match="data.sampler: checkpoint 'pk' != now 'random'"):
    checkpointing.check_resume(record, other_data, "/w")
  with pytest.raises(checkpointing.ConfigMismatchError, match="written by 2 process"):
    checkpointing.check_resume(dict(record, process_count=2), cfg, "/w")
  checkpointing.check_inference(record, other_data, "/w")  # evaluate on other data: fine
  other_model = test_config.get_config()
  other_model.model.embedding_dim = 8
  with pytest.raises(checkpointing.ConfigMismatchError,
                     match="model.embedding_dim: checkpoint 16 != now 8"):
    checkpointing.check_inference(record, other_model, "/w")


def test_schedule_warmup_then_cosine():
  import ml_collections

  from sim_jax import optim
  opt = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule="cosine",
                                       end_lr_fraction=0.0))
  sched = optim.make_schedule(opt, 110)
  # Closed form: linear warmup 0 -> 1 over 10 steps, then 0.5 * (1 + cos(pi * t / 100)).
  for t in (0, 5, 10, 35, 60, 110):
    want = t / 10 if t < 10 else 0.5 * (1 + np.cos(np.pi * (t - 10) / 100))
    assert abs(float(sched(t)) - want) < 1e-6, (t, float(sched(t)), want)


def test_gradcache_step_equals_plain_step():
  """GradCache (encoder in 4 chunks) gives the full-batch loss and gradient of a plain step."""
  import jax

  from configs import test as test_config
  from sim_jax import data, sharding, train

  results = []
  for chunks in (1, 4):
    cfg = test_config.get_config()
    cfg.train.grad_accum_chunks = chunks
    cfg.train.log_diagnostics = False
    tr = train.make_setup(cfg)
    state = train.init_state(tr)
    it = data.create_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size, seed=0,
                                    process_index=0, process_count=1)
    step = train.jit_train_step(tr)
    losses = []
    for _ in range(2):
      state, m = step(state, sharding.host_to_global(next(it), tr.mesh))
      losses.append(float(m.compute()["loss"]))
    results.append((losses, jax.tree.map(np.asarray, state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradcache_refuses_learnable_loss_parameters():
  from configs import test as test_config
  from sim_jax import train
  cfg = test_config.get_config()
  cfg.train.grad_accum_chunks = 2
  cfg.loss.learnable_temperature = True
  with pytest.raises(ValueError, match="grad_accum_chunks=2"):
    train.validate_config(cfg)


def test_nonfinite_steps_are_skipped_counted_and_then_frozen():
  """Item 13: a NaN batch leaves params unchanged and is counted; past the allowance the state
  freezes (the host then halts the run: see reliability_test)."""
  import jax

  from configs import test as test_config
  from sim_jax import data, sharding, train

  cfg = test_config.get_config()
  cfg.train.max_nonfinite_skips = 1
  cfg.train.log_diagnostics = False
  cfg.optimizer.warmup_steps = 0  # The first applied update must have a non-zero step size.
  tr = train.make_setup(cfg)
  state = train.init_state(tr)
  it = data.create_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size, seed=0,
                                  process_index=0, process_count=1)
  step = train.jit_train_step(tr)
  good = next(it)
  bad = dict(good, image=np.full(good["image"].shape, np.nan, np.float32))
  params = lambda s: [np.asarray(x).copy() for x in jax.tree.leaves(s.params)]

  def run(batch, st):
    batch = sharding.host_to_global(batch, tr.mesh)
    st, m = step(st, batch)
    return st, {k: float(v) for k, v in m.compute().items()}

  before = params(state)
  state, m = run(bad, state)  # step 1: skipped, counted
  assert m["nonfinite_skips"] == 1 and m["first_nonfinite_step"] == 0
  assert all(np.array_equal(a, b) for a, b in zip(before, params(state)))
  state, m = run(good, state)  # step 2: finite, applied
  after_good = params(state)
  assert not all(np.array_equal(a, b) for a, b in zip(before, after_good))
  state, m = run(bad, state)  # step 3: second non-finite, over the allowance of 1
  state, m = run(good, state)  # step 4: finite, but the run is frozen now
  assert m["nonfinite_skips"] == 2 and m["first_nonfinite_step"] == 0
  assert all(np.array_equal(a, b) for a, b in zip(after_good, params(state)))
  assert int(state.step) == 4


def test_evaluate_with_another_model_config_is_refused_and_keeps_the_checkpoint(tmp_path):
  """--mode=evaluate with a model the checkpoint was not written with: exit 2, the field named,
  and the healthy checkpoint left where it is (it used to be moved to checkpoints.corrupt)."""
  workdir = str(tmp_path / "run")
  assert helpers.run_launch(workdir).returncode == 0
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  proc = helpers.run_launch(workdir, "--mode=evaluate", "--config.model.embedding_dim=8")
  assert proc.returncode == 2, helpers.describe(proc)
  assert "model.embedding_dim: checkpoint 16 != now 8" in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "checkpoints.corrupt"))
  ok = helpers.run_launch(workdir, "--mode=evaluate", "--config.eval.metric=euclidean")
  assert ok.returncode == 0, helpers.describe(ok)
