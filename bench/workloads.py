"""The four benchmark workloads and the step runners every bench/ script times.

Shared by bench/train_step.py (the side-by-side headline), bench/workers.py (one framework per
process), bench/allocators.py, bench/xla_flags.py, bench/resnet_parts.py, bench/profile_step.py
and bench/ab_formulations.py. It imports no other bench module, so the benches depend on it one
way (bench/README.md has the graph).

Workloads (issue 10):
  lenet5      LeNet-5, 28x28x1, 256 contrastive pairs (512 images), hinge contrastive, margin 1
  resnet18    ResNet-18 32 px stem, 32x32x3, 128 images x 2 views (256), NT-Xent t = 0.1
  vit_ti      ViT-Ti/4, 32x32x3, 128 images x 2 views (256), NT-Xent t = 0.1
  multiscale  multi-scale encoder (width 32, attention "none"), 64x64x1 icons, P x K = 32 x 4,
              batch-hard triplet

`JaxRunner` is sim_jax's real step: `Trainer(config).jit_train_step()` with `configs/default.py`
plus the overrides of `workload_config`, called on one fixed, already-global batch. `TorchRunner`
builds the same architecture in PyTorch (same widths, paddings, BN, heads, L2-normalised
embedding), the same batch and AdamW (lr 2e-3, wd 1e-4), and pytorch-metric-learning's
ContrastiveLoss(pos_margin=0, neg_margin=1) on the given pairs, NTXentLoss(0.1),
TripletMarginLoss(0.2) + BatchHardMiner. Augmentation is "none" on both sides.

torch and pytorch-metric-learning are imported inside `torch_model` / `TorchRunner` only: they are
the optional `bench` extra, and the sim_jax-only benches (profile_step, ab_formulations) run
without them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from configs import default
from sim_jax import cpu, sharding, train
from sim_jax.losses import objective

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
# Workloads timed only on sim_jax's side (bench/ab_formulations.py; no PyTorch twin): seed 004's
# MBConv backbones at the SimCLR stage of configs/embeddings.py (64 pairs of 28x28 gray views).
JAX_ONLY_WORKLOADS = {
    name: dict(model=name, shape=(28, 28, 1), sampler="views", loss="nt_xent", batch=64,
               per_item=2, embedding_dim=128, input_norm="none", steps=1)
    for name in ("mobilenet_v3_small", "efficientnet_b0")
}
ALL_WORKLOADS = {**WORKLOADS, **JAX_ONLY_WORKLOADS}

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
  w = ALL_WORKLOADS[name]
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
  # pytorch-metric-learning's settings, for the fields this loss reads (the trainer refuses a
  # changed field the loss does not read).
  pml = {"squared": False,  # the hinge form
         "margin": 1.0 if w["loss"] == "contrastive" else 0.2,
         "mining": "batch_hard", "distance": "euclidean"}
  reads = objective.spec(w["loss"]).fields
  for key, value in pml.items():
    if key in reads:
      cfg.loss[key] = value
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
  w = ALL_WORKLOADS[name]
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
    # "xla.<option>" keys are XLA compiler options of this compile (merged over the trainer's
    # own, see sim_jax.cpu.compiler_options); '|' in their value stands for ',' (which
    # separates --variant overrides).
    overrides = dict(overrides or {})
    xla = {k[4:]: v.replace("|", ",") if isinstance(v, str) else v
           for k, v in list(overrides.items()) if k.startswith("xla.")}
    overrides = {k: v for k, v in overrides.items() if not k.startswith("xla.")}
    self.cfg = workload_config(name, batch, overrides)
    self.setup = train.make_setup(self.cfg)
    self.state = train.init_state(self.setup)
    host = make_batch(name, batch)
    self.batch = sharding.host_to_global(host, self.setup.mesh)
    step = train.jit_train_step(self.setup)
    t0 = time.perf_counter()
    lowered = step.lower(self.state, self.batch)
    self.compiled = lowered.compile(compiler_options=xla or None)
    self.compile_s = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # Cost and memory analyses describe one device's partition of the SPMD program: scale by
    # the mesh size (XLA_FLAGS=--xla_force_host_platform_device_count=N runs N CPU devices).
    n_dev = self.setup.mesh.devices.size
    self.flops = n_dev * float(cost.get("flops", float("nan"))) if cost else float("nan")
    temp = cpu.scratch_bytes(self.compiled)
    self.temp_bytes = n_dev * temp if temp >= 0 else -1
    # Steps per execution as the trainer picks them (`sim_jax.cpu.compile_executor`): with k > 1
    # every call runs k steps on the batch stacked k times, and `run(n)` rounds n up to a
    # multiple of k. Compile time counts both programs (the trainer compiles both too).
    self.per_execution, self.per_execution_why = cpu.resolve_steps_per_execution(
        self.cfg, platform=cpu.platform_of(self.setup.mesh), temp_bytes=max(temp, 0))
    if self.per_execution > 1:
      self.batch = sharding.steps_to_global([host] * self.per_execution, self.setup.mesh)
      t0 = time.perf_counter()
      self.compiled = train.jit_train_step(self.setup, self.per_execution).lower(
          self.state, self.batch).compile(compiler_options=xla or None)
      self.compile_s += time.perf_counter() - t0
      temp = cpu.scratch_bytes(self.compiled)
      self.temp_bytes = n_dev * temp if temp >= 0 else -1
    self.run(1)  # first execution (allocations, thread pool start)

  def run(self, n: int) -> int:
    """At least n steps, in whole executions; returns the steps taken."""
    m = None
    executions = -(-n // self.per_execution)
    for _ in range(executions):
      self.state, m = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state.params, m))
    return executions * self.per_execution

  def loss(self) -> float:
    _, m = self.compiled(self.state, self.batch)
    return float(m.compute()["loss"])


# ------------------------------------------------------------------------------------ PyTorch


def torch_model(name: str):
  """The workload's encoder in PyTorch, layer for layer as sim_jax.models builds it."""
  import torch  # the optional `bench` extra (module docstring)
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

  def __init__(self, name: str, batch: int, device: str = "cpu"):
    import torch  # the optional `bench` extra (module docstring)
    from pytorch_metric_learning import losses, miners
    self.torch, self.device = torch, torch.device(device)
    w = WORKLOADS[name]
    self.w = w
    torch.manual_seed(0)
    self.model = torch_model(name).to(self.device).train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WD)
    host = make_batch(name, batch)
    # uint8 NHWC on the wire, as sim_jax receives it; converted inside the step like the trainer.
    self.images = torch.from_numpy(host["image"]).to(self.device)
    self.labels = torch.from_numpy(host["label"]).long().to(self.device)
    self.miner = None
    if w["loss"] == "contrastive":
      self.loss_fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
      b = batch
      same = torch.from_numpy(host["same"]).bool().to(self.device)
      a_idx = torch.arange(0, 2 * b, 2, device=self.device)
      b_idx = torch.arange(1, 2 * b, 2, device=self.device)
      # pml's indices_tuple for pairs: (anchor1, positive, anchor2, negative).
      self.indices = (a_idx[same], b_idx[same], a_idx[~same], b_idx[~same])
      self.labels = self.labels.reshape(-1)
    elif w["loss"] == "nt_xent":
      self.loss_fn = losses.NTXentLoss(temperature=0.1)
      self.labels = torch.arange(batch, device=self.device).repeat(2)
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
    """n steps, finished (on a GPU: synchronised); returns n (as `JaxRunner.run`)."""
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
    if self.device.type == "cuda":
      self.torch.cuda.synchronize(self.device)
    return n


