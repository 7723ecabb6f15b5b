"""The experiment configs (configs/*.py) and the ablation runner (ablate.py, sim_jax.experiments).

Every variant of every ablation is resolved and checked here the way the runner does before it
launches anything, so a config that would fail after minutes of training fails in this test.
"""

import glob
import importlib
import json
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from PIL import Image

import sim_jax.data
from configs import test
from sim_jax import models
from sim_jax.experiments import checks, commands, plots, runner, tables
from sim_jax.experiments.variants import (
    Ablation,
    Run,
    Variant,
    apply_overrides,
    as_ablation,
    check_variants,
    dependency_order,
    effective_overrides,
    parse_seeds,
    plan_runs,
    run_overrides,
    run_refs,
    select_variants,
    substitute_runs,
)
from tests import helpers

EXPERIMENTS = ("icons", "characters", "lenet_siamese", "pools", "embeddings")
# Variants that fail for a reason outside configs/ and are waiting for its fix (strict: once
# fixed, the case passes and pytest reports it, so the entry must go). Also read by
# tests/experiments_trace_test.py.
NOT_EXPERIMENTS = ("__init__", "default", "test")


def _config_path(name: str) -> str:
  return os.path.join(helpers.REPO_ROOT, "configs", f"{name}.py")


def _cases():
  for name in EXPERIMENTS:
    experiment = runner.load_experiment(_config_path(name))
    for ablation, declared in experiment.ablations.items():
      for v in declared.variants:
        case = f"{name}-{ablation}-{v.label}"
        yield pytest.param(name, ablation, v, id=case)


def _fake_run_dirs(variants):
  return {v.label: f"/tmp/runs/{v.label}" for v in variants}


def test_every_experiment_config_is_covered():
  found = {os.path.splitext(os.path.basename(p))[0]
           for p in glob.glob(os.path.join(helpers.REPO_ROOT, "configs", "*.py"))}
  assert found - set(NOT_EXPERIMENTS) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_loads_and_declares_headline_and_ablations(name):
  experiment = runner.load_experiment(_config_path(name))
  module = importlib.import_module(f"configs.{name}")
  checks.check_config(module.get_config())
  assert experiment.headline and all("/" in h for h in experiment.headline)
  assert experiment.ablations and all(a.variants for a in experiment.ablations.values())
  # The docstring gives the commands: training the config and running every ablation.
  doc = " ".join(module.__doc__.replace("\\\n", " ").split())
  assert f"python launch.py --config=configs/{name}.py" in doc
  for ablation in experiment.ablations:
    assert (f"python ablate.py --config=configs/{name}.py --ablation={ablation} "
            f"--workdir=runs/{name}_{ablation}") in doc


_BUILT = set()


def _check_model_builds(config):
  """Abstract init of the encoder at the config's image size (shapes only; once per model)."""
  size = config.data.image_size or 28
  key = (config.model.to_json(), size)
  if key in _BUILT:
    return
  model = models.get_model(config.model)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  jax.eval_shape(lambda: model.init(rngs, jnp.zeros((2, size, size, 1)), train=False))
  _BUILT.add(key)


@pytest.mark.parametrize("name,ablation,variant", list(_cases()))
def test_variant_config_is_valid(name, ablation, variant):
  module = importlib.import_module(f"configs.{name}")
  variants = as_ablation(module.get_ablations()[ablation]).variants
  overrides = substitute_runs(effective_overrides(variant, variants),
                                     _fake_run_dirs(variants))
  config = apply_overrides(module.get_config(), overrides)
  checks.check_config(config)
  _check_model_builds(config)
  # The command line launch.py receives parses back to the same config.
  cmd = commands.launch_command(_config_path(name), "/tmp/runs/x", overrides,
                              evaluate=bool(variant.evaluates))
  parsed = commands.child_config(cmd)
  expected = apply_overrides(module.get_config(), overrides)
  assert parsed.to_dict() == expected.to_dict()


# -------------------------------------------------------------------------------- overrides


