r"""Tables and figures of docs/experiments/icons.md (seed 000 on icon_themes) from the runs.

  python docs/experiments/icons_report.py table1 runs/icons_table1/ablation.json
  python docs/experiments/icons_report.py losses runs/icons_losses/ablation.json
  python docs/experiments/icons_report.py curves docs/experiments/icons_curves.png \
      runs/icons_table1 runs/icons_losses
  python docs/experiments/icons_report.py grid docs/experiments/icons_heldout RUN_DIR
  python docs/experiments/icons_report.py neighbours RUN_DIR
  python docs/experiments/icons_report.py adversarial runs/icons_adversarial
  python docs/experiments/icons_report.py ensemble runs/icons_ensemble
  python docs/experiments/icons_report.py gnn runs/icons_gnn
  python docs/experiments/icons_report.py fewshot runs/icons_fewshot
  python docs/experiments/icons_report.py margins runs/icons_margins

table1 / losses print markdown tables (mean [min, max] over seeds) of the ablation JSON that
`ablate.py` writes; curves overlays every run's logged `train/loss` divided by its first value
(and `train/margin` of the learnt-margin runs), one colour per variant, one line per seed;
grid embeds the heldout split with a finished run (`launch.py --mode=embed`) and writes a
t-SNE of its 20 largest names and a retrieval grid (8 queries, their 6 nearest drawings; green
= same name); neighbours prints how often a heldout drawing's nearest neighbour has the same
name / the same design family, for the run and for raw pixels.

adversarial / ensemble / gnn / fewshot / margins (issue 26) print the markdown tables of one
ablation's workdir, read from its runs' final_metrics.json (so a running ablation shows the
seeds that finished): mean [min, max] over the finished seeds, next to the metric's chance
level and both floors where final_metrics.json records them. "s / step" is 1 / the median of
the run's logged `steps_per_sec` (the trainer's own timing, under whatever load the machine
had), "run s" the run's wall seconds in the workdir's ablation.json (written when the ablation
ends; "-" before).
"""

import glob
import json
import os
import subprocess
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from configs import icons  # noqa: E402
from sim_jax import data  # noqa: E402
from sim_jax.data import registry  # noqa: E402
from sim_jax.eval import plots, search  # noqa: E402
from sim_jax.experiments import variants as variants_lib  # noqa: E402

SPLITS = ("train", "validation", "heldout")


def _cell(values, digits: int = 3) -> str:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return "-"
  if v.min() == v.max():  # one seed, or a level every seed shares (chance, raw pixels)
    return f"{v[0]:.{digits}f}"
  return f"{v.mean():.{digits}f} [{v.min():.{digits}f}, {v.max():.{digits}f}]"


def _per_seed(variant: dict, metric: str) -> list:
  return [r.get("metrics", {}).get(metric) for r in variant.get("runs", [])]


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _runs(ablation_json: str) -> dict[str, list[dict]]:
  """variant label -> the final_metrics.json of each finished seed (read from the run dirs)."""
  workdir = os.path.dirname(ablation_json)
  out = {}
  for v in _load(ablation_json)["variants"]:
    label = v["label"]
    finals = sorted(glob.glob(os.path.join(workdir, label, "seed_*", "final_metrics.json")))
    out[label] = [_load(f) for f in finals]
  return out


def _metric(finals, name):
  return [f["metrics"].get(name) for f in finals]


def _floor(finals, which, name):
  return [f.get(which, {}).get(name) if which == "chance" else
          f.get("floors", {}).get(which, {}).get(name) for f in finals]


