"""One full training step: sim_jax vs the same model, loss, batch and optimizer in PyTorch.

  python bench/train_step.py --quick        # tiny batches, one repeat: checks that it runs
  python bench/train_step.py                # the four workloads below, 3 interleaved repeats
  python bench/train_step.py --workloads=lenet5 --repeats=5

Workloads (issue 10):
  lenet5      LeNet-5, 28x28x1, 256 contrastive pairs (512 images), hinge contrastive, margin 1
  resnet18    ResNet-18 32 px stem, 32x32x3, 128 images x 2 views (256), NT-Xent t = 0.1
  vit_ti      ViT-Ti/4, 32x32x3, 128 images x 2 views (256), NT-Xent t = 0.1
  multiscale  multi-scale encoder (width 32, attention "none"), 64x64x1 icons, P x K = 32 x 4,
              batch-hard triplet

sim_jax's side is the real step: `Trainer(config).jit_train_step()` with `configs/default.py` plus
the overrides of `workload_config`, called on one fixed, already-global batch (the input pipeline
is measured by bench/input_pipeline.py). The PyTorch side builds the same architecture (same
widths, paddings, BN, heads, L2-normalised embedding), the same batch and AdamW (lr 2e-3,
wd 1e-4), and pytorch-metric-learning's ContrastiveLoss(pos_margin=0, neg_margin=1) on the given
pairs, NTXentLoss(0.1), TripletMarginLoss(0.2) + BatchHardMiner. Augmentation is "none" on both
sides (the two views are the same image), embedding diagnostics are off.

Each workload runs in its own subprocess (so peak RSS and thread pools are its own). Inside it, both
frameworks are warmed up (sim_jax: lower + compile, timed: the "compile" column; then one step),
then timed in interleaved repeats (order alternates) of `--steps` steps each, so that load from
other processes on this shared machine hits both alike; in each repeat a framework first takes
`--rewarm` untimed steps (default 1), so its timed steps follow its own step as in a training loop,
not the other framework's (REWARM says why this matters here). Reported per framework: images/s min
/ median over repeats (images = encoder inputs per step), their ratio sim_jax / torch (median over
median, and min over min), the step's FLOPs from XLA's cost analysis and the achieved FLOP/s
relative to a float32 [2048,2048] x [2048,2048] jnp matmul timed in the same subprocess, XLA's temp
buffer size, and the subprocess's peak RSS (both frameworks together). Thread counts:
torch.get_num_threads() and the CPU affinity XLA's thread pool sizes itself to.
Writes JSON (--out) and a markdown table (--md).

Per-framework environments (`--jax_env NAME=VALUE`, `--torch_env NAME=VALUE`, or `--envs=best`
for the winners of bench/allocators.py): the memory allocator is fixed when a process starts,
and sim_jax and PyTorch are fastest under different ones, so then each workload runs sim_jax
and torch in two persistent worker processes (bench/workers.py), each in its own environment,
with the timed rounds interleaved exactly as above; the JSON and the table record each
framework's environment and the malloc libraries really loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> model, image shape, sampler, loss, batch (pairs or images), encoder images per batch
# item, embedding size, input normalisation, steps per timed round (LeNet's step is short).
WORKLOADS = {
    "lenet5": dict(model="lenet5", shape=(28, 28, 1), sampler="pairs", loss="contrastive",
                   batch=256, per_item=2, embedding_dim=64, input_norm="none", steps=5),
    "resnet18": dict(model="resnet18", shape=(32, 32, 3), sampler="views", loss="nt_xent",
                     batch=128, per_item=2, embedding_dim=128, input_norm="imagenet", steps=1),
    "vit_ti": dict(model="vit_ti", shape=(32, 32, 3), sampler="views", loss="nt_xent",
                   batch=128, per_item=2, embedding_dim=128, input_norm="imagenet", steps=1),
    "multiscale": dict(model="multiscale", shape=(64, 64, 1), sampler="pk", loss="triplet",
                       batch=128, per_item=1, embedding_dim=128, input_norm="imagenet", steps=1),
}
# jaxlib 0.10.2's default YNNPACK fusion list (convolutions included), as a --variant value: the
# trainer's step without sim_jax.train.CPU_COMPILER_OPTIONS.
YNN_DEFAULT = ("LIBRARY_FUSION_TYPE_DOT|LIBRARY_FUSION_TYPE_REDUCE|"
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
TARGETS = {"lenet5": 1.0, "resnet18": 0.8, "vit_ti": 1.0, "multiscale": 0.8}

# Untimed steps each framework takes right before its timed steps in every round. Why: on this
# project's VMs (KVM, virtio-balloon free page reporting in 2 MiB blocks) freed memory is handed
# back to the host, and faulting it in again costs about twice the system time (3 GiB after a
# 1-5 s wait: 3.2-3.8 s of system time, against 1.5-1.7 s at best right after a free;
# `python bench/fault_probe.py`). Timed right after the *other* framework's step, a step pays
# that for what it maps anew: sim_jax's ViT-Ti step (3.4 GiB of XLA scratch mapped each step)
# took 6.5-7.3 s there, against 4.6-4.8 s right after its own step (each framework in its own
# process, `bench/results/train_step_vit_workers_norewarm.json`). A training loop runs its steps
# back to back, so one re-warm step per round times what it sees; --rewarm=0 restores the
# earlier protocol.
REWARM = 1
K_PER_CLASS = 4  # pk sampler: examples per class
LR, WD = 2e-3, 1e-4


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------- sim_jax


def workload_config(name: str, batch: int, overrides: dict | None = None):
  """configs/default.py with the workload's model / data / loss / batch (and extra overrides)."""
  sys.path.insert(0, _REPO)
  from configs import default
  w = WORKLOADS[name]
  cfg = default.get_config()
  cfg.unlock()
  cfg.data.name = "digits"  # only its metadata is read (image shape comes from the overrides)
  cfg.data.image_size = w["shape"][0]
  cfg.data.channels = w["shape"][2]
  cfg.data.sampler = w["sampler"]
  cfg.data.augment.name = "none"
  cfg.model.name = w["model"]
  cfg.model.embedding_dim = w["embedding_dim"]
  cfg.model.input_norm = w["input_norm"]
  cfg.model.patch_size = 4
  cfg.model.attention = "none"  # multiscale defaults to "before" (CBAM); the plain encoder here
  cfg.loss.name = w["loss"]
  cfg.loss.squared = False  # pytorch-metric-learning's hinge form
  cfg.loss.margin = 1.0 if w["loss"] == "contrastive" else 0.2
  cfg.loss.mining = "batch_hard"
  cfg.loss.distance = "euclidean"
  cfg.train.batch_size = batch
  cfg.train.log_diagnostics = False
  cfg.optimizer.name = "adamw"
  cfg.optimizer.learning_rate = LR
  cfg.optimizer.weight_decay = WD
  for key, value in (overrides or {}).items():
    node = cfg
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  cfg.lock()
  return cfg


