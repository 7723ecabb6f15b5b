"""What a trained workdir is used for: `--mode` evaluate / embed / search, and the floors of a
config without training (`--mode=floors`).

  evaluate_checkpoint(config, workdir) -> report      every protocol on the latest checkpoint,
                                                      with chance levels and floors
  export_embeddings(config, workdir, output, split)   the EMBED_SCHEMA table to .npz
  search_gallery(config, workdir, query, k, split)    top-k gallery matches of one image, by name
  config_floors(config, workdir) -> report            chance and floors only (nothing trained)
  restore_for_inference(setup, workdir) -> (step, state)

`config.eval.batch_norm_recalibration_batches` > 0: evaluate re-estimates batch norm's running
statistics on that many training batches first (`recalibrate_batch_norm`, "precise BN").

A checkpoint is only loaded with the model / loss config it was written with
(`checkpointing.check_inference`); data.* and eval.* may differ.

Ensembles (`config.eval.ensemble`, or `--ensemble=runs/a,runs/b,runs/c`): evaluate and embed use
the latest checkpoint of every listed workdir instead of `--workdir`'s (which only receives the
output) and compare `models.ensemble.combine(member embeddings, config.eval.ensemble_mode)`:
"concat" (each member's L2-normalised embedding, concatenated, / sqrt(M); cosine = the mean of
the members' cosines) or "mean" (the mean of the normalised embeddings, renormalised). Every
member must have the config's model / loss (typically runs of one config with other seeds).
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import jax
import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from sim_jax import checkpointing, data, train
from sim_jax.data import names as data_names
from sim_jax.eval import evaluators as evaluators_lib
from sim_jax.eval import floors as floors_lib
from sim_jax.eval import plots, search
from sim_jax.graph import evaluate as graph_eval
from sim_jax.models import ensemble


def restore_for_inference(setup: train.TrainSetup, workdir: str) -> tuple[int, train.TrainState]:
  """The latest restorable checkpoint of `workdir` (weights only, no data iterator)."""
  manager = checkpointing.create_manager(workdir, keep=10**6)
  check = functools.partial(checkpointing.check_inference, config=setup.config, workdir=workdir)
  try:
    found = checkpointing.restore_latest(manager, workdir, train.abstract_save_target(setup),
                                         data_iter=None, check_meta=check)
  finally:
    manager.close()
  if found is None:
    raise FileNotFoundError(f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}: "
                            f"train first with --mode=train and the same --workdir.")
  step, restored, _ = found
  return step, train.state_from_restored(setup, restored)


def _batch_norm_stats_step(params, batch_stats, batch, rng, *, config, model, augment_fn):
  x, _ = train.prepare_inputs(batch, rng, config=config, augment_fn=augment_fn, train=True)
  return train.forward(model, params, batch_stats, x, train=True, rng=rng)[2]


def recalibrate_batch_norm(setup: train.TrainSetup, state: train.TrainState,
                           num_batches: int) -> train.TrainState:
  """`state` with batch norm's running statistics re-estimated on `num_batches` training batches.

  "Precise BN" (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): train-mode forward passes
  with the weights fixed, as the training loop draws them (`data.create_train_iterator`, the
  config's seed and augmentation), each updating the running averages the way a training step
  does: r <- momentum r + (1 - momentum) batch_stat. After K batches the checkpoint's own
  statistics weigh momentum^K (0.9^100 = 3e-5 for `encoder.batch_norm`). It tells whether an
  evaluation is hurt by stale running statistics or by the weights themselves. A model without
  batch norm, or K = 0, returns `state` unchanged.
  """
  if num_batches <= 0 or not jax.tree.leaves(state.batch_stats):
    return state
  config = setup.config
  step = jax.jit(functools.partial(_batch_norm_stats_step, config=config, model=setup.model,
                                   augment_fn=train.make_augment_fn(config.data.augment)))
  batches = data.create_train_iterator(config.data, global_batch_size=config.train.batch_size,
                                       seed=config.seed)
  stats, rng = state.batch_stats, jax.random.PRNGKey(config.seed)
  for _ in range(num_batches):
    batch = next(batches)
    rng, key = jax.random.split(rng)
    stats = step(state.params, stats, {"image": batch["image"], "label": batch["label"]}, key)
  return state.replace(batch_stats=stats)


def ensemble_members(config: ml_collections.ConfigDict) -> list[str]:
  """The workdirs of `config.eval.ensemble` ("a,b,c"), [] when it is empty."""
  members = [p.strip() for p in str(config.eval.ensemble).split(",") if p.strip()]
  if members:
    ensemble.check_mode(config.eval.ensemble_mode)
    if len(set(members)) != len(members):
      raise ValueError(f"config.eval.ensemble={config.eval.ensemble!r} lists a workdir twice")
  return members


def restore_states(setup: train.TrainSetup, workdir: str
                   ) -> tuple[int, list[train.TrainState], list[str]]:
  """`(step, states, sources)`: the latest checkpoint of `workdir`, or of every ensemble member
  (`step` = the first member's)."""
  sources = ensemble_members(setup.config) or [workdir]
  restored = [restore_for_inference(setup, w) for w in sources]
  return restored[0][0], [state for _, state in restored], sources


def embed_with(setup: train.TrainSetup, states: list[train.TrainState],
               images: np.ndarray) -> np.ndarray:
  """`train.embed_images` of one state, or the ensemble's combination of several."""
  if len(states) == 1 and not ensemble_members(setup.config):
    return train.embed_images(setup, states[0], images)
  return np.asarray(ensemble.combine([train.embed_images(setup, s, images) for s in states],
                                     setup.config.eval.ensemble_mode))


def _evaluate_ensemble(setup, states, eval_data, evaluators):
  # The embeddings' protocols only: a pair head or classifier belongs to one member, and the
  # robust attacks differentiate one encoder.
  embeddings = {s: embed_with(setup, states, d["image"]) for s, d in eval_data.items()}
  labels = {s: d["label"] for s, d in eval_data.items()}
  return evaluators_lib.run_evaluators(evaluators, embeddings, labels), embeddings


def report(setup: train.TrainSetup, eval_data, evaluators, embeddings, results) -> dict:
  """{"metrics", "chance", "floors"} of an evaluation (the final_metrics.json layout)."""
  labels = {s: d["label"] for s, d in eval_data.items()}
  return {"metrics": results,
          "chance": floors_lib.cached_floors(
              floors_lib.floors_key(setup.config, "chance"),
              lambda: floors_lib.chance_levels(evaluators, embeddings, labels)),
          "floors": train.compute_floors(setup, eval_data, evaluators)}


def _print_report(prefix: str, rep: dict) -> None:
  for line in floors_lib.report_lines(rep):
    print(f"{prefix}{line}")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=evaluate`: every configured protocol on the workdir's latest checkpoint (or the
  ensemble's, `config.eval.ensemble`), next to chance and the two floors (of one encoder);
  written to `<workdir>/eval_step<N>.json`."""
  setup = train.make_setup(config)
  step, states, sources = restore_states(setup, workdir)
  eval_data = train.load_eval_data(config)
  evaluators = evaluators_lib.get_evaluators(config.eval)
  # eval.graph: a GNN refines the embeddings first; chance and floors stay the plain protocol's.
  scored = graph_eval.maybe_refine(evaluators, config.eval.graph,
                                   data.get_info(config.data).class_names)
  if ensemble_members(config):
    results, embeddings = _evaluate_ensemble(setup, states, eval_data, scored)
  else:
    state = recalibrate_batch_norm(setup, states[0], config.eval.batch_norm_recalibration_batches)
    results, embeddings = train.evaluate(setup, state, eval_data, scored)
  rep = report(setup, eval_data, evaluators, embeddings, results)
  if ensemble_members(config):
    rep["ensemble"] = {"members": sources, "mode": str(config.eval.ensemble_mode)}
  if jax.process_index() == 0:
    _print_report(f"step {step}  ", rep)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
      json.dump({"step": step, **rep}, f, indent=2, sort_keys=True)
  return rep


def config_floors(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=floors`: chance levels and the raw-pixel / random-init floors of a config's
  evaluation, without training; printed as a table and written to `<workdir>/floors.json`."""
  setup = train.make_setup(config)
  eval_data = train.load_eval_data(config)
  evaluators = evaluators_lib.get_evaluators(config.eval)
  untrained = train.init_state(setup, pretrained=False)
  random_init = {s: train.embed_images(setup, untrained, d["image"]) for s, d in eval_data.items()}
  floor_values = floors_lib.floors(evaluators, eval_data, random_init)
  # Chance draws Gaussian vectors of the shapes a trained encoder would give: the untrained one's.
  chance = floors_lib.chance_levels(evaluators, random_init,
                                    {s: d["label"] for s, d in eval_data.items()})
  rep = {"chance": chance, "floors": floor_values}
  if jax.process_index() == 0:
    print(f"{'metric':<32s} {'chance':>8s} {'raw pixels':>11s} {'random init':>12s}")
    for k in sorted(chance):
      print(f"{k:<32s} {chance[k]:8.4f} {floor_values['raw_pixels'][k]:11.4f} "
            f"{floor_values['random_init'][k]:12.4f}")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "floors.json")
    with open(path, "w") as f:
      json.dump({"data": config.data.name, "model": config.model.name, **rep}, f, indent=2,
                sort_keys=True)
    print(f"Wrote {path}")
  return rep


# The `--mode=embed` file: one row per example, the same keys whatever `--split` is.
EMBED_SCHEMA = {
    "embeddings": "float32 [N, D]: the vectors evaluation compares (train.embed_images)",
    "labels": "int32 [N]: class ids",
    "ids": "int64 [N]: the dataset's example ids (stable across runs)",
    "splits": "str [N]: the split of each row",
    "label_names": "str [N]: class_names[labels], or the label as text when unnamed",
    "class_names": "str [C]: the display name of class c (label c); empty when unnamed",
    "step": "int64 []: the checkpoint step",
    "dataset": "str []: config.data.name",
    "metric": "str []: config.eval.metric, the distance the embeddings are compared with",
}


def embedding_table(config: ml_collections.ConfigDict, step: int, parts) -> dict[str, np.ndarray]:
  """The `EMBED_SCHEMA` arrays from `parts` = [(split, data split dict, embeddings [n, D])]:
  the splits' rows concatenated in the order given."""
  class_names = data_names.display_names(data.get_info(config.data).class_names)
  labels = np.concatenate([np.asarray(d["label"], np.int32) for _, d, _ in parts])
  return {
      "embeddings": np.concatenate([np.asarray(e, np.float32) for _, _, e in parts]),
      "labels": labels,
      "ids": np.concatenate([np.asarray(d["id"], np.int64) for _, d, _ in parts]),
      "splits": np.concatenate([np.full(len(d["label"]), s) for s, d, _ in parts]).astype(str),
      "label_names": data_names.label_names(labels, class_names),
      "class_names": np.asarray(class_names, dtype=str),
      "step": np.asarray(step, np.int64),
      "dataset": np.asarray(str(config.data.name)),
      "metric": np.asarray(str(config.eval.metric)),
  }


def export_embeddings(config: ml_collections.ConfigDict, workdir: str, output: str,
                      split: str | None = None) -> str:
  """`--mode=embed`: a split (or every eval split, rows concatenated) to `.npz` with the keys of
  `EMBED_SCHEMA`, whatever `split` is; select a split's rows with `z["splits"] == name`. With
  `config.eval.ensemble`, the ensemble's combined embeddings."""
  setup = train.make_setup(config)
  step, states, _ = restore_states(setup, workdir)
  splits = [split] if split else list(config.data.eval_splits)
  parts = []
  for s in splits:
    d = data.load_split(config.data, s)
    parts.append((s, d, embed_with(setup, states, d["image"])))
  arrays = embedding_table(config, step, parts)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(output, **arrays)
    print(f"Wrote {arrays['embeddings'].shape[0]} embeddings of dimension "
          f"{arrays['embeddings'].shape[1]} from split(s) {', '.join(splits)} (step {step}) "
          f"with {', '.join(sorted(arrays))} to {output}")
  return output


def read_query_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """An image file -> uint8 [H, W, C] in the model's input shape, or a clear error."""
  h, w, c = image_shape
  if os.path.isdir(path):
    raise ValueError(f"Query image {path!r} is a directory; pass one image file.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Query image {path!r} does not exist.")
  try:
    with warnings.catch_warnings():
      # PIL only warns between MAX_IMAGE_PIXELS and twice that, then decodes gigabytes.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        img.load()
        img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
  except (UnidentifiedImageError, OSError, Image.DecompressionBombError,
          Image.DecompressionBombWarning) as e:
    raise ValueError(f"Query image {path!r} cannot be read as an image: {e}") from e
  arr = np.asarray(img, np.uint8)
  return arr[..., None] if c == 1 else arr


def search_gallery(config: ml_collections.ConfigDict, workdir: str, query: str, k: int = 5,
                   gallery_split: str | None = None) -> list[tuple[int, int, str, float]]:
  """`--mode=search`: the top-k gallery matches of one query image, printed and drawn.

  Returns [(id, label, class name, score)] best first; printed one per line as
  `  1. U+2192 RIGHTWARDS ARROW  similarity 0.9993  label 3  id 42`.
  """
  setup = train.make_setup(config)
  step, state = restore_for_inference(setup, workdir)
  split = gallery_split or config.eval.query_split
  gallery = data.load_split(config.data, split)
  if k > len(gallery["label"]):
    raise ValueError(f"--k={k} is larger than the gallery ({len(gallery['label'])} images in "
                     f"split {split!r}).")
  q_img = read_query_image(query, setup.image_shape)
  q_emb = train.embed_images(setup, state, q_img[None])
  g_emb = train.embed_images(setup, state, gallery["image"])
  scores, idx = search.topk(q_emb, g_emb, k, metric=config.eval.metric,
                            block_size=min(config.eval.block_size, len(g_emb)))
  class_names = data_names.display_names(setup.info.class_names)
  names = data_names.label_names(gallery["label"][idx[0]], class_names)
  results = [(int(gallery["id"][i]), int(gallery["label"][i]), str(n), float(s))
             for i, n, s in zip(idx[0], names, scores[0])]
  if jax.process_index() == 0:
    kind = "distance" if config.eval.metric == "euclidean" else "similarity"
    print(f"Top {k} matches for {query} in split {split!r} (checkpoint step {step}):")
    for rank, (ex_id, label, name, score) in enumerate(results, 1):
      print(f"  {rank}. {name}  {kind} {score:.4f}  label {label}  id {ex_id}")
    out = os.path.join(workdir, f"search_{os.path.splitext(os.path.basename(query))[0]}.png")
    plots.save_retrieval_grid(out, q_img[None], gallery["image"], idx, scores=scores,
                              gallery_labels=gallery["label"], class_names=class_names)
    print(f"Wrote {out}")
  return results
