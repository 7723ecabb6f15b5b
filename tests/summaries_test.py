"""TensorBoard beyond scalars: images, config text, projector files, hparams, metric names.

The event file is read back with TensorBoard's own EventAccumulator; the projector config with
its protobuf parser; the TSVs with NumPy."""

import io
import os

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.projector import projector_config_pb2
from tensorboard.util import tensor_util

from configs import test as test_config
from sim_jax import summaries
from sim_jax.eval import plots
from sim_jax.models import config as model_config


def _accumulator(workdir):
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0, "images": 0})
  acc.Reload()
  return acc


def _clustered(n_classes=4, per_class=9, dim=6, size=8, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(n_classes), per_class).astype(np.int32)
  emb = rng.standard_normal((y.size, dim)) * 0.3 + 3 * np.eye(dim)[y]
  images = rng.integers(0, 255, (y.size, size, size, 1)).astype(np.uint8)
  return {"image": images, "label": y, "id": np.arange(100, 100 + y.size)}, emb.astype(np.float32)


def test_run_end_writes_images_texts_and_projector(tmp_path, monkeypatch):
  monkeypatch.setattr(plots, "umap", None)  # the optional extra, absent: skipped cleanly
  workdir = str(tmp_path)
  config = test_config.get_config()
  d, emb = _clustered()
  writer, media = summaries.create_writers(workdir, just_logging=False)
  summaries.write_run_start(writer, media, config, 0)
  names = ("U+2190", "U+2191", "U+2192", "U+2193")
  written = summaries.write_run_end(media, workdir, config, 7, names, {"test": d}, {"test": emb})
  writer.close()
  assert "umap_test.png" not in written
  assert {"tsne_test.png", "retrieval_test.png", "distances.png", "roc.png",
          "per_class.png", "tables.md"} <= set(written)
  acc = _accumulator(workdir)
  # TF2 summaries are tensors; an image's is [width, height, PNG bytes] under plugin "images".
  images = {t for t in acc.Tags()["tensors"]
            if acc.SummaryMetadata(t).plugin_data.plugin_name == "images"}
  assert {"plots/tsne_test", "plots/retrieval_test", "plots/roc", "plots/per_class",
          "plots/distances"} <= images
  (event,) = acc.Tensors("plots/roc")
  assert event.step == 7
  width, height, data = tensor_util.make_ndarray(event.tensor_proto)
  on_disk = Image.open(os.path.join(workdir, "plots", "roc.png"))
  assert (int(width), int(height)) == on_disk.size
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
                                np.asarray(on_disk.convert("RGB")))
  texts = {t: tensor_util.make_ndarray(acc.Tensors(t)[0].tensor_proto).item().decode()
           for t in acc.Tags()["tensors"] if t in ("config", "tables")}
  assert '"name": "digits"' in texts["config"] and '"steps": 6' in texts["config"]
  assert "U+2192 RIGHTWARDS ARROW" in texts["tables"] and "| FAR | TAR |" in texts["tables"]
  # Projector: the config parses, its paths resolve under the workdir, files hold the split.
  cfg = text_format.Parse(open(os.path.join(workdir, "projector_config.pbtxt")).read(),
                          projector_config_pb2.ProjectorConfig())
  (e,) = cfg.embeddings
  tensors = np.loadtxt(os.path.join(workdir, e.tensor_path), delimiter="\t")
  np.testing.assert_allclose(tensors, emb, rtol=1e-5, atol=1e-6)
  rows = open(os.path.join(workdir, e.metadata_path)).read().splitlines()
  assert rows[0] == "label\tclass\tid" and len(rows) == 1 + len(emb)
  assert rows[1 + 9 * 2] == "2\tU+2192 RIGHTWARDS ARROW\t118"
  sprite = np.asarray(Image.open(os.path.join(workdir, e.sprite.image_path)))
  side = int(np.ceil(np.sqrt(len(emb))))  # 36 points: a 6 x 6 grid of 8 x 8 thumbnails
  assert sprite.shape == (side * 8, side * 8, 3) and list(e.sprite.single_image_dim) == [8, 8]
  r, c = divmod(13, side)
  np.testing.assert_array_equal(sprite[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8, 0],
                                d["image"][13, ..., 0])


def test_umap_plot_is_used_when_installed(tmp_path, monkeypatch):
  class FakeUMAP:  # stands in for umap.UMAP: the first two coordinates
    def __init__(self, n_components, n_neighbors, random_state):
      assert n_components == 2 and n_neighbors >= 2
    def fit_transform(self, x):
      return x[:, :2]
  monkeypatch.setattr(plots, "umap", type("umap", (), {"UMAP": FakeUMAP}))
  d, emb = _clustered()
  xy = plots.umap_plot(emb, d["label"], str(tmp_path / "u.png"), class_names=("a", "b"))
  np.testing.assert_array_equal(xy, emb[:, :2])
  assert os.path.getsize(tmp_path / "u.png") > 0
  monkeypatch.setattr(plots, "umap", None)
  with pytest.raises(ImportError, match=r"sim_jax\[umap\]"):
    plots.umap_plot(emb, d["label"], str(tmp_path / "u.png"))


def test_hparams_are_the_fields_that_matter_or_differ():
  config = test_config.get_config()
  hp = summaries.hparams(config)
  assert set(summaries.KEY_HPARAMS) <= set(hp)
  assert hp["loss.temperature"] == 0.1  # nt_xent reads it (its package default, reported anyway)
  # configs/default.py + test.py change these from the package defaults of their sections...
  assert model_config.default_config().input_norm != "none"
  assert hp["data.eval_splits"] == '["train", "test"]' and hp["model.input_norm"] == "none"
  # ... and leave these at them (test.py sets protocols to the package default).
  assert "eval.protocols" not in hp and "eval.knn_k" not in hp and "loss.margin" not in hp
  assert len(hp) < 40
  assert all(isinstance(v, (int, float, str, bool)) for v in hp.values())


def test_metric_scalars_drop_aliases_and_repeat_counters():
  values = {"retrieval/precision@1": 0.5, "retrieval/recall@1": 0.5, "retrieval/mrr@1": 0.5,
            "retrieval/mrr@5": 0.7, "retrieval/num_queries": 30.0, "knn/accuracy": 0.6}
  first = summaries.metric_scalars("eval", values, first=True)
  assert sorted(first) == ["eval/knn/accuracy", "eval/retrieval/mrr@5",
                           "eval/retrieval/num_queries", "eval/retrieval/precision@1"]
  later = summaries.metric_scalars("eval", values, first=False)
  assert "eval/retrieval/num_queries" not in later and len(later) == 3
  # recall@1 without its precision@1 is not an alias of anything written: kept.
  assert summaries.metric_scalars("x", {"r/recall@1": 1.0}, first=False) == {"x/r/recall@1": 1.0}


def test_sprite_refuses_what_the_projector_cannot_show():
  with pytest.raises(ValueError, match="8192"):
    summaries.sprite(np.broadcast_to(np.zeros((), np.uint8), (10000, 128, 128, 1)))
