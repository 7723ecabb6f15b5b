#!/usr/bin/env bash
# Seed 001's hard-mining diagnosis proxy (docs/experiments/characters.md, "Batch-hard mining"):
# configs/characters.py at full data scale, but short runs evaluated on the VALIDATION protocol
# only (validation/mrr@5, the one used to choose; no query / heldout evaluation).
#   bash docs/experiments/characters_hard_mining_proxy.sh NAME STEPS [--config.key=value ...]
# writes runs/characters_proxy/NAME (TensorBoard diagnostics every 50 steps, final_metrics.json).
# The classifier a run starts from (model.init_from) is runs/characters_proxy/<its NAME>.
set -euo pipefail
name=$1; steps=$2; shift 2
export SIM_JAX_FLOORS_CACHE=${SIM_JAX_FLOORS_CACHE:-runs/floors_cache}
mkdir -p runs/characters_proxy
exec python launch.py --config=configs/characters.py --workdir="runs/characters_proxy/$name" \
  --config.train.steps="$steps" --config.train.log_every=50 \
  --config.eval.protocols=validation --config.data.eval_splits="('train', 'test')" "$@"
