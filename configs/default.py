"""The embedded default: a metric-learning run that works on a fresh machine, nothing downloaded.

A LeNet-5 encoder learns 64-d embeddings of `glyph_symbols` (827 Unicode symbols - arrows,
dingbats, geometric and mathematical symbols - rendered from the 28 fonts matplotlib ships; a class
is a code point, its examples are its renderings in different fonts) with a supervised NT-Xent
objective over class-balanced P x K batches. Every `eval_every` steps it is evaluated by retrieval
(MRR@k, Recall@k, MAP@R) and k-NN classification on held-out renderings of the training classes,
and by zero-shot retrieval on 20% of the classes that training never sees. The dataset is
rendered once (~30 s) into ~/.cache/sim_jax; the run takes a few minutes on 2 CPU cores.

  python launch.py --config=configs/default.py --workdir=runs/default
  python launch.py --config=configs/default.py:small --workdir=runs/small   # a quick run

`python launch.py --config=configs/default.py --mode=config` lists every field with its comment.

Override any field from the command line, e.g. `--config.train.steps=2000`; unknown or ill-typed
fields are refused. Experiment configs import this file and change only what differs.
"""

import ml_collections
from ml_collections import config_dict

from sim_jax.data.config import default_config as data_config
from sim_jax.eval.config import default_config as eval_config
from sim_jax.losses.config import default_config as loss_config
from sim_jax.models.config import default_config as model_config

