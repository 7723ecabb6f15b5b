"""How the trainer's jitted step runs on XLA:CPU: compiler options, encoder slices, steps per call.

Everything here is a no-op choice on GPU and TPU (`compiler_options` is None there, the auto
values resolve to 1 slice and 1 step per execution), so a run on an accelerator executes the
plain step. The trainer reaches it through `sim_jax.cpu` only.

  compiler_options(mesh)            XLA:CPU options of the train step (None off CPU)
  resolve_parallel_splits(...)      encoder slices per step (config.train.parallel_splits)
  forward_in_splits(fn, images, ..) the encoder on independent slices, outputs in batch order
  scratch_bytes(compiled)           XLA's per-execution scratch buffer size
  resolve_steps_per_execution(...)  train steps per jitted execution (steps_per_execution)
  execution_sizes(...)              the plan of execution sizes between two steps
  train_steps(step_fn, state, bs)   k steps in one program (an unrolled lax.scan)
  StepExecutor / compile_executor   the compiled one-step and k-step programs behind one call
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from sim_jax import sharding

# XLA:CPU options of the jitted train step (see docs/performance.md; `python bench/xla_flags.py`).
# jaxlib 0.10.2 hands convolutions to YNNPACK by default; in a profile of the ResNet-18 step its
# weight-gradient convolutions and the layout transposes around them took ~70% of the time.
# XLA's own (Eigen) convolutions made that step 1.32x faster (median; min 1.19x) at batch
# 128 x 2 views, measured interleaved in one process. The value is YNNPACK's default list minus
# INDIVIDUAL_CONVOLUTION: dots and reductions stay with YNNPACK.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}

# config.train.parallel_splits=0 ("auto") tries these slice counts, largest first.
AUTO_SPLITS = (4, 2)
# Encoder inputs per batch item (pairs and triplets are flattened, views are two augmentations).
INPUTS_PER_ITEM = {"pairs": 2, "triplets": 3, "views": 2}

# glibc's largest dynamic mmap threshold on 64-bit Linux (DEFAULT_MMAP_THRESHOLD_MAX): a larger
# allocation is always a fresh mmap, so each execution faults all of that scratch buffer in anew.
MMAP_THRESHOLD_MAX = 32 * 2**20
AUTO_STEPS_PER_EXECUTION = 4


def platform_of(mesh: jax.sharding.Mesh) -> str:
  return mesh.devices.flat[0].platform


def waits_for_each_execution(mesh: jax.sharding.Mesh) -> bool:
  """Whether the train loop waits for each execution before dispatching the next: on XLA:CPU with
  several devices in this process (fake devices, `--xla_force_host_platform_device_count`).

  Why: jaxlib 0.10.2's CPU runtime can deadlock when a multi-device program with a collective is
  dispatched while the previous one still runs. Device 0's all-gather then holds an intra-op
  pool thread in its rendezvous, device 1's part never arrives, and XLA aborts after 40 s.
  `python bench/cpu_collective_stall.py` shows it on 2 fake devices: an all-gather step
  dispatched back to back stalled within 200 steps in every run, and waiting for each step ran
  3,000 steps. Fake devices share the host's cores, so the overlap this gives up is small.
  Evaluation needs no such rule: `sharding.map_global_batches` and `eval.search.topk` fetch
  each execution's output to the host before they dispatch the next.
  """
  return platform_of(mesh) == "cpu" and len(mesh.local_devices) > 1


def compiler_options(mesh: jax.sharding.Mesh) -> dict[str, str] | None:
  """`CPU_COMPILER_OPTIONS` when the mesh's devices are CPUs, else None (XLA's defaults)."""
  return CPU_COMPILER_OPTIONS if platform_of(mesh) == "cpu" else None


# ------------------------------------------------------------------------------ encoder slices


def resolve_parallel_splits(config: ml_collections.ConfigDict, *, platform: str,
                            has_batch_norm: bool, inputs_per_device: int) -> tuple[int, str]:
  """The encoder's slice count for `forward_in_splits`, and why (for the log).

  A positive `config.train.parallel_splits` is taken as given (batch norm refused). 0 = auto:
  the largest of `AUTO_SPLITS` that divides each device's encoder inputs, on CPU only (the
  overlap it buys is of XLA:CPU's single-threaded fusions; GPU and TPU kernels use the whole
  chip), and only where it is exact and meaningful: no batch norm, no GradCache.
  """
  requested = config.train.parallel_splits
  if requested > 0:
    if requested > 1 and has_batch_norm:
      raise ValueError(
          f"config.train.parallel_splits={requested}: config.model.name="
          f"{config.model.name!r} has batch norm, whose statistics would be computed per slice "
          f"instead of over the batch; use parallel_splits=1 (or 0, auto) with it")
    return requested, "set in the config"
  if platform != "cpu":
    return 1, f"auto: {platform} kernels already use the whole chip"
  if has_batch_norm:
    return 1, f"auto: {config.model.name} has batch norm"
  if config.train.grad_accum_chunks > 1:
    return 1, "auto: GradCache already runs the encoder in chunks"
  for s in AUTO_SPLITS:
    if inputs_per_device % s == 0:
      return s, (f"auto: CPU, no batch norm; {inputs_per_device} encoder inputs per device "
                 f"in {s} slices")
  return 1, f"auto: {inputs_per_device} encoder inputs per device do not split evenly"


def encoder_inputs_per_device(config: ml_collections.ConfigDict, mesh) -> int:
  """Images the encoder sees per device and step: batch items times `INPUTS_PER_ITEM` (a pool:
  query, true match and data.num_foils foils)."""
  per_item = (2 + int(config.data.num_foils) if config.data.sampler == "pools"
              else INPUTS_PER_ITEM.get(config.data.sampler, 1))
  inputs = config.train.batch_size * per_item
  return inputs // mesh.size


def forward_in_splits(forward_fn: Callable, images: jax.Array, *, splits: int, shards: int = 1,
                      rng=None):
  """`forward_fn(images, rng)` run on `splits` independent slices, outputs back in batch order.

  `forward_fn(x, key) -> (embeddings, aux, new_batch_stats)` is the encoder's forward.
  Why: XLA:CPU (jaxlib 0.10.2) runs each element-wise and layout fusion on one core, while its
  matmuls use them all. Two slices are two independent chains of ops in one jitted program,
  so the thunk executor runs one slice's single-core fusions while the other's matmuls run:
  the same arithmetic keeps more cores busy (docs/performance.md has the measured effect).

  Exact for encoders without batch norm: every op of such an encoder is per example, and the
  loss still sees the whole batch (the slices are re-assembled before it). Batch norm's
  statistics would be per slice, so `resolve_parallel_splits` keeps models that have them at
  one slice (auto) or refuses the explicit value.
  With dropout, slice i draws its masks from `fold_in(rng, i)`: a different draw from the
  same distribution.

  `shards` is the number of devices the batch is sharded over (contiguous blocks of B / shards
  examples). Slice i takes the i-th sub-block of every device's block, so each slice stays
  sharded like the batch and no example moves between devices:
    images [B, ...] -> [shards, splits, m, ...] -> slice i = [:, i] -> [shards * m, ...]
  and every output leaf is put back by the inverse reshape.
  """
  if splits == 1:
    return forward_fn(images, rng)
  b = images.shape[0]
  if b % (shards * splits):
    raise ValueError(f"config.train.parallel_splits={splits}: the batch of {b} encoder inputs "
                     f"does not divide into {splits} slices on each of {shards} device(s)")
  m = b // (shards * splits)
  blocks = images.reshape((shards, splits, m) + images.shape[1:])
  outs = []
  for i in range(splits):
    key = None if rng is None else jax.random.fold_in(rng, i)
    x = blocks[:, i].reshape((shards * m,) + images.shape[1:])
    outs.append(forward_fn(x, key))

  def merge(*leaves):
    y = jnp.stack([v.reshape((shards, m) + v.shape[1:]) for v in leaves], axis=1)
    return y.reshape((b,) + leaves[0].shape[1:])

  emb = merge(*(o[0] for o in outs))
  aux = jax.tree.map(merge, *(o[1] for o in outs))
  return emb, aux, outs[0][2]  # no batch statistics to merge (see resolve_parallel_splits)


# ---------------------------------------------------------------------- steps per execution


def scratch_bytes(compiled) -> int:
  """XLA's temp (scratch) buffer size of a compiled program, per device; -1 if not reported."""
  memory = compiled.memory_analysis()
  return int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1