def table1(ablation_json: str) -> None:
  """Seed 000's Table 1 layout: per variant and split, the rule's accuracy / precision /
  recall, the validation-fit threshold's accuracy and the head's ROC-AUC."""
  runs = _runs(ablation_json)
  print("| variant | pairs of | seeds | accuracy (s > 0.5) | precision | recall | "
        "accuracy (threshold fit on validation) | ROC-AUC |")
  print("|---|---|---|---|---|---|---|---|")
  for label, finals in runs.items():
    if label == "simclr" or not finals:
      continue
    for split in SPLITS:
      fit = ("(fit here)" if split == "validation" else
             _cell(_metric(finals, f"verification/head_fit_accuracy_{split}")))
      print(f"| {label} | {split} | {len(finals)} | "
            f"{_cell(_metric(finals, f'verification/fixed_accuracy_{split}'))} | "
            f"{_cell(_metric(finals, f'verification/fixed_precision_{split}'))} | "
            f"{_cell(_metric(finals, f'verification/fixed_recall_{split}'))} | {fit} | "
            f"{_cell(_metric(finals, f'verification/head_roc_auc_{split}'))} |")
  embedding_table(runs)


def embedding_table(runs) -> None:
  """The one protocol every variant has: Euclidean distance of the embeddings, threshold fit on
  validation pairs, heldout pairs; with chance and both floors."""
  print("\n| variant | seeds | heldout accuracy (distance, fit on validation) | ROC-AUC | "
        "chance | raw pixels | random init |")
  print("|---|---|---|---|---|---|---|")
  for label, finals in runs.items():
    if not finals:
      continue
    name = "verification/accuracy"
    print(f"| {label} | {len(finals)} | {_cell(_metric(finals, name))} | "
          f"{_cell(_metric(finals, 'verification/roc_auc'))} | "
          f"{_cell(_floor(finals, 'chance', name))} | "
          f"{_cell(_floor(finals, 'raw_pixels', name))} | "
          f"{_cell(_floor(finals, 'random_init', name))} |")


def losses(ablation_json: str) -> None:
  runs = _runs(ablation_json)
  embedding_table(runs)
  print("\n| variant | final train/margin per seed |")
  print("|---|---|")
  workdir = os.path.dirname(ablation_json)
  for label in runs:
    margins = []
    for run in sorted(glob.glob(os.path.join(workdir, label, "seed_*"))):
      series = plots.read_scalars(run).get("train/margin", [])
      margins.append(f"{series[-1][1]:.3f}" if series else "-")
    print(f"| {label} | {', '.join(margins)} |")


def curves(out: str, workdirs) -> None:
  fig, axes = plt.subplots(1, 2 + len(workdirs) - 1, figsize=(6 * (1 + len(workdirs)), 4.5))
  axes = np.atleast_1d(axes)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, workdir in zip(axes, workdirs):
    labels = sorted(os.listdir(workdir))
    labels = [lab for lab in labels if os.path.isdir(os.path.join(workdir, lab, "seed_0"))]
    for c, label in enumerate(labels):
      for s, run in enumerate(sorted(glob.glob(os.path.join(workdir, label, "seed_*")))):
        pts = plots.read_scalars(run).get("train/loss", [])
        if pts:
          steps, values = zip(*pts)
          # Relative to the first log: the losses have different scales (BCE ~0.69, NT-Xent ~4).
          ax.plot(steps, np.asarray(values) / values[0], color=colours[c % len(colours)],
                  alpha=0.8, label=label if s == 0 else None)
    ax.set_title(f"train/loss / first logged value: {os.path.basename(workdir)}")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  ax = axes[-1]
  for workdir in workdirs:
    for run in sorted(glob.glob(os.path.join(workdir, "*learnable*", "seed_*"))):
      pts = plots.read_scalars(run).get("train/margin", [])
      if pts:
        steps, values = zip(*pts)
        ax.plot(steps, values, label=os.path.relpath(run, workdir))
  ax.set_title("train/margin (learnt, reward 0.05)")
  ax.set_xlabel("step")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  print(f"wrote {out}")


def _embed_heldout(run_dir: str, npz: str) -> np.ndarray:
  """The heldout split embedded by the run's last checkpoint (`launch.py --mode=embed`)."""
  saved = _load(os.path.join(run_dir, "config.json"))
  model = {k: saved["model"][k] for k in ("attention", "init_from")}
  subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "--mode=embed",
                  f"--config={os.path.join(REPO, 'configs', 'icons.py')}",
                  *[f"--config.model.{k}={v}" for k, v in model.items()],
                  f"--workdir={run_dir}", "--split=heldout", f"--output={npz}"], check=True)
  emb = np.load(npz)["embeddings"]
  os.remove(npz)
  return emb