# ---------------------------------------------------------------------------------- measuring


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
  """Best float32 FLOP/s of an [n, n] x [n, n] jnp matmul (the machine's achievable rate)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def environment() -> dict:
  """Machine, library versions, XLA_FLAGS and malloc settings of this process, for the JSON."""
  import pytorch_metric_learning  # the optional `bench` extra (module docstring)
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


# ---------------------------------------------------------------------------------- helpers


def interleaved_medians(calls: dict, rounds: int, warm: bool = True) -> dict:
  """{key: median seconds} of the zero-argument `calls` (each returning JAX values), timed to
  completion in `rounds` interleaved rounds, so that every call sees the same machine load; with
  `warm`, each is called once untimed first (its compilation and first-run costs)."""
  if warm:
    for call in calls.values():
      jax.block_until_ready(call())
  times = {key: [] for key in calls}
  for _ in range(rounds):
    for key, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[key].append(time.perf_counter() - start)
  return {key: statistics.median(ts) for key, ts in times.items()}


def write_results(result: dict, out: str, md: str, table: str) -> None:
  """Writes the JSON and its markdown table, and prints the table."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  with open(md, "w") as f:
    f.write(table)
  print(table)


def parse_overrides(items: list[str]) -> dict:
  """["a.b=1", "c=x"] -> {"a.b": 1, "c": "x"}: ints, floats and True / False are cast."""
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
