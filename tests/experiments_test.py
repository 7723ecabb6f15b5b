"""The experiment configs (configs/*.py) and the ablation runner (ablate.py).

Every variant of every ablation is resolved and checked here the way the runner does before it
launches anything, so a config that would fail after minutes of training fails in this test.
"""

import glob
import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import ablate
from configs.ablation import (
    Variant,
    apply_overrides,
    check_variants,
    effective_overrides,
    run_refs,
)
from tests import helpers

EXPERIMENTS = ("icons", "characters", "lenet_siamese", "pools", "embeddings")
NOT_EXPERIMENTS = ("__init__", "ablation", "default", "test")


def _config_path(name: str) -> str:
  return os.path.join(helpers.REPO_ROOT, "configs", f"{name}.py")


def _cases():
  for name in EXPERIMENTS:
    experiment = ablate.load_experiment(_config_path(name))
    for ablation, variants in experiment.ablations.items():
      for v in variants:
        yield pytest.param(name, ablation, v, id=f"{name}-{ablation}-{v.label}")


def _fake_run_dirs(variants):
  return {v.label: f"/tmp/runs/{v.label}" for v in variants}


def test_every_experiment_config_is_covered():
  found = {os.path.splitext(os.path.basename(p))[0]
           for p in glob.glob(os.path.join(helpers.REPO_ROOT, "configs", "*.py"))}
  assert found - set(NOT_EXPERIMENTS) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_loads_and_declares_headline_and_ablations(name):
  experiment = ablate.load_experiment(_config_path(name))
  module = importlib.import_module(f"configs.{name}")
  ablate.check_config(module.get_config())
  assert experiment.headline and all("/" in h for h in experiment.headline)
  assert experiment.ablations and all(experiment.ablations.values())
  # The docstring gives the commands: training the config and running every ablation.
  doc = " ".join(module.__doc__.replace("\\\n", " ").split())
  assert f"python launch.py --config=configs/{name}.py" in doc
  for ablation in experiment.ablations:
    assert (f"python ablate.py --config=configs/{name}.py --ablation={ablation} "
            f"--workdir=runs/{name}_{ablation}") in doc


_BUILT = set()


def _check_model_builds(config):
  """Abstract init of the encoder at the config's image size (shapes only; once per model)."""
  import jax
  import jax.numpy as jnp

  from sim_jax import models
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
  variants = module.get_ablations()[ablation]
  overrides = ablate.substitute_runs(effective_overrides(variant, variants),
                                     _fake_run_dirs(variants))
  config = apply_overrides(module.get_config(), overrides)
  ablate.check_config(config)
  _check_model_builds(config)
  # The command line launch.py receives parses back to the same config.
  cmd = ablate.launch_command(_config_path(name), "/tmp/runs/x", overrides,
                              evaluate=bool(variant.evaluates))
  parsed = ablate.child_config(cmd)
  expected = apply_overrides(module.get_config(), overrides)
  assert parsed.to_dict() == expected.to_dict()


# -------------------------------------------------------------------------------- overrides


def test_apply_overrides_sets_values_and_leaves_the_input_alone():
  from configs import test
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
  from configs import test
  with pytest.raises(KeyError, match=message.replace(".", r"\.")):
    apply_overrides(test.get_config(), {key: 1})


def test_ill_typed_override_raises_naming_the_key():
  from configs import test
  with pytest.raises(TypeError, match="config key 'train.steps'"):
    apply_overrides(test.get_config(), {"train.steps": "many"})


# ------------------------------------------------------------------------- variants and order


def test_dependency_order_runs_referenced_variants_first():
  variants = [Variant("finetune", {"model.init_from": "{run:pretrain}"}),
              Variant("cosine", {"eval.metric": "cosine"}, evaluates="finetune"),
              Variant("scratch"),
              Variant("pretrain", {"loss.name": "nt_xent"})]
  order = [v.label for v in ablate.dependency_order(variants)]
  assert order == ["pretrain", "finetune", "cosine", "scratch"]
  assert run_refs(variants[1]) == ["finetune"]