def resolve_steps_per_execution(config: ml_collections.ConfigDict, *, platform: str,
                                temp_bytes: int) -> tuple[int, str]:
  """Train steps per jitted execution (`train_steps`), and why (for the log).

  A positive `config.train.steps_per_execution` is taken as given. 0 = auto: on CPU,
  `AUTO_STEPS_PER_EXECUTION` when the one-step program's scratch buffer (`temp_bytes`, from
  XLA's memory analysis) is larger than glibc's mmap threshold, i.e. freshly mapped and
  page-faulted on every execution; 1 otherwise and on GPU / TPU, whose runtimes take scratch
  memory from a pool.
  """
  requested = config.train.steps_per_execution
  if requested > 0:
    return requested, "set in the config"
  if platform != "cpu":
    return 1, f"auto: {platform} takes scratch memory from a pool"
  mib = temp_bytes / 2**20
  if temp_bytes > MMAP_THRESHOLD_MAX:
    return AUTO_STEPS_PER_EXECUTION, (f"auto: CPU, the step's {mib:.0f} MiB scratch buffer is "
                                      f"mapped and faulted in once per execution")
  return 1, f"auto: the step's {mib:.0f} MiB scratch buffer is reused from malloc's heap"


def next_execution_size(step: int, end: int, per_execution: int,
                        is_boundary: Callable[[int], bool]) -> int:
  """Steps the execution starting after `step` takes: `per_execution`, or 1 where that would
  run past `end` or through a step with host work after it (`is_boundary(step)`)."""
  n = per_execution
  if step + n > end or any(is_boundary(s) for s in range(step + 1, step + n)):
    n = 1
  return n


