"""What the trainer writes to TensorBoard besides the train / eval curves.

  create_writers(workdir, just_logging)   (scalar writer: TensorBoard + the log, media writer:
                                          TensorBoard only, so images and long texts stay out of
                                          the log)
  write_run_start(writer, media, config, step)   hparams (the fields that matter or differ from the
                                          package defaults, not all of them) and the resolved
                                          config as text
  metric_scalars(prefix, values, first)   eval metrics as TensorBoard scalars: identical aliases
                                          once, counters (num_queries, ...) at the first eval only
  write_run_end(media, workdir, ...)       the end-of-run PNGs and retrieval grid as images, the
                                          tables as text, the embedding projector of the query split
  write_projector(workdir, split, ...)    projector files: tensors.tsv, metadata.tsv (label, class
                                          name, id), sprite.png, projector_config.pbtxt

The projector files sit in the workdir, TensorBoard's run directory:
  <workdir>/projector_config.pbtxt
  <workdir>/projector/<split>/{tensors.tsv, metadata.tsv, sprite.png}
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector import projector_config_pb2

from sim_jax import checkpointing
from sim_jax.data import config as data_config_lib
from sim_jax.data import names as names_lib
from sim_jax.eval import config as eval_config_lib
from sim_jax.eval import plots
from sim_jax.losses import config as loss_config_lib
from sim_jax.losses import objective
from sim_jax.models import config as model_config_lib

# The hparams every run reports, whatever their value: what a sweep usually varies.
KEY_HPARAMS = (
    "seed", "data.name", "data.sampler", "data.image_size", "data.examples_per_class",
    "data.augment.name", "model.name", "model.embedding_dim", "loss.name", "optimizer.name",
    "optimizer.learning_rate", "optimizer.schedule", "optimizer.weight_decay", "train.steps",
    "train.batch_size", "eval.metric")
# Sections whose package defaults are known: their fields are reported when they differ.
_SECTION_DEFAULTS = {"data": data_config_lib.default_config, "eval": eval_config_lib.default_config,
                     "loss": loss_config_lib.default_config,
                     "model": model_config_lib.default_config}
# Metric names equal by definition for a single relevant item (retrieval.py's formulas):
# recall@1 = mrr@1 = precision@1. Only precision@1 is written.
ALIASES = {"recall@1": "precision@1", "mrr@1": "precision@1"}
PROJECTOR_MAX_POINTS = 2000  # sprite side <= 45 thumbnails: a few MB of TSV, fast in a browser
SPRITE_MAX_SIDE = 8192  # the projector's limit on the sprite image's side (pixels)


def create_writers(workdir: str, *, just_logging: bool):
  """`(writer, media)`: `writer` is CLU's default (an asynchronous TensorBoard + logging writer,
  logging only when `just_logging`); `media` is its TensorBoard writer alone (None when
  `just_logging`). Write to `media` after `writer.flush()`; closing `writer` closes both."""
  if just_logging:
    return metric_writers.create_default_writer(workdir, just_logging=True), None
  media = metric_writers.SummaryWriter(workdir)
  return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(), media]), media


def _hparam_value(v):
  return v if isinstance(v, (int, float, str, bool)) else json.dumps(v)


def hparams(config: ml_collections.ConfigDict) -> dict:
  """{"section.field": value}: KEY_HPARAMS, the `config.loss` fields the chosen loss reads
  (`objective.spec(name).fields`), plus every field of the data / eval / loss / model sections
  that differs from its package default (lists as JSON text)."""
  flat = checkpointing.flatten_config(config)
  loss_fields = tuple(f"loss.{f}" for f in objective.spec(config.loss.name).fields)
  out = {k: flat[k] for k in KEY_HPARAMS + loss_fields if k in flat}
  for section, default in _SECTION_DEFAULTS.items():
    defaults = checkpointing.flatten_config(ml_collections.ConfigDict({section: default()}))
    out.update({k: flat[k] for k, v in defaults.items() if k in flat and flat[k] != v})
  return {k: _hparam_value(v) for k, v in sorted(out.items())}


def config_text(config: ml_collections.ConfigDict) -> str:
  """The resolved config as a markdown code block (TensorBoard's Text tab renders markdown)."""
  return "```\n" + json.dumps(checkpointing.config_to_dict(config), indent=2, sort_keys=True,
                              default=list) + "\n```"


def write_run_start(writer, media, config: ml_collections.ConfigDict, step: int) -> None:
  """hparams (a new run only: TensorBoard keeps one set per run) and the config as text (every
  start: a resumed run may change fields such as train.steps)."""
  if step == 0:
    writer.write_hparams(hparams(config))
  if media is not None:
    media.write_texts(step, {"config": config_text(config)})


def metric_scalars(prefix: str, values: dict[str, float], *, first: bool) -> dict[str, float]:
  """`{prefix/name: value}` without the ALIASES; counters (`num_*`: they do not change during
  training) only when `first`."""
  out = {}
  for name, v in values.items():
    protocol, _, metric = name.rpartition("/")
    if metric in ALIASES and f"{protocol}/{ALIASES[metric]}".lstrip("/") in values:
      continue
    if metric.startswith("num_") and not first:
      continue
    out[f"{prefix}/{name}"] = v
  return out


def sprite(images, max_side: int = SPRITE_MAX_SIDE) -> np.ndarray:
  """uint8 [S*h, S*w, 3] with S = ceil(sqrt(N)): image i at row i // S, column i % S (the
  projector's layout), white where the grid is empty."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.dtype != np.uint8:
    raise ValueError(f"sprite needs uint8 images [N, H, W, C], got {x.dtype} {x.shape}.")
  n, h, w, _ = x.shape
  side = math.ceil(math.sqrt(n))
  if side * max(h, w) > max_side:
    raise ValueError(f"{n} thumbnails of {h}x{w} make a sprite side of {side * max(h, w)} > "
                     f"{max_side} pixels; use fewer points.")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  out = np.full((side * h, side * w, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, side)
    out[r * h:(r + 1) * h, c * w:(c + 1) * w] = x[i]
  return out


def write_projector(workdir: str, split: str, embeddings, labels, ids, images,
                    class_names=(), *, max_points: int = PROJECTOR_MAX_POINTS,
                    seed: int = 0) -> list[str]:
  """Writes the projector files of one split (a seeded subset of `max_points` rows, in split
  order) and `<workdir>/projector_config.pbtxt`; returns the paths written."""
  emb = np.asarray(embeddings, np.float32)
  n = emb.shape[0]
  keep = np.arange(n) if n <= max_points else np.sort(
      np.random.default_rng(seed).choice(n, max_points, replace=False))
  emb, labels = emb[keep], np.asarray(labels)[keep]
  ids, images = np.asarray(ids)[keep], np.asarray(images)[keep]
  rel = os.path.join("projector", split)
  out_dir = os.path.join(workdir, rel)
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, k) for k in ("tensors.tsv", "metadata.tsv", "sprite.png")}
  np.savetxt(paths["tensors.tsv"], emb, delimiter="\t", fmt="%.6g")
  names = names_lib.label_names(labels, class_names)
  with open(paths["metadata.tsv"], "w") as f:  # a header row: several columns
    f.write("label\tclass\tid\n")
    for y, name, i in zip(labels, names, ids):
      f.write(f"{int(y)}\t{name.replace(chr(9), ' ')}\t{int(i)}\n")
  Image.fromarray(sprite(images)).save(paths["sprite.png"])
  config = projector_config_pb2.ProjectorConfig()
  e = config.embeddings.add()
  e.tensor_name = split
  e.tensor_path = os.path.join(rel, "tensors.tsv")
  e.metadata_path = os.path.join(rel, "metadata.tsv")
  e.sprite.image_path = os.path.join(rel, "sprite.png")
  e.sprite.single_image_dim.extend([int(images.shape[2]), int(images.shape[1])])  # width, height
  config_path = os.path.join(workdir, "projector_config.pbtxt")
  with open(config_path, "w") as f:
    f.write(text_format.MessageToString(config))
  return [*paths.values(), config_path]


def _read_png(path: str) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"), np.uint8)


def write_run_end(media, workdir: str, config: ml_collections.ConfigDict, step: int,
                  class_names, eval_data: dict, embeddings: dict) -> list[str]:
  """The end-of-run plots (`plots.write_run_plots`) as PNGs and as TensorBoard images
  (`plots/<name>`), their tables as text, and the projector of the query split."""
  display = names_lib.display_names(class_names)
  written = plots.write_run_plots(workdir, config, eval_data, embeddings, class_names=display)
  out_dir = os.path.join(workdir, "plots")
  images = {f"plots/{os.path.splitext(f)[0]}": _read_png(os.path.join(out_dir, f))[None]
            for f in written if f.endswith(".png")}
  media.write_images(step, images)
  with open(os.path.join(out_dir, "tables.md")) as f:
    media.write_texts(step, {"tables": f.read()})
  split = config.eval.query_split if config.eval.query_split in embeddings else \
      next(iter(embeddings))
  d = eval_data[split]
  write_projector(workdir, split, embeddings[split], d["label"], d["id"], d["image"], display)
  media.flush()
  logging.info("TensorBoard: %d images, the tables and the %s projector written.", len(images),
               split)
  return written