def test_dependency_cycle_and_unknown_reference_raise():
  with pytest.raises(ValueError, match="cycle: a -> b -> a"):
    ablate.dependency_order([Variant("a", {"model.init_from": "{run:b}"}),
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
  out = ablate.substitute_runs(
      {"model.init_from": "{run:pretrain}", "data.path": "{run:pretrain}/x{run:b}",
       "model.width": 8, "data.name": "digits"},
      {"pretrain": "runs/abl/pretrain", "b": "runs/abl/b"})
  assert out == {"model.init_from": "runs/abl/pretrain",
                 "data.path": "runs/abl/pretrain/xruns/abl/b", "model.width": 8,
                 "data.name": "digits"}


# --------------------------------------------------------------------------- command lines


def test_flag_values_are_what_config_flags_parses():
  assert ablate.flag_value(True) == "true"
  assert ablate.flag_value(False) == "false"
  assert ablate.flag_value(3) == "3"
  assert ablate.flag_value(1e-4) == "0.0001"
  assert ablate.flag_value(("train", "test")) == "('train', 'test')"
  assert ablate.flag_value(["train"]) == "('train',)"
  assert ablate.flag_value("runs/a b") == "runs/a b"
  with pytest.raises(ValueError, match="None cannot be passed"):
    ablate.flag_value(None)


def test_launch_command_for_a_variant():
  cmd = ablate.launch_command(
      "configs/icons.py", "runs/icons_attention/before",
      {"model.attention": "before", "train.plots": False, "data.eval_splits": ("heldout",)},
      [("train.steps", "300")], extra=["--compilation_cache="])
  assert cmd == ["launch.py", "--config=configs/icons.py", "--workdir=runs/icons_attention/before",
                 "--config.model.attention=before", "--config.train.plots=false",
                 "--config.data.eval_splits=('heldout',)", "--config.train.steps=300",
                 "--compilation_cache="]
  assert ablate.shell_command(cmd) == (
      "python launch.py --config=configs/icons.py --workdir=runs/icons_attention/before "
      "--config.model.attention=before --config.train.plots=false "
      "'--config.data.eval_splits=('\"'\"'heldout'\"'\"',)' --config.train.steps=300 "
      "--compilation_cache=")
  evaluate = ablate.launch_command("configs/characters.py", "runs/c/kl", {"eval.metric": "kl"},
                                   evaluate=True)
  assert evaluate == ["launch.py", "--config=configs/characters.py", "--workdir=runs/c/kl",
                      "--mode=evaluate", "--config.eval.metric=kl"]


def test_set_overrides_come_last_and_win():
  cmd = ablate.launch_command(_config_path("lenet_siamese"), "/tmp/runs/x",
                              {"train.steps": 4000}, ablate.parse_sets(["train.steps=7"]))
  assert ablate.child_config(cmd).train.steps == 7


def test_parse_sets():
  assert ablate.parse_sets(["train.steps=300", "--config.eval.ks=(1, 5)"]) == \
      [("train.steps", "300"), ("eval.ks", "(1, 5)")]
  with pytest.raises(ValueError, match="expected KEY=VALUE"):
    ablate.parse_sets(["train.steps"])


def test_child_config_refuses_unknown_keys_before_launching():
  cmd = ablate.launch_command(_config_path("icons"), "/tmp/runs/x", {}, [("model.nope", "1")])
  with pytest.raises(ValueError, match="launch.py would refuse these flags"):
    ablate.child_config(cmd)


# --------------------------------------------------------------------------------- results


def _results():
  R = ablate.Result
  return [
      R(Variant("none", {"model.attention": "none"}),
        ["launch.py", "--config=configs/icons.py", "--workdir=runs/att/none",
         "--config.model.attention=none"], "ok", exit_code=0,
        metrics={"verification/accuracy": 0.81234, "verification/recall": 0.5},
        chance={"verification/accuracy": 0.49751}, seconds=312.4, log="runs/att/none/log.txt"),
      R(Variant("after", {"model.attention": "after"}),
        ["launch.py", "--config=configs/icons.py", "--workdir=runs/att/after",
         "--config.model.attention=after"], "failed", detail="sim_jax: error: bad | worse",
        exit_code=2, seconds=9.6, log="runs/att/after/log.txt"),
      R(Variant("mnist", {"data.name": "mnist"}),
        ["launch.py", "--config=configs/x.py", "--workdir=runs/att/mnist"], "not run",
        detail="TFDS dataset 'mnist' is not prepared"),
  ]


def test_markdown_table():
  table = ablate.render_table(_results(), ("verification/accuracy", "verification/recall"),
                              "Ablation `attention`")
  assert table == textwrap.dedent("""\
      ## Ablation `attention`

      | variant | status | `verification/accuracy` | `verification/recall` | seconds | command |
      |---|---|---|---|---|---|
      | none | ok | 0.8123 (0.4975) | 0.5000 | 312 | `python launch.py --config=configs/icons.py --workdir=runs/att/none --config.model.attention=none` |
      | after | failed: exit code 2: sim_jax: error: bad \\| worse (log: runs/att/after/log.txt) | - | - | 10 | `python launch.py --config=configs/icons.py --workdir=runs/att/after --config.model.attention=after` |
      | mnist | not run: TFDS dataset 'mnist' is not prepared | - | - | - | `python launch.py --config=configs/x.py --workdir=runs/att/mnist` |

      Metric cells: value (chance level: the same metric on random embeddings). Commands run from the repository root.
      """)  # noqa: E501


def test_plot_is_a_png(tmp_path):
  path = str(tmp_path / "a.png")
  ablate.write_plot(path, _results(), "verification/accuracy",
                    {"none": [(100, 0.6), (200, 0.81)]})
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_variant_links_each_checkpoint_and_writes_final_metrics(tmp_path):
  source, run = tmp_path / "euclidean", tmp_path / "kl"
  (source / "checkpoints" / "6").mkdir(parents=True)
  (source / "checkpoints" / "6" / "state").write_text("x")
  ablate._link_checkpoints(str(run), str(source))
  ablate._link_checkpoints(str(run), str(source))  # a second time (resume) is fine
  assert os.readlink(run / "checkpoints" / "6") == os.path.join("..", "..", "euclidean",
                                                                "checkpoints", "6")
  assert (run / "checkpoints" / "6" / "state").read_text() == "x"
  # A step the evaluation cannot restore is moved aside (checkpointing.CORRUPT_DIR): that moves
  # the link, and the source run keeps its checkpoint.
  os.rename(run / "checkpoints" / "6", run / "moved_aside")
  assert (source / "checkpoints" / "6" / "state").exists()
  (run / "eval_step6.json").write_text(json.dumps(
      {"step": 6, "metrics": {"retrieval/mrr@5": 0.5}, "chance": {"retrieval/mrr@5": 0.1}}))
  ablate._finish_evaluation(str(run), "euclidean", since=0.0)
  final = json.loads((run / "final_metrics.json").read_text())
  assert final == {"metrics": {"retrieval/mrr@5": 0.5}, "chance": {"retrieval/mrr@5": 0.1},
                   "step": 6, "evaluates": "euclidean"}
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    ablate._link_checkpoints(str(tmp_path / "c"), str(tmp_path / "nothing"))


def test_tfds_dataset_that_is_not_prepared_is_reported(tmp_path):
  from configs import test
  config = apply_overrides(test.get_config(), {"data.name": "mnist",
                                               "data.data_dir": str(tmp_path)})
  reason = ablate.dataset_unavailable(config.data)
  assert reason.startswith("TFDS dataset 'mnist' is not prepared in ") and "tfds build" in reason
  assert ablate.dataset_unavailable(test.get_config().data) == ""  # sim_jax's own builder


# ------------------------------------------------------------------------------ end to end

TINY = '''
from configs import test
from configs.ablation import Variant

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
  run = lambda: subprocess.run(cmd, env=helpers.subprocess_env(), capture_output=True,
                               text=True, timeout=240, cwd=helpers.REPO_ROOT)
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
    for metric in ("retrieval/mrr@5", "knn/accuracy"):
      assert f"{final['metrics'][metric]:.4f} ({final['chance'][metric]:.4f})" in row
    assert f"--workdir={workdir / label}" in row
  with open(workdir / "ablation.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  from PIL import Image
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
  assert [(v["status"], v["metrics"]) for v in summary["variants"]] == \
      [("cached", finals["finetune"]["metrics"]), ("cached", finals["scratch"]["metrics"])]
