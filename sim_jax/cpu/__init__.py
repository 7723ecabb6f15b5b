"""sim_jax.cpu: every XLA:CPU-specific choice of the trainer, behind one small interface.

The trainer calls only these names; on GPU and TPU each of them resolves to the plain path
(no compiler options, one encoder slice, one step per execution).

  compiler_options(mesh) -> dict | None
  resolve_parallel_splits(config, *, platform, has_batch_norm, inputs_per_device) -> (n, why)
  encoder_inputs_per_device(config, mesh) -> int
  forward_in_splits(forward_fn, images, *, splits, shards=1, rng=None) -> (emb, aux, stats)
  jit_steps(step_fn, mesh, steps=1) -> jitted program of `steps` updates
  compile_executor(step_fn, state, global_batch, *, config, mesh) -> StepExecutor
    StepExecutor.next_size(step, end, is_boundary) -> steps in the next call
    StepExecutor.run(state, host_batches) -> (state, metrics)

The tuning itself (and the measurements behind it) lives in `sim_jax.cpu.execution`.
"""

from sim_jax.cpu.execution import (
  AUTO_SPLITS,
  AUTO_STEPS_PER_EXECUTION,
  CPU_COMPILER_OPTIONS,
  INPUTS_PER_ITEM,
  MMAP_THRESHOLD_MAX,
  StepExecutor,
  compile_executor,
  compiler_options,
  encoder_inputs_per_device,
  execution_sizes,
  forward_in_splits,
  jit_steps,
  next_execution_size,
  platform_of,
  resolve_parallel_splits,
  resolve_steps_per_execution,
  scratch_bytes,
  train_steps,
)

__all__ = [
  "AUTO_SPLITS",
  "AUTO_STEPS_PER_EXECUTION",
  "CPU_COMPILER_OPTIONS",
  "INPUTS_PER_ITEM",
  "MMAP_THRESHOLD_MAX",
  "StepExecutor",
  "compile_executor",
  "compiler_options",
  "encoder_inputs_per_device",
  "execution_sizes",
  "forward_in_splits",
  "jit_steps",
  "next_execution_size",
  "platform_of",
  "resolve_parallel_splits",
  "resolve_steps_per_execution",
  "scratch_bytes",
  "train_steps",
]