def neighbours(run_dir: str) -> None:
  """Nearest heldout neighbour (Euclidean, the drawing itself excluded) of every heldout drawing:
  how often it shows the same name, and how often it comes from the same design family
  (`source` = "<family>:<file>"), for the run's embeddings and for the raw pixels."""
  config = icons.get_config()
  split = data.load_split(config.data, "heldout")
  builder = registry._builder(config.data)  # the records' `source` field names the family
  records = builder.as_data_source("heldout")
  sources = [records[i]["source"] for i in range(len(records))]
  family = np.array([(v.decode() if isinstance(v, bytes) else str(v)).split(":")[0]
                     for v in sources])
  labels = split["label"]
  raw = split["image"].reshape(len(labels), -1).astype(np.float32) / 255.0
  raw /= np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
  for name, emb in (("raw pixels", raw), (run_dir, _embed_heldout(run_dir, "/tmp/icons_nn.npz"))):
    _, idx = search.topk(emb, emb, 2, metric="euclidean")
    nn = np.where(idx[:, 0] == np.arange(len(labels)), idx[:, 1], idx[:, 0])
    print(f"{name}: 1-NN same name {np.mean(labels[nn] == labels):.3f}, "
          f"same family {np.mean(family[nn] == family):.3f} "
          f"(chance: same family {np.mean([np.mean(family == f) for f in family]):.3f})")


def grid(prefix: str, run_dir: str) -> None:
  config = icons.get_config()
  emb = _embed_heldout(run_dir, f"{prefix}_embeddings.npz")
  split = data.load_split(config.data, "heldout")
  labels, images = split["label"], split["image"]
  names = data.get_info(config.data).class_names
  classes, counts = np.unique(labels, return_counts=True)
  shown = classes[np.argsort(-counts, kind="stable")[:20]]
  keep = np.isin(labels, shown)
  plots.tsne_plot(emb[keep], labels[keep], f"{prefix}_tsne.png", max_points=1500,
                  title="t-SNE of icon_themes/heldout (20 names)", class_names=names)
  rng = np.random.default_rng(0)
  queries = rng.choice(np.flatnonzero(counts[np.searchsorted(classes, labels)] >= 4), 8,
                       replace=False)
  scores, idx = search.topk(emb[queries], emb, 7, metric="euclidean")
  keep_rows = [row != q for q, row in zip(queries, idx)]
  idx = np.stack([row[m][:6] for row, m in zip(idx, keep_rows)])
  scores = np.stack([row[m][:6] for row, m in zip(scores, keep_rows)])
  plots.save_retrieval_grid(f"{prefix}_retrieval.png", images[queries], images, idx,
                            labels[queries], labels, scores=scores, class_names=names)
  print(f"wrote {prefix}_tsne.png {prefix}_retrieval.png")


# ------------------------------------------------------------------ issue 26's five ablations


def _ablation_runs(workdir: str, name: str) -> dict[str, list[tuple[str, dict]]]:
  """label -> [(run dir, final_metrics.json)] of each finished run of ablation `name` (seeds in
  order; an unseeded variant's single run is `<workdir>/<label>`), labels in declared order."""
  declared = variants_lib.as_ablation(icons.get_ablations()[name])
  out = {}
  for v in declared.variants:
    dirs = sorted(glob.glob(os.path.join(workdir, v.label, "seed_*")),
                  key=lambda d: int(d.rsplit("_", 1)[1])) or [os.path.join(workdir, v.label)]
    out[v.label] = [(d, _load(os.path.join(d, "final_metrics.json"))) for d in dirs
                    if os.path.exists(os.path.join(d, "final_metrics.json"))]
  return out


def _finals(runs) -> list[dict]:
  return [final for _, final in runs]


def _has(finals, which, name) -> bool:
  return any(v is not None for v in _floor(finals, which, name))


def _metric_cells(finals, name, floors: bool) -> list[str]:
  """The metric's mean [min, max]; with `floors`, then its chance, raw-pixel and random-init
  values ("-" where final_metrics.json has none for this metric)."""
  cells = [_cell(_metric(finals, name))]
  if floors:
    cells += [_cell(_floor(finals, w, name)) for w in ("chance", "raw_pixels", "random_init")]
  return cells