def test_apply_overrides_sets_values_and_leaves_the_input_alone():
  base = test.get_config()
  out = apply_overrides(base, {"model.embedding_dim": 8, "data.eval_splits": ("test",),
                               "data.samples_per_class": 3, "optimizer.learning_rate": 1})
  assert (out.model.embedding_dim, out.data.eval_splits, out.data.samples_per_class) == \
      (8, ("test",), 3)
  assert isinstance(out.optimizer.learning_rate, float)
  assert base.model.embedding_dim == 16 and base.data.samples_per_class is None
  assert out.is_locked


@pytest.mark.parametrize("key,message", [
    ("model.nope", "unknown config key 'model.nope': no field 'nope' in config.model"),
    ("nope.x", "unknown config key 'nope.x': config.nope is not a section"),
    ("model.name.x", "unknown config key 'model.name.x': config.model.name is not a section"),
])
def test_unknown_override_key_raises_naming_the_key(key, message):
  with pytest.raises(KeyError, match=message.replace(".", r"\.")):
    apply_overrides(test.get_config(), {key: 1})


def test_ill_typed_override_raises_naming_the_key():
  with pytest.raises(TypeError, match="config key 'train.steps'"):
    apply_overrides(test.get_config(), {"train.steps": "many"})


# ------------------------------------------------------------------------- variants and order


def test_dependency_order_runs_referenced_variants_first():
  variants = [Variant("finetune", {"model.init_from": "{run:pretrain}"}),
              Variant("cosine", {"eval.metric": "cosine"}, evaluates="finetune"),
              Variant("scratch"),
              Variant("pretrain", {"loss.name": "nt_xent"})]
  order = [v.label for v in dependency_order(variants)]
  assert order == ["pretrain", "finetune", "cosine", "scratch"]
  assert run_refs(variants[1]) == ["finetune"]


def test_dependency_cycle_and_unknown_reference_raise():
  with pytest.raises(ValueError, match="cycle: a -> b -> a"):
    dependency_order([Variant("a", {"model.init_from": "{run:b}"}),
                             Variant("b", {"model.init_from": "{run:a}"})])
  with pytest.raises(ValueError, match="refers to 'c', which is not a variant"):
    check_variants([Variant("a", {"model.init_from": "{run:c}"})])
  with pytest.raises(ValueError, match="appears 2 times"):
    check_variants([Variant("a"), Variant("a")])
  with pytest.raises(ValueError, match="must match"):
    check_variants([Variant("a b")])
  with pytest.raises(ValueError, match=r"eval\.\* fields only; got \['model.width'\]"):
    check_variants([Variant("a"), Variant("b", {"model.width": 2}, evaluates="a")])
  with pytest.raises(ValueError, match="which trains nothing itself; name the variant that "
                     "trained \\('a'\\)"):
    check_variants([Variant("a"), Variant("b", evaluates="a"), Variant("c", evaluates="b")])


def test_evaluate_variant_inherits_the_trained_variant_overrides():
  variants = [Variant("euclidean", {"loss.name": "softmax_ce", "eval.metric": "euclidean"}),
              Variant("kl", {"eval.metric": "kl"}, evaluates="euclidean")]
  assert effective_overrides(variants[1], variants) == {"loss.name": "softmax_ce",
                                                        "eval.metric": "kl"}
  assert effective_overrides(variants[0], variants) == dict(variants[0].overrides)


def test_run_reference_substitution():
  out = substitute_runs(
      {"model.init_from": "{run:pretrain}", "data.path": "{run:pretrain}/x{run:b}",
       "model.width": 8, "data.name": "digits"},
      {"pretrain": "runs/abl/pretrain", "b": "runs/abl/b"})
  assert out == {"model.init_from": "runs/abl/pretrain",
                 "data.path": "runs/abl/pretrain/xruns/abl/b", "model.width": 8,
                 "data.name": "digits"}