def make_batch(name: str, batch: int, seed: int = 0) -> dict:
  """A host batch in the trainer's wire format (docs/interfaces.md) for the workload's sampler."""
  import numpy as np
  w = WORKLOADS[name]
  rng = np.random.default_rng(seed)
  h, wd, c = w["shape"]
  if w["sampler"] == "pairs":
    labels = rng.integers(0, 10, (batch, 2)).astype(np.int32)
    labels[: batch // 2, 1] = labels[: batch // 2, 0]  # half positive pairs
    return {"image": rng.integers(0, 256, (batch, 2, h, wd, c), dtype=np.uint8),
            "label": labels, "same": (labels[:, 0] == labels[:, 1]).astype(np.int32)}
  if w["sampler"] == "pk":
    labels = np.repeat(np.arange(batch // K_PER_CLASS), K_PER_CLASS).astype(np.int32)
  else:
    labels = rng.integers(0, 10, batch).astype(np.int32)
  return {"image": rng.integers(0, 256, (batch, h, wd, c), dtype=np.uint8), "label": labels,
          "index": np.arange(batch, dtype=np.int32)}


class JaxRunner:
  """The trainer's jitted step on a fixed global batch; `run(n)` takes n steps and blocks."""

  def __init__(self, name: str, batch: int, overrides: dict | None = None):
    import jax

    from sim_jax import sharding, train
    # "xla.<option>" keys are XLA compiler options of this compile (merged over the trainer's
    # own, see sim_jax.train.compiler_options); '|' in their value stands for ',' (which
    # separates --variant overrides).
    overrides = dict(overrides or {})
    xla = {k[4:]: v.replace("|", ",") if isinstance(v, str) else v
           for k, v in list(overrides.items()) if k.startswith("xla.")}
    overrides = {k: v for k, v in overrides.items() if not k.startswith("xla.")}
    self.cfg = workload_config(name, batch, overrides)
    self.trainer = train.Trainer(self.cfg, "/nonexistent")
    self.state = self.trainer.init_state()
    host = make_batch(name, batch)
    self.batch = sharding.host_to_global(host, self.trainer.mesh)
    step = self.trainer.jit_train_step()
    t0 = time.perf_counter()
    lowered = step.lower(self.state, self.batch)
    self.compiled = lowered.compile(compiler_options=xla or None)
    self.compile_s = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # Cost and memory analyses describe one device's partition of the SPMD program: scale by
    # the mesh size (XLA_FLAGS=--xla_force_host_platform_device_count=N runs N CPU devices).
    n_dev = self.trainer.mesh.devices.size
    self.flops = n_dev * float(cost.get("flops", float("nan"))) if cost else float("nan")
    temp = train.scratch_bytes(self.compiled)
    self.temp_bytes = n_dev * temp if temp >= 0 else -1
    # Steps per execution as the trainer picks them (`Trainer.compile_train_steps`): with k > 1
    # every call runs k steps on the batch stacked k times, and `run(n)` rounds n up to a
    # multiple of k. Compile time counts both programs (the trainer compiles both too).
    self.per_execution, self.per_execution_why = train.resolve_steps_per_execution(
        self.cfg, platform=self.trainer.mesh.devices.flat[0].platform, temp_bytes=max(temp, 0))
    if self.per_execution > 1:
      self.batch = sharding.steps_to_global([host] * self.per_execution, self.trainer.mesh)
      t0 = time.perf_counter()
      self.compiled = self.trainer.jit_train_step(self.per_execution).lower(
          self.state, self.batch).compile(compiler_options=xla or None)
      self.compile_s += time.perf_counter() - t0
      temp = train.scratch_bytes(self.compiled)
      self.temp_bytes = n_dev * temp if temp >= 0 else -1
    self._jax = jax
    self.run(1)  # first execution (allocations, thread pool start)

  def run(self, n: int) -> int:
    """At least n steps, in whole executions; returns the steps taken."""
    m = None
    executions = -(-n // self.per_execution)
    for _ in range(executions):
      self.state, m, _ = self.compiled(self.state, self.batch)
    self._jax.block_until_ready((self.state.params, m))
    return executions * self.per_execution

  def loss(self) -> float:
    _, m, _ = self.compiled(self.state, self.batch)
    return float(m.compute()["loss"])


# ------------------------------------------------------------------------------------ PyTorch


def torch_model(name: str):
  """The workload's encoder in PyTorch, layer for layer as sim_jax.models builds it."""
  import torch
  import torch.nn.functional as F  # noqa: N812
  from torch import nn
  w = WORKLOADS[name]
  c = w["shape"][2]

  class Head(nn.Module):
    """input norm -> backbone -> (avg pool) -> Dense E -> L2 normalise (sim_jax's Encoder)."""

    def __init__(self, backbone, features, pool):
      super().__init__()
      self.backbone, self.pool = backbone, pool
      self.embed = nn.Linear(features, w["embedding_dim"])
      mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if c == 3 else \
          ((0.449,), (0.226,))
      self.norm = w["input_norm"] == "imagenet"
      self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1))
      self.register_buffer("std", torch.tensor(std).view(1, c, 1, 1))

    def forward(self, x):
      if self.norm:
        x = (x - self.mean) / self.std
      f = self.backbone(x)
      if self.pool:
        f = f.mean(dim=(2, 3))
      return F.normalize(self.embed(f), dim=1)

  def bn(ch):
    return nn.BatchNorm2d(ch, eps=1e-5, momentum=0.1)

  if name == "lenet5":
    backbone = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return Head(backbone, 84, pool=False)

  if name == "resnet18":
    class Basic(nn.Module):
      def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
          self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

      def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(c, 64, 3, 1, 1, bias=False), bn(64), nn.ReLU()]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
      for j in range(2):
        layers.append(Basic(cin, cout, 2 if i > 0 and j == 0 else 1))
        cin = cout
    return Head(nn.Sequential(*layers), 512, pool=True)

  if name == "multiscale":
    class Block(nn.Module):
      def __init__(self, cin, f):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, f, k, 1, k // 2, bias=False), bn(f), nn.ReLU())
            for k in (1, 3, 5))

      def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)

    wd = 32
    layers = [nn.Conv2d(c, wd, 3, 1, 1, bias=False), bn(wd), nn.ReLU()]
    cin = wd
    for s in range(3):
      layers.append(Block(cin, wd * 2**s))
      cin = 3 * wd * 2**s
      if s < 2:
        layers.append(nn.MaxPool2d(2))
    return Head(nn.Sequential(*layers), cin, pool=True)

  if name == "vit_ti":
    hidden, depth, heads, p = 192, 12, 3, 4

    class Block(nn.Module):
      def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)

      def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
      def __init__(self):
        super().__init__()
        n = (w["shape"][0] // p) ** 2 + 1
        self.patch_embed = nn.Conv2d(c, hidden, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embed = nn.Parameter(torch.randn(1, n, hidden) * 0.02)
        self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden, eps=1e-6)

      def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]

    return Head(ViT(), hidden, pool=False)
  raise ValueError(f"unknown workload {name!r}; expected one of {sorted(WORKLOADS)}")