def _metric_header(name, floors: bool) -> list[str]:
  return [f"`{name}`"] + (["chance", "raw pixels", "random init"] if floors else [])


def _step_seconds(run_dir: str) -> float | None:
  """1 / median logged steps_per_sec of a training run; None for an evaluate-only run."""
  pts = plots.read_scalars(run_dir).get("steps_per_sec", []) if os.path.isdir(run_dir) else []
  return 1.0 / float(np.median([v for _, v in pts])) if pts else None


def _run_seconds(workdir: str) -> dict[str, float]:
  """run name ("label/seed_s" or "label") -> wall seconds, from <workdir>/ablation.json."""
  path = os.path.join(workdir, "ablation.json")
  if not os.path.exists(path):
    return {}
  return {r["run"]: r["seconds"] for v in _load(path)["variants"] for r in v["runs"]
          if r.get("seconds") is not None}


def _cost_cells(workdir: str, runs) -> list[str]:
  seconds = _run_seconds(workdir)
  known = [seconds.get(os.path.relpath(d, workdir)) for d, _ in runs]
  # A run cached by a restarted ablate.py has no seconds in the new ablation.json.
  count = sum(k is not None for k in known)
  missing = f" ({count} of {len(runs)} runs)" if 0 < count < len(runs) else ""
  return [_cell([_step_seconds(d) for d, _ in runs]), _cell(known, 0) + missing]


def metric_table(workdir: str, runs: dict, metrics, cost: bool = False,
                 rows=None) -> None:
  """One markdown row per variant (or per `rows`: label -> runs): seeds, each metric (with
  chance / floors where recorded), and with `cost` the s / step and run seconds."""
  rows = runs if rows is None else rows
  finals = [f for r in runs.values() for f in _finals(r)]
  floors = {m: any(_has(finals, w, m) for w in ("chance", "raw_pixels", "random_init"))
            for m in metrics}
  header = ["variant", "seeds"] + [h for m in metrics for h in _metric_header(m, floors[m])]
  header += ["s / step", "run s"] if cost else []
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for label, r in rows.items():
    if not r:
      print(f"| {label} | 0 (not finished) |" + " - |" * (len(header) - 2))
      continue
    cells = [label, str(len(r))] + [c for m in metrics for c in
                                     _metric_cells(_finals(r), m, floors[m])]
    cells += _cost_cells(workdir, r) if cost else []
    print("| " + " | ".join(cells) + " |")


DISTANCE = ("verification/accuracy", "verification/roc_auc")


def adversarial(workdir: str) -> None:
  """clean / fgsm / pgd training x {clean, FGSM-, PGD-attacked} heldout pairs (robust/*), the
  distance protocol with its floors, and each variant's step and run time."""
  runs = _ablation_runs(workdir, "adversarial")
  robust = ("robust/clean_accuracy", "robust/fgsm/accuracy", "robust/pgd/accuracy")
  metric_table(workdir, runs, robust, cost=True)
  print()
  # Seed s of every variant starts from the same initialisation and data order: per seed.
  for m in robust:
    print(f"`{m}` per seed: " + "; ".join(
        f"{label} " + ", ".join(f"{x:.3f}" for x in _metric(_finals(r), m))
        for label, r in runs.items()))
  print()
  metric_table(workdir, runs, DISTANCE)


def ensemble(workdir: str) -> None:
  """Each single encoder, their spread, each ensemble of three, and each combination's spread
  over the disjoint groups (ensemble_<mode>[_<group>])."""
  runs = _ablation_runs(workdir, "ensemble")
  singles = [run for label, r in runs.items() if label.startswith("seed") for run in r]
  groups = {mode: [run for label, r in runs.items()
                   if label.startswith(f"ensemble_{mode}") for run in r]
            for mode in ("concat", "mean")}
  rows = {**{k: v for k, v in runs.items() if k.startswith("seed")},
          f"single encoders (the {len(singles)} seed rows)": singles,
          **{k: v for k, v in runs.items() if k.startswith("ensemble")},
          **{f"ensembles, {mode} ({len(g)} groups)": g for mode, g in groups.items()}}
  metric_table(workdir, runs, DISTANCE, cost=True, rows=rows)