def test_seeded_runs_are_interleaved_and_each_refers_to_its_own_seed():
  pre, fine = Variant("pre", {"loss.name": "nt_xent"}), Variant(
      "fine", {"model.init_from": "{run:pre}"})
  ablation = as_ablation(Ablation([fine, pre], seeds=(3, 7)))
  runs = plan_runs(ablation)
  assert [(r.variant.label, r.seed) for r in runs] == [("pre", 3), ("fine", 3), ("pre", 7),
                                                       ("fine", 7)]
  assert [r.name for r in runs] == ["pre/seed_3", "fine/seed_3", "pre/seed_7", "fine/seed_7"]
  dirs = {"pre": "w/pre/seed_7", "fine": "w/fine/seed_7"}
  assert run_overrides(runs[3], ablation.variants, dirs) == {"model.init_from": "w/pre/seed_7",
                                                             "seed": 7}
  # Unseeded: one run per variant, in its own directory, with the config's seed.
  plain = plan_runs(as_ablation([fine, pre]))
  assert [(r.name, r.seed) for r in plain] == [("pre", None), ("fine", None)]
  assert run_overrides(plain[0], [fine, pre], {}) == {"loss.name": "nt_xent"}
  with pytest.raises(ValueError, match="overrides 'seed' inside a seeded ablation"):
    run_overrides(Run(Variant("s", {"seed": 1}), 0), [Variant("s", {"seed": 1})], {})


def test_select_variants_keeps_the_named_ones_and_what_they_refer_to():
  # A chain: eval -> fine -> pre; "other" and "pre2" are unrelated.
  variants = [Variant("pre", {"loss.name": "nt_xent"}), Variant("pre2"),
              Variant("fine", {"model.init_from": "{run:pre}"}),
              Variant("eval", {"eval.metric": "cosine"}, evaluates="fine"), Variant("other")]
  ablation = as_ablation(Ablation(variants, seeds=(1, 2)))
  picked = select_variants(ablation, ["eval"])
  assert [v.label for v in picked.variants] == ["pre", "fine", "eval"]  # declared order
  assert picked.seeds == (1, 2)
  assert [(r.variant.label, r.seed) for r in plan_runs(picked)] == [
      ("pre", 1), ("fine", 1), ("eval", 1), ("pre", 2), ("fine", 2), ("eval", 2)]
  assert [v.label for v in select_variants(ablation, ["other", "pre2"]).variants] == [
      "pre2", "other"]
  with pytest.raises(ValueError, match=r"'nope' not a variant of this ablation \(pre, pre2"):
    select_variants(ablation, ["fine", "nope"])


def test_seeds_are_checked_and_parsed():
  assert parse_seeds("3") == (0, 1, 2)
  assert parse_seeds("0,5,2") == (0, 5, 2)
  assert parse_seeds("") == ()
  for bad, message in (("0,0", "distinct"), ("-1,2", "non-negative"), ("x", "a count"),
                       ("0", "positive \\(seed 0 alone: --seeds=1")):
    with pytest.raises(ValueError, match=message):
      parse_seeds(bad)
  with pytest.raises(ValueError, match="distinct"):
    as_ablation(Ablation([Variant("a")], seeds=(1, 1)))


# --------------------------------------------------------------------------- command lines


def test_flag_values_are_what_config_flags_parses():
  assert commands.flag_value(True) == "true"
  assert commands.flag_value(False) == "false"
  assert commands.flag_value(3) == "3"
  assert commands.flag_value(1e-4) == "0.0001"
  assert commands.flag_value(("train", "test")) == "('train', 'test')"
  assert commands.flag_value(["train"]) == "('train',)"
  assert commands.flag_value("runs/a b") == "runs/a b"
  with pytest.raises(ValueError, match="None cannot be passed"):
    commands.flag_value(None)


