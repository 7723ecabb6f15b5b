"""docs/experiments/icons_report.py's issue-26 tables, on a fake ablation workdir.

The expected cells are computed here from the numbers written into the fake final_metrics.json /
ablation.json files (NumPy mean / min / max), not from the script's own helpers.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "docs", "experiments", "icons_report.py")


@pytest.fixture(scope="module")
def report():
  spec = importlib.util.spec_from_file_location("icons_report", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def _final(acc, auc, chance=0.49, raw=0.56, rand=0.58, **extra):
  names = ("verification/accuracy", "verification/roc_auc")
  return {"metrics": {names[0]: acc, names[1]: auc, **extra},
          "chance": {n: chance for n in names},
          "floors": {"raw_pixels": {n: raw for n in names},
                     "random_init": {n: rand for n in names}}}


def _expected(values, digits=3):
  v = np.asarray(values, np.float64)
  if v.min() == v.max():
    return f"{v[0]:.{digits}f}"
  return f"{v.mean():.{digits}f} [{v.min():.{digits}f}, {v.max():.{digits}f}]"


def _rows(text):
  """label -> the cells of its markdown row (first table only)."""
  out = {}
  for line in text.split("\n\n")[0].splitlines()[2:]:
    cells = [c.strip() for c in line.strip("|").split("|")]
    out[cells[0]] = cells[1:]
  return out


def test_margins_table_aggregates_seeds_and_marks_missing_runs(report, tmp_path, capsys):
  acc, auc = [0.61, 0.65, 0.63], [0.70, 0.66, 0.71]
  for s in range(3):  # seed_10 would sort before seed_2 as text: order must be numeric
    _write(tmp_path / "fixed" / f"seed_{s}" / "final_metrics.json", _final(acc[s], auc[s]))
  _write(tmp_path / "learnable" / "seed_0" / "final_metrics.json", _final(0.6, 0.7))
  os.makedirs(tmp_path / "adaptive" / "seed_0")  # started, not finished
  _write(tmp_path / "ablation.json", {"variants": [{"runs": [
      {"run": f"fixed/seed_{s}", "seconds": 50.0 + 10 * s} for s in range(3)] +
      [{"run": "learnable/seed_0", "seconds": None}]}]})
  report.metric_table(str(tmp_path), report._ablation_runs(str(tmp_path), "margins"),
                      report.DISTANCE, cost=True)
  rows = _rows(capsys.readouterr().out)
  assert rows["fixed"] == ["3", _expected(acc), "0.490", "0.560", "0.580", _expected(auc),
                           "0.490", "0.560", "0.580", "-", _expected([50.0, 60.0, 70.0], 0)]
  assert rows["learnable"][:2] == ["1", "0.600"] and rows["learnable"][-1] == "-"
  assert rows["adaptive"][0] == "0 (not finished)"
  assert len(rows["adaptive"]) == len(rows["fixed"])


def test_fewshot_table_reads_each_method_and_k(report, tmp_path, capsys):
  vals = {("prototype", 1): [0.40, 0.44], ("prototype", 5): [0.55, 0.59],
          ("finetune", 1): [0.41, 0.43], ("finetune", 5): [0.60, 0.62]}
  for method in ("prototype", "finetune"):
    for s in range(2):
      m = {f"fewshot/{method}_{k}shot_{what}": (vals[method, k][s] if what == "accuracy" else
                                                 0.01 * k)
           for k in (1, 5) for what in ("accuracy", "ci95")}
      _write(tmp_path / method / f"seed_{s}" / "final_metrics.json", _final(0.6, 0.7, **m))
  report.fewshot(str(tmp_path))
  rows = _rows(capsys.readouterr().out)
  for method in ("prototype", "finetune"):
    assert rows[method] == ["2", _expected(vals[method, 1]), "0.010", "-", "-", "-",
                            _expected(vals[method, 5]), "0.050", "-", "-", "-"]
  assert "bce" not in rows