def execution_sizes(start: int, end: int, per_execution: int,
                    is_boundary: Callable[[int], bool]) -> list[int]:
  """How many steps each execution takes to go from step `start` to `end`.

  Executions of `per_execution` steps, except where one would run past `end` or past a step
  with host work after it (`is_boundary(step)`: logging, evaluation, a checkpoint): those
  steps run one at a time, so every boundary ends an execution. E.g. start=0, end=10,
  per_execution=4, boundaries {5, 10} -> [4, 1, 4, 1].
  """
  sizes, step = [], start
  while step < end:
    sizes.append(next_execution_size(step, end, per_execution, is_boundary))
    step += sizes[-1]
  return sizes


def train_steps(step_fn: Callable, state, batches):
  """`n` updates in one execution: `(state, batches [n, batch, ...]) -> (state, metrics)`.

  A `lax.scan` of `step_fn(state, batch) -> (state, metrics)` over the leading axis of
  `batches`; the per-step CLU metrics are merged in the program (averages over the n steps,
  last values of the n-th), so the host sees what n calls of `step_fn` merged would give. The
  same updates as n separate calls (the step's rng is `fold_in(state.rng, state.step)`).
  Why: XLA allocates a program's scratch buffer per execution and, on CPU, glibc maps a fresh
  one each time (it is larger than malloc's mmap threshold), so every page of it is faulted in
  anew; inside one execution the loop body reuses it. ViT-Ti's step maps 3.4 GiB this way
  (docs/performance.md).
  """
  # Unrolled: with jaxlib 0.10.2 a rolled while-loop body of this step ran slower on CPU than
  # separate calls (a by-hand check); unrolled, XLA can also overlap one step's tail with the
  # next one's start. Compile time grows with n (ViT-Ti's 4-step program and the one-step one
  # together: 49 s against 9 s, bench/results/train_step.json).
  state, m = jax.lax.scan(step_fn, state, batches, unroll=True)
  # Merged step by step (CLU's `reduce` is the across-devices merge: it would average the
  # LastValue metrics such as the learning rate instead of keeping the last step's).
  n = jax.tree.leaves(batches)[0].shape[0]
  per_step = [jax.tree.map(lambda x, i=i: x[i], m) for i in range(n)]
  return state, functools.reduce(lambda a, b: a.merge(b), per_step)


def jit_steps(step_fn: Callable, mesh, steps: int = 1):
  """The jitted, state-donating program of `steps` updates (`train_steps` when > 1), compiled
  with this platform's `compiler_options`. With `steps` > 1 it takes a batch stacked
  [steps, batch, ...] (`sharding.steps_to_global`)."""
  fn = step_fn if steps == 1 else functools.partial(train_steps, step_fn)
  return jax.jit(fn, donate_argnums=(0,), compiler_options=compiler_options(mesh))


@dataclasses.dataclass(frozen=True)
class StepExecutor:
  """The compiled programs of a train step: one step, and `per_execution` steps when > 1.

  The loop asks `next_size` how many steps the next call takes and hands that many host
  batches to `run`; logging, evaluation and checkpoints still see every step they ask for.
  """
  mesh: Any
  programs: dict[int, Callable]  # steps per call -> program
  per_execution: int
  why: str
  wait: bool = False  # block until each execution is done (`waits_for_each_execution`)

  def next_size(self, step: int, end: int, is_boundary: Callable[[int], bool]) -> int:
    return next_execution_size(step, end, self.per_execution, is_boundary)

  def run(self, state, host_batches: list):
    """`len(host_batches)` updates in one execution -> `(state, merged metrics)`."""
    n = len(host_batches)
    batch = (sharding.host_to_global(host_batches[0], self.mesh) if n == 1 else
             sharding.steps_to_global(host_batches, self.mesh))
    out = self.programs[n](state, batch)
    return jax.block_until_ready(out) if self.wait else out


def compile_executor(step_fn: Callable, state, global_batch, *, config, mesh) -> StepExecutor:
  """Compiles `step_fn` for `state` and a global batch; with `config.train.steps_per_execution`
  (auto: `resolve_steps_per_execution` on the one-step program's scratch size) k > 1 also the
  k-step program (compiled at its first call)."""
  single = jit_steps(step_fn, mesh).lower(state, global_batch).compile()
  platform = platform_of(mesh)
  temp = max(scratch_bytes(single), 0) if platform == "cpu" else 0  # read on CPU only
  k, why = resolve_steps_per_execution(config, platform=platform, temp_bytes=temp)
  programs = {1: single}
  if k > 1:
    programs[k] = jit_steps(step_fn, mesh, k)
  return StepExecutor(mesh=mesh, programs=programs, per_execution=k, why=why,
                      wait=waits_for_each_execution(mesh))