VARIANTS = ("small",)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default run; `variant` ("small", from `--config=configs/default.py:small`) shrinks it."""
  if variant not in (None, "", *VARIANTS):
    raise ValueError(f"configs/default.py: unknown variant {variant!r}; variants: "
                     f"{', '.join(VARIANTS)} (e.g. --config=configs/default.py:small)")
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameters, data order and augmentation

  config.data = data_config()  # fields: sim_jax/data/config.py
  config.data.name = "glyph_symbols"  # rendered from matplotlib's fonts, no download
  config.data.image_size = 32  # LeNet-5's input size
  config.data.heldout_class_fraction = 0.2  # classes never trained on: zero-shot retrieval
  config.data.sampler = "pk"  # P classes x K examples: every batch has positives and negatives
  config.data.examples_per_class = 4  # K (P = batch_size / K = 32 classes per batch)
  # test: unseen renderings of training classes (queries); train: the k-NN reference set;
  # heldout: unseen classes.
  config.data.eval_splits = ("train", "test", "heldout")
  config.data.augment.name = "glyph"  # affine jitter, stroke thickness, background noise
  config.data.augment.strength = 0.5

  config.model = model_config()  # fields: sim_jax/models/config.py
  config.model.name = "lenet5"
  config.model.embedding_dim = 64
  config.model.input_norm = "none"

  config.loss = loss_config()  # fields: sim_jax/losses/config.py
  config.loss.name = "nt_xent"  # positives = same class (supervised NT-Xent)
  config.loss.temperature = 0.1

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"  # adam | adamw | sgd | lars
  config.optimizer.learning_rate = 2e-3  # peak learning rate
  config.optimizer.schedule = "cosine"  # constant | cosine (after linear warmup)
  config.optimizer.warmup_steps = 50  # linear warmup from 0
  config.optimizer.end_lr_fraction = 0.01  # cosine ends at this fraction of the peak
  config.optimizer.weight_decay = 1e-4  # decoupled (adamw, lars) or L2 (sgd); kernels only
  config.optimizer.b1 = 0.9  # adam(w) first-moment decay
  config.optimizer.b2 = 0.999  # adam(w) second-moment decay
  config.optimizer.momentum = 0.9  # sgd / lars momentum
  config.optimizer.nesterov = False  # sgd / lars Nesterov momentum
  config.optimizer.lars_trust_coefficient = 0.001  # LARS trust ratio coefficient
  config.optimizer.grad_clip_norm = 0.0  # clip by global norm (0 = off)

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1500  # total updates (may change on resume)
  config.train.batch_size = 128  # global batch: images (pk/random), pairs or triplets
  config.train.view_labels = "index"  # views sampler: positives are the two views ("index") or
  #                                     the same class ("class", SupCon-style)
  config.train.log_every = 100  # train metrics + progress/ETA every N steps
  config.train.eval_every = 500  # evaluation every N steps (0 = only at the end)
  config.train.checkpoint_every = 500  # checkpoint every N steps (0 = only at the end)
  config.train.keep_checkpoints = 2  # latest N checkpoints kept (the resume point is one of them)
  config.train.keep_best = 1  # best N by config.eval.best_metric kept too (0 = off)
  config.train.async_checkpoint = True  # save in the background; errors surface at the next save
  config.train.max_nonfinite_skips = 0  # NaN/Inf steps skipped before the run halts (0 = halt)
  config.train.grad_accum_chunks = 1  # > 1: GradCache-style accumulation over this many chunks
  # The encoder runs on this many independent slices of the batch inside the one jitted step,
  # which lets XLA:CPU overlap its single-core fusions; exact without batch norm, refused with
  # it. 0 = auto: 4 (else 2) on CPU for encoders without batch norm, 1 otherwise and on GPU/TPU
  # (docs/performance.md has what it buys per model).
  config.train.parallel_splits = 0
  # Train steps per jitted execution (one program of that many steps, unrolled). On CPU XLA
  # maps the step's scratch buffer anew at each execution and page-faults all of it; with k
  # steps per execution that happens once per k. 0 = auto: 4 on CPU when the step's scratch
  # buffer is larger than glibc's mmap threshold (32 MiB), 1 otherwise and on GPU/TPU.
  # Logging, evaluation and checkpoints still happen at their exact steps
  # (docs/performance.md has what it buys per model).
  config.train.steps_per_execution = 0
  # Cross-batch memory (XBM, sim_jax/losses/memory.py): the loss vectors and labels of the last
  # `size` rows of earlier steps join every all-pairs loss, from the first step >= start_step
  # at which the memory is full. size None = off (a checkpoint cannot change it); else a multiple
  # of the device count, >= the loss vectors of one batch.
  config.train.memory = ml_collections.ConfigDict()
  config.train.memory.size = config_dict.placeholder(int)
  config.train.memory.start_step = 0
  # Adversarial training (sim_jax/adversarial.py): FGSM / PGD examples of the step's own loss
  # replace round(ratio * B) of the batch's B entries; the L-inf radius and step in pixel levels
  # of 0..255. The same attacks give eval.robust_attacks' robust pair accuracy.
  config.train.adversarial = ml_collections.ConfigDict()
  config.train.adversarial.method = "none"  # none | fgsm | pgd
  config.train.adversarial.epsilon = 8.0  # L-inf radius in pixel levels (8 = 8/255)
  config.train.adversarial.steps = 7  # pgd: projected steps
  config.train.adversarial.step_size = 2.0  # pgd: step in pixel levels; steps x step_size >= eps
  config.train.adversarial.ratio = 0.5  # fraction of the batch replaced by adversarial examples
  config.train.log_diagnostics = True  # embedding diagnostics (dense losses only)
  config.train.plots = True  # PNGs at the end: curves, t-SNE, retrieval grid, distances
  config.train.profile_steps = 0  # > 0: write a jax.profiler trace of N steps after step 10

  config.eval = eval_config()  # fields: sim_jax/eval/config.py
  config.eval.protocols = "retrieval,knn,zeroshot"
  config.eval.metric = "cosine"
  config.eval.query_split = "test"
  config.eval.knn_train_split = "train"
  config.eval.ks = (1, 5)
  config.eval.best_metric = "retrieval/mrr@5"

  if variant == "small":
    config.train.steps = 200
    config.train.log_every = 50
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.optimizer.warmup_steps = 20
    config.train.plots = False  # t-SNE and the retrieval grid cost more than the run

  config.lock()
  return config
