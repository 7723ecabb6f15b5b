#!/usr/bin/env bash
# Issue 30's GPU checks as one prepared call of a lent GPU machine (docs/performance.md, "On a
# GPU"). Nothing here has run on a GPU yet: the dry run below runs the same steps on the CPU.
#
#   bash bench/device_check.sh fetch      # here, once, with network and the test extras: the
#                                         # wheels the machine's image lacks
#                                         # (bench/device_wheels.txt) and the train step's
#                                         # prepared `digits` dataset, into .whl/
#   bash bench/device_check.sh            # there: carry [".whl"], timeout_s 590 (the steps'
#                                         # limits add up to 550 s); the results come back as
#                                         # $OUT/device_check.tgz and $OUT/log.txt
#   bash bench/device_check.sh dry-run    # here: the same steps on the CPU at small N
#   STEPS=train_step bash bench/device_check.sh   # a rerun of some steps only (comma-separated)
#
# A session's 15 minutes of device time hold one full call (a machine's start is a minute or
# two) but not a second: rerun only the steps that failed, with STEPS.
#
# The dry run under the image's versions (CPU jaxlib of the same release), with only packages
# the image lists besides the carried wheels:
#   python3.12 -m venv /tmp/v && /tmp/v/bin/pip install jax==0.11.2 flax optax orbax-checkpoint \
#     chex psutil scikit-learn matplotlib pillow tensorboard six wrapt tqdm pyarrow requests \
#     && /tmp/v/bin/pip install --no-deps .whl/*.whl
#   PYTHON=/tmp/v/bin/python bash bench/device_check.sh dry-run
#
# The image (Python 3.12, jax 0.11.2 with CUDA, torch, flax, optax, orbax; see the device tool's
# KINDS.md) lacks ml-collections, grain, tensorflow-datasets, pytorch-metric-learning and a few
# of their dependencies: about 10 MB of wheels, installed with --no-deps into /tmp/site.
# Steps, each under its own time limit so that one failing step leaves the others:
#   1. the machine: nvidia-smi, JAX's devices and versions                        env.txt
#   2. the trainer's `auto` settings resolved on this backend against the documented picks, and
#      the model forms picked here compiled and run (bench/auto_settings.py)  auto_settings.*
#   3. streaming NT-Xent, SupCon, CLIP and SigLIP at N = 16k, 32k, 64k (D = 128, block 1024),
#      each point against the same subprocess's GEMM rate (bench/loss_scaling.py)  loss_scaling/
#   4. the largest N of streaming NT-Xent and CLIP whose loss + gradient fits 90% of the
#      device's memory by XLA's memory analysis (compile-only)                    loss_scaling/
#   5. the train step, sim_jax on the GPU against PyTorch + pml on CUDA, the four workloads,
#      5 interleaved rounds (bench/train_step.py --platform=cuda --torch_device=cuda)
#                                                                             train_step.*
# sim_jax's trainer imports TensorFlow (through CLU's metric writers), which the image lacks and
# whose wheel is larger than a call may carry (64 MiB). Where `import tensorflow` fails, step 5
# runs with bench/tf_stand_in/ first on PYTHONPATH: TensorBoard's TensorFlow stub, enough for
# those imports; the timed step writes no summaries.
set -u
cd "$(dirname "$0")/.."
mode="${1:-run}"

if [ "$mode" = fetch ]; then
  mkdir -p .whl
  grep -v '^#' bench/device_wheels.txt | while read -r spec kind; do
    [ -z "$spec" ] && continue
    if [ "$kind" = sdist ]; then  # no wheel on PyPI: build one (pure Python)
      "${PYTHON:-python3}" -m pip wheel -q --no-deps "$spec" -w .whl || exit 1
    else
      "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec" || exit 1
    fi
  done
  # The train step's config names the `digits` dataset; only its metadata is read, but the
  # trainer prepares it on first use, which needs TensorFlow: prepare it here, carry it along.
  SIM_JAX_DATA_DIR="$PWD/.whl/sim_jax_data" "${PYTHON:-python3}" -c "
import sys; sys.path.insert(0, '.')
from bench.workloads import WORKLOADS, workload_config
from sim_jax import data
for name in WORKLOADS:
  data.get_info(workload_config(name, 8).data)" || exit 1
  ls .whl
  exit 0
fi

if [ "$mode" = dry-run ]; then
  platform=cpu; torch_device=cpu; n_min=1024; n_max=2048; py="${PYTHON:-python3}"
  train_step_size=(--quick); slower=4  # the CPU compiles and runs each step 4x as long
  out="${OUT:-/tmp/device_check_dry}"
else
  platform=cuda; torch_device=cuda; n_min=16384; n_max=65536; py=python3
  train_step_size=(--repeats=5); slower=1
  out="${OUT:?OUT is set by the device tool}"
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
  fi
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if [ -d .whl/sim_jax_data ]; then export SIM_JAX_DATA_DIR="$PWD/.whl/sim_jax_data"; fi
work="$(mktemp -d)"
mkdir -p "$out" "$work/loss_scaling"
exec > >(tee "$out/log.txt") 2>&1

steps="${STEPS:-auto_settings,loss_scaling,largest_n,train_step}"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log the exit status
  local name="$1" limit=$(($2 * slower)); shift 2
  case ",$steps," in *",$name,"*) ;; *) echo "== $name: not in STEPS"; return ;; esac
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "== $name: exit $? after $((SECONDS - start)) s"
}

{ nvidia-smi 2>&1 | head -20
  JAX_PLATFORMS="$platform" timeout 60 "$py" -c "import jax, flax, optax
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print(jax.devices())"; } > "$work/env.txt" 2>&1
cat "$work/env.txt"
JAX_PLATFORMS="$platform" step auto_settings 100 "$py" bench/auto_settings.py --run_models \
  --out="$work/auto_settings.json" --md="$work/auto_settings.md"
step loss_scaling 110 "$py" bench/loss_scaling.py --platform="$platform" \
  --losses=nt_xent,supcon,clip,siglip --impls=streaming --n_min="$n_min" --n_max="$n_max" \
  --reps=5 --max_seconds=40 --rss_cap_gib=60 --out="$work/loss_scaling/"
budget=$(JAX_PLATFORMS="$platform" "$py" -c "import jax; s = jax.devices()[0].memory_stats(); \
print(round(0.9 * s['bytes_limit'] / 2**30, 1) if s and 'bytes_limit' in s else 1.0)")
step largest_n 100 "$py" bench/loss_scaling.py --platform="$platform" --largest_n_gib="$budget" \
  --losses=nt_xent,clip --impls=streaming --out="$work/loss_scaling/"
stand_in=""
if ! "$py" -c "import tensorflow" > /dev/null 2>&1; then
  stand_in="$PWD/bench/tf_stand_in"
  echo "== no TensorFlow here: the train step imports it from $stand_in"
fi
PYTHONPATH="${stand_in:+$stand_in:}${PYTHONPATH:-}" step train_step 240 "$py" \
  bench/train_step.py --platform="$platform" --torch_device="$torch_device" \
  "${train_step_size[@]}" --out="$work/train_step.json" --md="$work/train_step.md"
tar czf "$out/device_check.tgz" -C "$work" .
echo "== results: $out/device_check.tgz ($(tar tzf "$out/device_check.tgz" | grep -c -v /$) files)"