class TorchRunner:
  """The same step in PyTorch + pytorch-metric-learning; `run(n)` takes n steps."""

  def __init__(self, name: str, batch: int):
    import torch
    from pytorch_metric_learning import losses, miners
    self.torch = torch
    w = WORKLOADS[name]
    self.w = w
    torch.manual_seed(0)
    self.model = torch_model(name).train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WD)
    host = make_batch(name, batch)
    # uint8 NHWC on the wire, as sim_jax receives it; converted inside the step like the trainer.
    self.images = torch.from_numpy(host["image"])
    self.labels = torch.from_numpy(host["label"]).long()
    self.miner = None
    if w["loss"] == "contrastive":
      self.loss_fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
      b = batch
      same = torch.from_numpy(host["same"]).bool()
      a_idx, b_idx = torch.arange(0, 2 * b, 2), torch.arange(1, 2 * b, 2)
      # pml's indices_tuple for pairs: (anchor1, positive, anchor2, negative).
      self.indices = (a_idx[same], b_idx[same], a_idx[~same], b_idx[~same])
      self.labels = self.labels.reshape(-1)
    elif w["loss"] == "nt_xent":
      self.loss_fn = losses.NTXentLoss(temperature=0.1)
      self.labels = torch.arange(batch).repeat(2)
    else:
      self.loss_fn = losses.TripletMarginLoss(margin=0.2)
      self.miner = miners.BatchHardMiner()
    self.step_s = None
    t0 = time.perf_counter()
    self.run(1)
    self.first_step_s = time.perf_counter() - t0

  def _inputs(self):
    x = self.images
    if self.w["sampler"] == "pairs":
      x = x.reshape(-1, *x.shape[2:])
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # NCHW: PyTorch's native CPU layout
    if self.w["sampler"] == "views":
      x = self.torch.cat([x, x])
    return x

  def run(self, n: int) -> int:
    """n steps; returns n (the steps taken, as `JaxRunner.run`)."""
    for _ in range(n):
      emb = self.model(self._inputs())
      if self.miner is not None:
        loss = self.loss_fn(emb, self.labels, self.miner(emb, self.labels))
      elif self.w["loss"] == "contrastive":
        loss = self.loss_fn(emb, self.labels, self.indices)
      else:
        loss = self.loss_fn(emb, self.labels)
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      self.opt.step()
    return n


