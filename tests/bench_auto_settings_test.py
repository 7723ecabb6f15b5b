"""bench/auto_settings.py: the trainer's `auto` settings per platform against the documented
picks (its EXPECTED table, written from docs/performance.md), and a wrong pick is reported."""

import json

import pytest

from bench import auto_settings
from sim_jax import models
from sim_jax.cpu import execution


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_every_auto_setting_resolves_to_the_documented_pick(platform):
  rows = auto_settings.check(platform)
  assert {r["setting"] for r in rows} == set(auto_settings.EXPECTED)
  assert [r["setting"] for r in rows if not r["ok"]] == []
  # Off the CPU everything is the plain path: one slice, one step, plain Flax modules.
  if platform != "cpu":
    assert {r["value"] for r in rows} <= {1, False, "plain"}


def test_a_cpu_form_picked_on_a_gpu_is_reported(monkeypatch):
  monkeypatch.setattr(models, "use_cpu_kernels", lambda platform=None: True)
  monkeypatch.setattr(execution, "resolve_parallel_splits",
                      lambda config, **kw: (4, "platform ignored"))
  bad = {r["setting"] for r in auto_settings.check("gpu") if not r["ok"]}
  assert bad == {"parallel_splits, lenet5 (256 pairs, no batch norm)",
                 "parallel_splits, resnet18 (batch norm)",
                 "get_model lenet5: stage", "get_model vit_ti: block",
                 "get_model multiscale: pool", "get_model mobilenet_v3_small: depthwise",
                 "get_model efficientnet_b0: depthwise"}
  assert auto_settings.main(["--platform=gpu"]) == 1


def test_cli_writes_the_report_and_runs_the_picked_form(tmp_path):
  out, md = tmp_path / "a.json", tmp_path / "a.md"
  assert auto_settings.main(["--run_models", "--models=lenet5", f"--out={out}", f"--md={md}"]) == 0
  report = json.loads(out.read_text())
  assert report["platform"] == report["backend"] == "cpu"
  assert report["settings"][-1]["setting"] == "compiler_options"
  (model,) = report["models"]
  assert model["model"] == "lenet5" and model["ok"] and model["loss"] != 0.0
  assert "| lenet5 |" in md.read_text()


def test_unknown_model_is_named(capsys):
  with pytest.raises(SystemExit) as exit_info:
    auto_settings.main(["--run_models", "--models=lenet5,resnet_huge"])
  assert exit_info.value.code == 2 and "'resnet_huge'" in capsys.readouterr().err