def gnn(workdir: str) -> None:
  """base vs the GCN-refined embeddings: every verification / retrieval metric the runs have,
  and the GCN fit's loss."""
  runs = _ablation_runs(workdir, "gnn")
  names = sorted({k for r in runs.values() for f in _finals(r) for k in f["metrics"]})
  found = [m for m in names if m.startswith("retrieval/")]
  metric_table(workdir, runs, DISTANCE + tuple(found), cost=True)
  print()
  metric_table(workdir, runs, ("graph/fit_degree", "graph/fit_loss_first", "graph/fit_loss_last"))


def fewshot(workdir: str) -> None:
  """5-way K-shot accuracy of prototype / finetune on heldout names, with the 95% CI
  half-width over episodes (mean over seeds; fewshot/<method>_<K>shot_{accuracy,ci95}) and the
  same method's chance level and floors on the same episodes."""
  runs = _ablation_runs(workdir, "fewshot")
  shots = icons.FEWSHOT["eval.fewshot_k_shots"]
  header = ["method", "seeds"] + [f"{k}-shot {h}" for k in shots for h in (
      "accuracy", "95% CI (+-)", "chance", "raw pixels", "random init")]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for label, r in runs.items():
    if label not in ("prototype", "finetune"):
      continue
    finals = _finals(r)
    cells = [label, str(len(finals))]
    for k in shots:
      acc = f"fewshot/{label}_{k}shot_accuracy"
      cells += [_cell(_metric(finals, acc)),
                _cell(_metric(finals, f"fewshot/{label}_{k}shot_ci95")),
                *[_cell(_floor(finals, w, acc)) for w in ("chance", "raw_pixels", "random_init")]]
    print("| " + " | ".join(cells) + " |")
  print(f"\n1 / n_way = {1 / icons.FEWSHOT['eval.fewshot_n_way']:.3f}")
  # Both methods read the same checkpoint and the same episodes, so their per-seed difference
  # is paired: it shows whether fine-tuning helps in every seed.
  for k in shots:
    proto = _metric(_finals(runs["prototype"]), f"fewshot/prototype_{k}shot_accuracy")
    tuned = _metric(_finals(runs["finetune"]), f"fewshot/finetune_{k}shot_accuracy")
    diff = [f"{t - p:+.3f}" for p, t in zip(proto, tuned)]
    print(f"{k}-shot finetune - prototype per seed: {', '.join(diff) or '-'}")
  print()
  metric_table(workdir, runs, DISTANCE, cost=True)


def _last(run_dir: str, tag: str) -> str:
  series = plots.read_scalars(run_dir).get(tag, [])
  return f"{series[-1][1]:.3f}" if series else "-"


def margins(workdir: str) -> None:
  """fixed / learnable / adaptive: the distance protocol with floors, step and run time, and
  the last logged train/margin (adaptive: the mean of the per-class margins, with min / max)."""
  runs = _ablation_runs(workdir, "margins")
  metric_table(workdir, runs, DISTANCE, cost=True)
  print("\n| variant | final train/margin per seed | final train/margin_min | "
        "final train/margin_max |")
  print("|---|---|---|---|")
  for label, r in runs.items():
    print(f"| {label} | " + " | ".join(", ".join(_last(d, tag) for d, _ in r) for tag in
                                        ("train/margin", "train/margin_min", "train/margin_max"))
          + " |")


if __name__ == "__main__":
  cmd, *args = sys.argv[1:]
  {"table1": lambda: table1(*args), "losses": lambda: losses(*args),
   "curves": lambda: curves(args[0], args[1:]), "grid": lambda: grid(*args),
   "neighbours": lambda: neighbours(*args), "adversarial": lambda: adversarial(*args),
   "ensemble": lambda: ensemble(*args), "gnn": lambda: gnn(*args),
   "fewshot": lambda: fewshot(*args), "margins": lambda: margins(*args)}[cmd]()