# ---------------------------------------------------------------------------------- measuring


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
  """Best float32 FLOP/s of an [n, n] x [n, n] jnp matmul (the machine's achievable rate)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def run_workload(name: str, batch: int, repeats: int, steps: int,
                 overrides: dict | None = None, skip_torch: bool = False,
                 matmul_n: int = 2048, variants: dict | None = None,
                 rewarm: int = REWARM) -> dict:
  """Warm both frameworks, then time `repeats` interleaved rounds of `steps` steps each.

  In each round every runner first takes `rewarm` untimed steps, so that its timed steps follow
  its own step as in a training loop, not the other framework's (see REWARM).
  """
  import jax
  import numpy as np
  import torch
  images = batch * WORKLOADS[name]["per_item"]
  jr = JaxRunner(name, batch, overrides)
  tr = None if skip_torch else TorchRunner(name, batch)
  # Variants of sim_jax's config (e.g. bfloat16, remat) timed in the same interleaved rounds, so
  # what a change buys is measured against the base step under the same machine load.
  # A variant the trainer refuses for this workload (parallel_splits with batch norm) is recorded
  # with the trainer's reason instead of stopping the run.
  vr, refused = {}, {}
  for label, o in (variants or {}).items():
    try:
      vr[label] = JaxRunner(name, batch, {**(overrides or {}), **o})
    except ValueError as e:
      refused[label] = {"overrides": o, "refused": str(e)}
  rate = matmul_rate(matmul_n)
  times = {"sim_jax": [], "torch": [], **{f"variant:{k}": [] for k in vr}}
  for r in range(repeats):
    order = [("sim_jax", jr), ("torch", tr), *((f"variant:{k}", v) for k, v in vr.items())]
    if r % 2:
      order.reverse()
    for key, runner in order:
      if runner is None:
        continue
      if rewarm:
        runner.run(rewarm)
      t0 = time.perf_counter()
      taken = runner.run(steps)
      times[key].append((time.perf_counter() - t0) / taken)
  out = {"workload": name, "batch": batch, "images_per_step": images, "steps": steps,
         "repeats": repeats, "rewarm": rewarm, "overrides": overrides or {},
         "sim_jax_steps_taken": int(jr.state.step), "compile_s": jr.compile_s,
         "sim_jax_steps_per_execution": jr.per_execution,
         "sim_jax_steps_per_execution_why": jr.per_execution_why,
         "step_flops": jr.flops, "xla_temp_bytes": jr.temp_bytes,
         "matmul_flops_per_s": rate, "peak_rss_bytes": peak_rss_bytes(),
         "torch_threads": torch.get_num_threads(),
         "xla_cpu_threads": len(os.sched_getaffinity(0)),
         "jax_devices": [str(d) for d in jax.devices()],
         "loss_after": jr.loss()}
  for key, ts in times.items():
    if not ts:
      continue
    ips = images / np.asarray(ts)
    out[key] = {"step_s": ts, "img_per_s_min": float(ips.min()),
                "img_per_s_median": float(np.median(ips))}
  if tr is not None:
    out["torch"]["first_step_s"] = tr.first_step_s
    out["ratio_median"] = out["sim_jax"]["img_per_s_median"] / out["torch"]["img_per_s_median"]
    out["ratio_min"] = out["sim_jax"]["img_per_s_min"] / out["torch"]["img_per_s_min"]
  for k in vr:
    v = out.pop(f"variant:{k}")
    v["speedup_vs_base_median"] = v["img_per_s_median"] / out["sim_jax"]["img_per_s_median"]
    v["speedup_vs_base_min"] = v["img_per_s_min"] / out["sim_jax"]["img_per_s_min"]
    v["overrides"], v["compile_s"] = variants[k], vr[k].compile_s
    v["steps_per_execution"], v["steps_taken"] = vr[k].per_execution, int(vr[k].state.step)
    if tr is not None:
      v["ratio_median"] = v["img_per_s_median"] / out["torch"]["img_per_s_median"]
      v["ratio_min"] = v["img_per_s_min"] / out["torch"]["img_per_s_min"]
    out.setdefault("variants", {})[k] = v
  for k, v in refused.items():
    out.setdefault("variants", {})[k] = v
  step_s = float(np.median(times["sim_jax"]))
  out["sim_jax"]["flops_per_s"] = jr.flops / step_s
  out["sim_jax"]["matmul_fraction"] = jr.flops / step_s / rate
  return out


def run_workload_workers(name: str, batch: int, repeats: int, steps: int,
                         envs: dict[str, dict], overrides: dict | None = None,
                         matmul_n: int = 2048, timeout: float = 1800.0,
                         rewarm: int = REWARM) -> dict:
  """`run_workload`, but sim_jax and torch each in its own worker process and environment.

  `envs` is {"sim_jax": {"name": label, "vars": {VAR: value}, "clear_allocator": bool}, "torch":
  ...}: each worker gets this process's environment (minus GLIBC_TUNABLES / LD_PRELOAD when
  `clear_allocator`) plus `vars`, so each framework can run under its own allocator
  (bench/workers.py). Timed rounds interleave exactly as `run_workload`'s (order alternating).
  Keys are `run_workload`'s; `peak_rss_bytes` is the sim_jax worker's (each framework's own is
  in its entry), and each framework's entry adds per-step system seconds and minor faults.
  """
  import numpy as np

  from bench import workers
  images = batch * WORKLOADS[name]["per_item"]
  specs = [dict(label=fw, framework=fw, workload=name, batch=batch, timeout=timeout,
                overrides=overrides if fw == "sim_jax" else None,
                matmul_n=matmul_n if fw == "sim_jax" else 0,
                env=workers.worker_env(envs[fw].get("vars"), envs[fw].get("clear_allocator")))
           for fw in workers.FRAMEWORKS]
  jw, tw = workers.start_all(specs)
  try:
    samples = {"sim_jax": [], "torch": []}
    for r in range(repeats):
      order = [jw, tw] if r % 2 == 0 else [tw, jw]
      for w in order:
        samples[w.label].append(w.step(steps, rewarm))
    stats = {w.label: w.request("stats") for w in (jw, tw)}
    rss = {k: v["peak_rss_bytes"] for k, v in stats.items()}
    loss = jw.request("loss")["loss"]  # last: JaxRunner.loss() donates (deletes) the state
  finally:
    jw.close()
    tw.close()
  j, t = jw.info, tw.info
  out = {"workload": name, "batch": batch, "images_per_step": images, "steps": steps,
         "repeats": repeats, "rewarm": rewarm, "overrides": overrides or {},
         "sim_jax_steps_taken": stats["sim_jax"]["train_state_step"],
         "compile_s": j["compile_s"], "sim_jax_steps_per_execution": j["steps_per_execution"],
         "step_flops": j["step_flops"], "xla_temp_bytes": j["xla_temp_bytes"],
         "matmul_flops_per_s": j.get("matmul_flops_per_s", float("nan")),
         "peak_rss_bytes": rss["sim_jax"], "torch_threads": t["torch_threads"],
         "xla_cpu_threads": j["affinity"], "jax_devices": j["jax_devices"], "loss_after": loss,
         "environments": {fw: {"name": envs[fw].get("name") or workers.describe_env(
             envs[fw].get("vars")), "vars": envs[fw].get("vars") or {},
             "malloc_libs": w.info["malloc_libs"], "allocator_vars_seen": w.info["env"]}
             for fw, w in (("sim_jax", jw), ("torch", tw))}}
  for fw, ss in samples.items():
    ips = images / np.asarray([x["step_s"] for x in ss])
    out[fw] = {"step_s": [x["step_s"] for x in ss], "img_per_s_min": float(ips.min()),
               "img_per_s_median": float(np.median(ips)),
               "sys_s_median": float(np.median([x["sys_s"] for x in ss])),
               "minflt_median": float(np.median([x["minflt"] for x in ss])),
               "peak_rss_bytes": rss[fw]}
  out["torch"]["first_step_s"] = t["first_step_s"]
  out["ratio_median"] = out["sim_jax"]["img_per_s_median"] / out["torch"]["img_per_s_median"]
  out["ratio_min"] = out["sim_jax"]["img_per_s_min"] / out["torch"]["img_per_s_min"]
  step_s = float(np.median(out["sim_jax"]["step_s"]))
  out["sim_jax"]["flops_per_s"] = j["step_flops"] / step_s
  out["sim_jax"]["matmul_fraction"] = j["step_flops"] / step_s / out["matmul_flops_per_s"]
  return out


def framework_envs(args, name: str) -> dict[str, dict] | None:
  """{framework: environment} for the two-worker mode from --jax_env / --torch_env / --envs;
  None (today's single process) when none of them is given."""
  from bench import workers
  if args.envs:
    if args.jax_env or args.torch_env:
      raise ValueError("--envs=best chooses both environments; do not combine it with "
                       f"--jax_env {args.jax_env} / --torch_env {args.torch_env}")
    if args.envs != "best":
      raise ValueError(f"--envs must be 'best'; got {args.envs!r}")
    from bench import allocators
    path = args.allocators_json
    if not os.path.exists(path):
      raise FileNotFoundError(f"--envs=best reads {path}, which does not exist: run "
                              f"python bench/allocators.py first (or pass --allocators_json)")
    with open(path) as f:
      result = {**json.load(f), "_path": path}
    return {fw: {"name": a, "vars": v, "clear_allocator": True}
            for fw, (a, v) in allocators.best_envs(result, name).items()}
  if not (args.jax_env or args.torch_env):
    return None
  return {"sim_jax": {"vars": workers.parse_env(args.jax_env)},
          "torch": {"vars": workers.parse_env(args.torch_env)}}


def environment() -> dict:
  import flax
  import jax
  import jaxlib
  import optax
  import pytorch_metric_learning
  import torch
  return {"machine": platform.machine(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "torch": torch.__version__,
          "pytorch_metric_learning": pytorch_metric_learning.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          # Inherited by the single-process mode's subprocess: which malloc both frameworks ran.
          "allocator_vars": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "LD_PRELOAD")
                             if k in os.environ},
          "load_avg_at_start": os.getloadavg()}