def test_launch_command_for_a_variant():
  cmd = commands.launch_command(
      "configs/icons.py", "runs/icons_attention/before",
      {"model.attention": "before", "train.plots": False, "data.eval_splits": ("heldout",)},
      [("train.steps", "300")], extra=["--compilation_cache="])
  assert cmd == ["launch.py", "--config=configs/icons.py", "--workdir=runs/icons_attention/before",
                 "--config.model.attention=before", "--config.train.plots=false",
                 "--config.data.eval_splits=('heldout',)", "--config.train.steps=300",
                 "--compilation_cache="]
  assert commands.shell_command(cmd) == (
      "python launch.py --config=configs/icons.py --workdir=runs/icons_attention/before "
      "--config.model.attention=before --config.train.plots=false "
      "'--config.data.eval_splits=('\"'\"'heldout'\"'\"',)' --config.train.steps=300 "
      "--compilation_cache=")
  evaluate = commands.launch_command("configs/characters.py", "runs/c/kl", {"eval.metric": "kl"},
                                   evaluate=True)
  assert evaluate == ["launch.py", "--config=configs/characters.py", "--workdir=runs/c/kl",
                      "--mode=evaluate", "--config.eval.metric=kl"]


def test_set_overrides_come_last_and_win():
  cmd = commands.launch_command(_config_path("lenet_siamese"), "/tmp/runs/x",
                              {"train.steps": 4000}, commands.parse_sets(["train.steps=7"]))
  assert commands.child_config(cmd).train.steps == 7


def test_parse_sets():
  assert commands.parse_sets(["train.steps=300", "--config.eval.ks=(1, 5)"]) == \
      [("train.steps", "300"), ("eval.ks", "(1, 5)")]
  with pytest.raises(ValueError, match="expected KEY=VALUE"):
    commands.parse_sets(["train.steps"])


