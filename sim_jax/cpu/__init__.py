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
    StepExecutor.run(state, host_batches) -> (state, metrics); with several CPU devices in the
      process it waits for each execution (`waits_for_each_execution(mesh)`: XLA:CPU can
      deadlock on collectives dispatched back to back)

The tuning itself (and the measurements behind it) lives in `sim_jax.cpu.execution`; the fused
kernels the models select on CPU in `sim_jax.cpu.kernels` (their Flax forms in
`sim_jax.models.cpu_ops`); glibc malloc settings in `sim_jax.cpu.malloc`.
"""

import importlib

_EXECUTION = "sim_jax.cpu.execution"
_SUBMODULES = ("execution", "kernels", "malloc")


def __getattr__(name: str):
  # PEP 562: the interface names resolve to `sim_jax.cpu.execution` on first use. Loading this
  # package must not import JAX, because launch.py imports `sim_jax.cpu.malloc` (standard library
  # only) before it may re-execute the process with malloc tunables. `from sim_jax.cpu import
  # malloc` asks this function first: a submodule's name must fall through to the import system.
  if name in _SUBMODULES:
    raise AttributeError(name)
  module = importlib.import_module(_EXECUTION)
  if name.startswith("_") or not hasattr(module, name):
    raise AttributeError(f"module 'sim_jax.cpu' has no attribute {name!r}")
  return getattr(module, name)