def _child(args: dict) -> dict:
  return run_workload(**args)


def run_in_subprocess(args: dict, timeout: float) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=_REPO)
  if proc.returncode:
    raise RuntimeError(f"workload {args['name']} failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- reporting


def _fmt_rate(x: float) -> str:
  return f"{x / 1e9:.1f}"


def _allocator_note(env: dict) -> str:
  """The parent's malloc settings (JSON written before they were recorded: nothing)."""
  if "allocator_vars" not in env:
    return ""
  settings = " ".join(f"{k}={v}" for k, v in sorted(env["allocator_vars"].items()))
  return f"Allocator settings of the run: {settings or '(glibc defaults)'}. "


def _env_cell(e: dict) -> str:
  """`name` (`VAR=value ...`) of one framework's worker environment, for the table."""
  settings = " ".join(f"{k}={v}" for k, v in sorted(e.get("vars", {}).items()))
  return f"{e['name']} (`{settings}`)" if settings and settings != e["name"] else e["name"]


def _rewarm_note(result: dict) -> str:
  rewarm = next(iter(result["workloads"]), {}).get("rewarm")  # one --rewarm for the whole run
  if rewarm is None:
    return (" (no untimed re-warm step: a framework's timed step could follow the other "
            "framework's step, the protocol before `--rewarm`)")
  if rewarm == 0:
    return " (`--rewarm=0`: a framework's timed step may follow the other framework's step)"
  return f", each right after {rewarm} untimed step(s) of the same framework (`--rewarm`)"


def _per_execution_note(result: dict) -> str:
  if not any(r.get("sim_jax_steps_per_execution", 1) > 1 for r in result["workloads"]):
    return ""
  return (" sim_jax runs whole executions of its steps per execution (the trainer's "
          "`config.train.steps_per_execution`), so its rounds hold at least that many steps; "
          "images/s are per step taken.")


def markdown(result: dict) -> str:
  env = result["environment"]
  lines = [
      f"Measured {result['date']} on {env['machine']} with {env['affinity']} usable CPU core(s) "
      f"(load average at start {env['load_avg_at_start'][0]:.1f}: the machine was shared), "
      f"jax {env['jax']}, flax {env['flax']}, torch {env['torch']}, pytorch-metric-learning "
      f"{env['pytorch_metric_learning']}. XLA_FLAGS={env['xla_flags'] or '(none)'}. "
      f"{_allocator_note(env)}"
      f"Repeats: {result['repeats']} interleaved rounds of "
      f"{', '.join(str(r['steps']) for r in result['workloads'])} step(s){_rewarm_note(result)}."
      f"{_per_execution_note(result)}",
      "",
      "| workload | images/step | sim_jax steps / execution | sim_jax img/s min / median | "
      "torch img/s min / median | ratio median (min) | target | compile s | step GFLOP | "
      "achieved GFLOP/s (% of matmul) | XLA temp MiB | peak RSS MiB | threads torch / XLA |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  with_envs = any("environments" in r for r in result["workloads"])
  if with_envs:  # two-worker mode: each framework's process environment (bench/workers.py)
    lines[0] += (" Each framework ran in its own worker process with the environment in the "
                 "last column (rounds still interleaved); peak RSS is the sim_jax worker's.")
    lines[2] = lines[2][:-1] + "| environment sim_jax / torch |"
    lines[3] += "---|"
  for r in result["workloads"]:
    j, t = r["sim_jax"], r.get("torch")
    target = TARGETS.get(r["workload"])
    ratio = "n/a" if t is None else f"**{r['ratio_median']:.2f}x** ({r['ratio_min']:.2f}x)"
    met = "" if t is None or target is None else (" met" if r["ratio_median"] >= target
                                                  else " NOT met")
    if r["batch"] != WORKLOADS.get(r["workload"], {}).get("batch"):
      met = f" not assessed (batch {r['batch']}, not {WORKLOADS[r['workload']]['batch']})"
    tcol = "-" if t is None else f"{t['img_per_s_min']:.0f} / {t['img_per_s_median']:.0f}"
    lines.append(
        f"| {r['workload']} | {r['images_per_step']} | "
        f"{r.get('sim_jax_steps_per_execution', 1)} | {j['img_per_s_min']:.0f} / "
        f"{j['img_per_s_median']:.0f} | {tcol} | {ratio} | >= {target}x{met} | "
        f"{r['compile_s']:.1f} | {r['step_flops'] / 1e9:.1f} | "
        f"{_fmt_rate(j['flops_per_s'])} ({100 * j['matmul_fraction']:.0f}% of "
        f"{_fmt_rate(r['matmul_flops_per_s'])}) | {r['xla_temp_bytes'] / 2**20:.0f} | "
        f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['torch_threads']} / {r['xla_cpu_threads']} |")
    if with_envs:
      e = r.get("environments")
      lines[-1] += (" same process |" if e is None else
                    f" {_env_cell(e['sim_jax'])} / {_env_cell(e['torch'])} |")
  variant_rows = [(r, k, v) for r in result["workloads"] for k, v in r.get("variants", {}).items()]
  if variant_rows:
    lines += ["", "sim_jax config variants, timed in the same interleaved rounds as the table "
              "above (`--variant`):", "",
              "| workload | variant | overrides | img/s min / median | speed-up vs base median "
              "(min) | vs torch median (min) |", "|---|---|---|---|---|---|"]
    for r, k, v in variant_rows:
      over = ", ".join(f"{a}={b}" for a, b in v["overrides"].items())
      if "refused" in v:
        lines.append(f"| {r['workload']} | {k} | {over} | refused by the trainer: "
                     f"{v['refused']} | - | - |")
        continue
      vs_torch = (f"**{v['ratio_median']:.2f}x** ({v['ratio_min']:.2f}x)" if "ratio_median" in v
                  else "-")
      over += f" ({v.get('steps_per_execution', 1)} steps / execution)"
      lines.append(f"| {r['workload']} | {k} | {over} | {v['img_per_s_min']:.0f} / "
                   f"{v['img_per_s_median']:.0f} | {v['speedup_vs_base_median']:.2f}x "
                   f"({v['speedup_vs_base_min']:.2f}x) | {vs_torch} |")
  if result.get("note"):
    lines += ["", result["note"]]
  return "\n".join(lines) + "\n"


def write_results(result: dict, out: str, md: str, table: str) -> None:
  """Writes the JSON and its markdown table, and prints the table."""
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  with open(md, "w") as f:
    f.write(table)
  print(table)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--quick", action="store_true", help="batch 8, one repeat of one step")
  p.add_argument("--workloads", default=",".join(WORKLOADS))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=0,
                 help="steps per timed round (0: the workload's default, 5 for LeNet, else 1)")
  p.add_argument("--batch", type=int, default=0, help="override every workload's batch")
  p.add_argument("--rewarm", type=int, default=REWARM,
                 help="untimed steps each framework takes right before its timed steps in every "
                      "round (0: time a step right after the other framework's; see REWARM)")
  p.add_argument("--override", action="append", default=[],
                 help="sim_jax config override key=value (e.g. model.dtype=bfloat16)")
  p.add_argument("--variant", action="append", default=[],
                 help="label:key=value[,key=value]: a sim_jax config variant timed in the same "
                      "interleaved rounds (e.g. bf16:model.dtype=bfloat16); a key xla.<option> "
                      "is an XLA compiler option instead ('|' for ',' in its value), e.g. "
                      f"ynn_conv:xla.xla_cpu_experimental_ynn_fusion_type={YNN_DEFAULT}")
  p.add_argument("--jax_env", action="append", default=[],
                 help="NAME=VALUE set for sim_jax only (repeatable), e.g. "
                      "GLIBC_TUNABLES=glibc.malloc.hugetlb=1: sim_jax and torch then run in two "
                      "worker processes, each in its own environment, rounds still interleaved")
  p.add_argument("--torch_env", action="append", default=[],
                 help="NAME=VALUE set for torch only (repeatable), e.g. "
                      "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
  p.add_argument("--envs", default="", help="'best': each framework in its best allocator "
                 "environment per --allocators_json (bench/allocators.py's per-workload winners)")
  p.add_argument("--allocators_json",
                 default=os.path.join(_REPO, "bench", "results", "allocators.json"))
  p.add_argument("--timeout", type=float, default=1800.0, help="seconds per workload")
  p.add_argument("--out", default=os.path.join(_REPO, "bench", "results", "train_step.json"))
  p.add_argument("--md", default=os.path.join(_REPO, "bench", "results", "train_step.md"))
  return p.parse_args(argv)


def _parse_overrides(items: list[str]) -> dict:
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--override must be key=value; got {item!r}")
    key, value = item.split("=", 1)
    for cast in (int, float):
      try:
        value = cast(value)
        break
      except ValueError:
        pass
    if value in ("True", "False"):
      value = value == "True"
    out[key] = value
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.child:
    print(json.dumps(_child(json.loads(args.child))), flush=True)
    return {}
  if args.quick:
    args.repeats, args.steps, args.batch = 1, 1, args.batch or 8
    args.out = args.out.replace(".json", "_quick.json")
    args.md = args.md.replace(".md", "_quick.md")
  names = [n for n in args.workloads.split(",") if n]
  for n in names:
    if n not in WORKLOADS:
      raise ValueError(f"--workloads names {n!r}; expected some of {sorted(WORKLOADS)}")
  overrides = _parse_overrides(args.override)
  variants = {}
  for v in args.variant:
    label, sep, rest = v.partition(":")
    if not sep or not label:
      raise ValueError(f"--variant must be label:key=value[,key=value]; got {v!r}")
    variants[label] = _parse_overrides(rest.split(","))
  result = {"date": time.strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats,
            "steps": args.steps, "quick": args.quick, "environment": environment(),
            "workloads": []}
  all_envs = {n: framework_envs(args, n) for n in names}  # bad flags fail before any run
  for n in names:
    batch = args.batch or WORKLOADS[n]["batch"]
    steps = args.steps or WORKLOADS[n]["steps"]
    envs = all_envs[n]
    if envs is None:
      r = run_in_subprocess(dict(name=n, batch=batch, repeats=args.repeats, steps=steps,
                                 overrides=overrides, variants=variants, rewarm=args.rewarm),
                            args.timeout)
    elif variants:
      raise ValueError(f"--variant {args.variant} runs in one process with the base step; it "
                       f"cannot be combined with per-framework environments")
    else:
      r = run_workload_workers(n, batch, args.repeats, steps, envs, overrides,
                               timeout=args.timeout, rewarm=args.rewarm)
    print(json.dumps({**{k: r.get(k) for k in ("workload", "ratio_median", "ratio_min",
                                               "compile_s")},
                      **{f"{k} speedup vs base (median, min)": (v["speedup_vs_base_median"],
                                                                v["speedup_vs_base_min"])
                         if "refused" not in v else f"refused: {v['refused']}"
                         for k, v in r.get("variants", {}).items()}}), flush=True)
    result["workloads"].append(r)
  write_results(result, args.out, args.md, markdown(result))
  return result


if __name__ == "__main__":
  main()