def test_child_config_reads_a_relative_config_from_the_root(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # ablate.py started outside the repository
  cmd = commands.launch_command("configs/test.py", "runs/x", {"train.steps": 3})
  assert commands.child_config(cmd, helpers.REPO_ROOT).train.steps == 3
  with pytest.raises(ValueError, match="launch.py would refuse these flags"):
    commands.child_config(cmd)  # relative to the current directory: not there


def test_child_config_refuses_unknown_keys_before_launching():
  cmd = commands.launch_command(_config_path("icons"), "/tmp/runs/x", {}, [("model.nope", "1")])
  with pytest.raises(ValueError, match="launch.py would refuse these flags"):
    commands.child_config(cmd)


# --------------------------------------------------------------------------------- results

FLOORS_NONE = {"raw_pixels": {"verification/accuracy": 0.61}, "random_init": {
    "verification/accuracy": 0.55, "verification/recall": 0.25}}


def _results():
  R = tables.Result
  return [
      R(Run(Variant("none", {"model.attention": "none"})),
        ["launch.py", "--config=configs/icons.py", "--workdir=runs/att/none",
         "--config.model.attention=none"], "ok", exit_code=0,
        metrics={"verification/accuracy": 0.81234, "verification/recall": 0.5},
        chance={"verification/accuracy": 0.49751}, floors=FLOORS_NONE, seconds=312.4,
        log="runs/att/none/log.txt"),
      R(Run(Variant("after", {"model.attention": "after"})),
        ["launch.py", "--config=configs/icons.py", "--workdir=runs/att/after",
         "--config.model.attention=after"], "failed", detail="sim_jax: error: bad | worse",
        exit_code=2, seconds=9.6, log="runs/att/after/log.txt"),
      R(Run(Variant("mnist", {"data.name": "mnist"})),
        ["launch.py", "--config=configs/x.py", "--workdir=runs/att/mnist"], "not run",
        detail="TFDS dataset 'mnist' is not prepared"),
  ]


def _rows(results):
  return tables.rows(results, [r.variant for r in results])


def test_markdown_table_shows_chance_and_both_floors_beside_each_metric():
  table = tables.render_table(_rows(_results()), ("verification/accuracy", "verification/recall"),
                              "Ablation `attention`")
  assert table == textwrap.dedent("""\
      ## Ablation `attention`

      | variant | status | `verification/accuracy` | chance | raw pixels | random init | `verification/recall` | chance | raw pixels | random init | seconds | command |
      |---|---|---|---|---|---|---|---|---|---|---|---|
      | none | ok | 0.8123 | 0.4975 | 0.6100 | 0.5500 | 0.5000 | n/a | n/a | 0.2500 | 312 | `python launch.py --config=configs/icons.py --workdir=runs/att/none --config.model.attention=none` |
      | after | failed: exit code 2: sim_jax: error: bad \\| worse (log: runs/att/after/log.txt) | - | - | - | - | - | - | - | - | 10 | `python launch.py --config=configs/icons.py --workdir=runs/att/after --config.model.attention=after` |
      | mnist | not run: TFDS dataset 'mnist' is not prepared | - | - | - | - | - | - | - | - | - | `python launch.py --config=configs/x.py --workdir=runs/att/mnist` |

      Beside each metric: its chance level (the same metric on random embeddings) and its floors, scored by the same evaluator on the flattened L2-normalised pixels (raw pixels) and on the untrained encoder (random init); n/a: not recorded by that run.
      Commands run from the repository root.
      """)  # noqa: E501


def _seeded_results():
  """Variant a: three finished seeds; variant b: seed 1 failed, seeds 0 and 2 finished (seed 2
  read back from an earlier run written before floors existed)."""
  R = tables.Result
  a, b = Variant("a"), Variant("b", {"model.width": 4})
  cmd = lambda v, s: ["launch.py", f"--workdir=w/{v.label}/seed_{s}", f"--config.seed={s}"]
  m = "knn/f1_macro"
  return [
      R(Run(a, 0), cmd(a, 0), "ok", metrics={m: 0.80}, chance={m: 0.10},
        floors={"raw_pixels": {m: 0.50}, "random_init": {m: 0.30}}, seconds=10.0),
      R(Run(a, 1), cmd(a, 1), "ok", metrics={m: 0.84}, chance={m: 0.12},
        floors={"raw_pixels": {m: 0.50}, "random_init": {m: 0.34}}, seconds=11.0),
      R(Run(a, 2), cmd(a, 2), "cached", metrics={m: 0.82}, chance={m: 0.11},
        floors={"raw_pixels": {m: 0.50}, "random_init": {m: 0.32}}, seconds=12.0),
      R(Run(b, 0), cmd(b, 0), "ok", metrics={m: 0.70}, chance={m: 0.10},
        floors={"raw_pixels": {m: 0.50}, "random_init": {m: 0.20}}, seconds=20.0),
      R(Run(b, 1), cmd(b, 1), "failed", exit_code=1, detail="NaN", log="w/b/seed_1/log.txt"),
      R(Run(b, 2), cmd(b, 2), "cached", metrics={m: 0.60}, chance={m: 0.30}),
  ]


def test_seeded_table_shows_mean_and_range_of_the_finished_seeds():
  table = tables.render_table(tables.rows(_seeded_results(), [Variant("a"), Variant("b")]),
                              ("knn/f1_macro",))
  lines = table.splitlines()
  assert lines[0] == ("| variant | status | seeds | `knn/f1_macro` | chance | raw pixels | "
                      "random init | seconds | command |")
  # Means and ranges by hand: (0.80 + 0.84 + 0.82) / 3 = 0.82, chance 0.11, init 0.32.
  assert lines[2] == ("| a | ok | 0, 1, 2 | 0.8200 (0.8000–0.8400) | 0.1100 (0.1000–0.1200) | "
                      "0.5000 | 0.3200 (0.3000–0.3400) | 33 | `python launch.py "
                      "--workdir=w/a/seed_0 --config.seed=0` |")
  # b: (0.70 + 0.60) / 2 = 0.65; its floors only from seed 0 (seed 2 recorded none).
  assert lines[3] == ("| b | seed 1: failed: exit code 1: NaN (log: w/b/seed_1/log.txt) | 0, 2 "
                      "of 0, 1, 2 | 0.6500 (0.6000–0.7000) | 0.2000 (0.1000–0.3000) | 0.5000 | "
                      "0.2000 | 20 | `python launch.py --workdir=w/b/seed_0 --config.seed=0` |")
  assert "Over seeds: mean (min–max) of the seeds that finished; seconds summed." in table


def test_ablation_json_row_records_every_run_and_the_summaries():
  row = tables.rows(_seeded_results(), [Variant("a"), Variant("b")])[1]
  record = tables.row_record(row, ("knn/f1_macro",))
  assert record["seeds"] == [0, 1, 2]
  assert [r["run"] for r in record["runs"]] == ["b/seed_0", "b/seed_1", "b/seed_2"]
  assert [r["status"] for r in record["runs"]] == ["ok", "failed", "cached"]
  summary = record["summary"]["knn/f1_macro"]
  assert summary["metric"] == pytest.approx({"mean": 0.65, "min": 0.6, "max": 0.7, "n": 2})
  assert summary["raw_pixels"] == {"mean": 0.5, "min": 0.5, "max": 0.5, "n": 1}
  assert record["runs"][2]["floors"] == {}
  json.dumps(record)  # JSON-able as written


def test_final_metrics_without_floors_reads_as_empty_floors():
  r = tables.Result(Run(Variant("a")), ["launch.py"], "ok")
  old = tables.from_final(r, {"metrics": {"m/x": 0.5}, "chance": {"m/x": 0.1}})
  assert (old.metrics, old.chance, old.floors) == ({"m/x": 0.5}, {"m/x": 0.1}, {})
  new = tables.from_final(r, {"metrics": {"m/x": 0.5}, "floors": {
      "raw_pixels": {"m/x": 0.2}, "random_init": {"m/x": 0.3}}})
  assert new.floors == {"raw_pixels": {"m/x": 0.2}, "random_init": {"m/x": 0.3}}
  row = tables.Row(Variant("a"), [old])
  assert tables.metric_cells(row, "m/x") == ["0.5000", "0.1000", "n/a", "n/a"]


def test_plot_is_a_png(tmp_path):
  path = str(tmp_path / "a.png")
  plots.write_plot(path, _rows(_results()), "verification/accuracy",
                   {"none": [[(100, 0.6), (200, 0.81)]]})
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  seeded = tables.rows(_seeded_results(), [Variant("a"), Variant("b")])
  plots.write_plot(path, seeded, "knn/f1_macro", {"a": [[(1, 0.5), (2, 0.8)], [(1, 0.4)]]})
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_variant_links_each_checkpoint_and_writes_final_metrics(tmp_path):
  source, run = tmp_path / "euclidean", tmp_path / "kl"
  (source / "checkpoints" / "6").mkdir(parents=True)
  (source / "checkpoints" / "6" / "state").write_text("x")
  runner.link_checkpoints(str(run), str(source))
  runner.link_checkpoints(str(run), str(source))  # a second time (resume) is fine
  assert os.readlink(run / "checkpoints" / "6") == os.path.join("..", "..", "euclidean",
                                                                "checkpoints", "6")
  assert (run / "checkpoints" / "6" / "state").read_text() == "x"
  # A step the evaluation cannot restore is moved aside (checkpointing.CORRUPT_DIR): that moves
  # the link, and the source run keeps its checkpoint.
  os.rename(run / "checkpoints" / "6", run / "moved_aside")
  assert (source / "checkpoints" / "6" / "state").exists()
  (run / "eval_step6.json").write_text(json.dumps(
      {"step": 6, "metrics": {"retrieval/mrr@5": 0.5}, "chance": {"retrieval/mrr@5": 0.1}}))
  runner.finish_evaluation(str(run), "euclidean", since=0.0)
  final = json.loads((run / "final_metrics.json").read_text())
  assert final == {"metrics": {"retrieval/mrr@5": 0.5}, "chance": {"retrieval/mrr@5": 0.1},
                   "step": 6, "evaluates": "euclidean"}
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    runner.link_checkpoints(str(tmp_path / "c"), str(tmp_path / "nothing"))


def test_tfds_dataset_that_is_not_prepared_is_reported(tmp_path):
  config = apply_overrides(test.get_config(), {"data.name": "mnist",
                                               "data.data_dir": str(tmp_path)})
  reason = checks.dataset_unavailable(config.data)
  assert reason.startswith("TFDS dataset 'mnist' is not prepared in ") and "tfds build" in reason
  assert checks.dataset_unavailable(test.get_config().data) == ""  # sim_jax's own builder


def _unavailable_reason(data_config):
  """Stands in for sim_jax.data.unavailable_reason: glyph_han needs a font package."""
  return "install the Debian package fonts-noto-cjk" if data_config.name == "glyph_han" else None


def test_data_that_cannot_be_prepared_is_reported_naming_the_package(monkeypatch, tmp_path):
  monkeypatch.setattr(sim_jax.data, "unavailable_reason", _unavailable_reason)
  han = apply_overrides(test.get_config(), {"data.name": "glyph_han"})
  expected = ("data 'glyph_han' cannot be prepared on this machine: install the Debian package "
              "fonts-noto-cjk")
  assert checks.dataset_unavailable(han.data) == expected
  assert checks.dataset_unavailable(han.data, allow_download=True) == expected  # no download helps
  assert checks.dataset_unavailable(test.get_config().data) == ""


DRY = '''
from configs import test
from sim_jax.experiments import Ablation, Variant

HEADLINE = ("retrieval/mrr@5",)


def get_config():
  return test.get_config()


def get_ablations():
  return {"data": Ablation([Variant("digits", {}), Variant("han", {"data.name": "glyph_han"})],
                           seeds=(0, 1))}
'''


def test_dry_run_reports_each_run_whose_data_cannot_be_prepared(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(sim_jax.data, "unavailable_reason", _unavailable_reason)
  config = tmp_path / "dry.py"
  config.write_text(DRY)
  experiment = runner.load_experiment(str(config))
  code = runner.run_ablation(experiment, "data", str(tmp_path / "w"), root=helpers.REPO_ROOT,
                             dry_run=True)
  out = capsys.readouterr().out.splitlines()
  assert code == 0
  assert out[0].startswith(f"[1/4] digits seed 0: python launch.py --config={config} "
                           f"--workdir={tmp_path / 'w' / 'digits' / 'seed_0'}")
  assert out[1] == ("[2/4] han seed 0: not run: data 'glyph_han' cannot be prepared on this "
                    "machine: install the Debian package fonts-noto-cjk")
  assert out[2].startswith("[3/4] digits seed 1: python launch.py") and "--config.seed=1" in out[2]
  assert out[3].startswith("[4/4] han seed 1: not run: data 'glyph_han' cannot be prepared")
  assert out[4].startswith("4 runs in ") and out[4].endswith("0 finished, 0 failed, 2 not run.")
  assert not (tmp_path / "w").exists()  # a dry run writes nothing


def test_previous_seconds_reads_old_and_seeded_records(tmp_path):
  (tmp_path / "ablation.json").write_text(json.dumps({"variants": [
      {"label": "old", "seconds": 5.0},  # written before seeds: one run per variant
      {"label": "new", "runs": [{"label": "new", "run": "new/seed_0", "seconds": 7.0},
                                {"label": "new", "run": "new/seed_1", "seconds": None}]}]}))
  assert runner.previous_seconds(str(tmp_path)) == {"old": 5.0, "new/seed_0": 7.0}
  assert runner.previous_seconds(str(tmp_path / "none")) == {}


# ------------------------------------------------------------------------------ end to end

TINY = '''
from configs import test
from sim_jax.experiments import Variant

HEADLINE = ("retrieval/mrr@5", "knn/accuracy")


def get_config():
  return test.get_config()


def get_ablations():
  # Declared before the run it fine-tunes from: the runner must order them.
  return {"tiny": [Variant("finetune", {"model.init_from": "{run:scratch}"}),
                   Variant("scratch", {})]}
'''


@pytest.mark.slow
def test_ablate_runs_writes_table_and_plot_and_resumes(tmp_path):
  config = tmp_path / "tiny.py"
  config.write_text(TINY)
  workdir = tmp_path / "abl"
  cmd = [sys.executable, os.path.join(helpers.REPO_ROOT, "ablate.py"), f"--config={config}",
         "--ablation=tiny", f"--workdir={workdir}", "--set", "train.steps=4",
         "--set", "train.eval_every=2",
         f"--launch_args=--compilation_cache={helpers.COMPILATION_CACHE}"]
  run = lambda: helpers.run_command(cmd, timeout=240)
  proc = run()
  assert proc.returncode == 0, helpers.describe(proc)
  assert proc.stdout.index("[1/2] scratch:") < proc.stdout.index("[2/2] finetune:")

  finals = {}
  for label in ("scratch", "finetune"):
    with open(workdir / label / "final_metrics.json") as f:
      finals[label] = json.load(f)
  with open(workdir / "finetune" / "log.txt") as f:
    assert f"init_from {workdir / 'scratch'}" in f.read()
  table = (workdir / "ablation.md").read_text()
  for label, final in finals.items():
    row = next(line for line in table.splitlines() if line.startswith(f"| {label} | ok |"))
    floors = final.get("floors", {})  # written by the trainer once floors land; else n/a
    cells = []
    for metric in ("retrieval/mrr@5", "knn/accuracy"):
      cells += [f"{final['metrics'][metric]:.4f}", f"{final['chance'][metric]:.4f}"]
      cells += [f"{floors[f][metric]:.4f}" if metric in floors.get(f, {}) else "n/a"
                for f in ("raw_pixels", "random_init")]
    assert f"| {label} | ok | {' | '.join(cells)} |" in row
    assert f"--workdir={workdir / label}" in row
  with open(workdir / "ablation.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with Image.open(workdir / "ablation.png") as img:
    img.verify()
  summary = json.loads((workdir / "ablation.json").read_text())
  assert [(v["label"], v["status"]) for v in summary["variants"]] == \
      [("finetune", "ok"), ("scratch", "ok")]

  # Re-running trains nothing: the finished variants are read back.
  mtimes = {p: os.path.getmtime(p) for p in glob.glob(str(workdir / "*" / "*"))}
  proc = run()
  assert proc.returncode == 0, helpers.describe(proc)
  assert proc.stdout.count("not re-run") == 2, proc.stdout
  assert "running" not in proc.stdout
  assert {p: os.path.getmtime(p) for p in glob.glob(str(workdir / "*" / "*"))} == mtimes
  summary = json.loads((workdir / "ablation.json").read_text())
  assert [(v["status"], v["runs"][0]["metrics"]) for v in summary["variants"]] == \
      [("cached", finals["finetune"]["metrics"]), ("cached", finals["scratch"]["metrics"])]
  assert summary["variants"][1]["summary"]["knn/accuracy"]["metric"]["mean"] == \
      finals["scratch"]["metrics"]["knn/accuracy"]


def test_failure_detail_comes_from_the_latest_attempt_only(tmp_path):
  # A resumed run appends to its log: an earlier attempt's error must not be reported again.
  log = tmp_path / "log.txt"
  log.write_text("\n=== ablate.py 2026-01-01T00:00:00: python launch.py ...\n"
                 "sim_jax: error: images must have 1 channels\n"
                 "\n=== ablate.py 2026-01-01T01:00:00: python launch.py ...\n"
                 "Traceback (most recent call last):\n  File x\nKeyError: 'seed'\n")
  assert runner.error_line(runner._tail(str(log))) == "KeyError: 'seed'"
  log.write_text(log.read_text() + "\n=== ablate.py 2026-01-01T02:00:00: python launch.py ...\n")
  assert runner.error_line(runner._tail(str(log))) == ""
  old = tmp_path / "old.txt"  # a log written before attempt headers: its last lines
  old.write_text("a\nsim_jax: error: bad key\n")
  assert runner.error_line(runner._tail(str(old))) == "sim_jax: error: bad key"
