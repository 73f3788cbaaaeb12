#!/usr/bin/env bash
# The GPU checks, on a machine with one CUDA GPU (about 3 minutes on an H200):
#
#     cd <repo> && uv run bash benchmarks/gpu_check.sh [OUT_DIR]   # default: benchmarks/results/gpu
#
# 1. tests/test_cuda.py: kernels equal their naive references on CUDA, models give the CPU's
#    outputs and stream as they encode, fp16/bf16 autocast stays finite, and every model
#    learns ml-100k through RecBole's trainer with enable_amp + enable_scaler;
# 2. the training setting (fp32, then fp16 autocast + GradScaler, RecBole's AMP) and the
#    inference setting at L = 200 ... 8000, every model against its floor (benchmarks.efficiency);
# 3. the CPU forms of the LRU scan and cross-entropy against their CUDA forms (benchmarks.gpu_paths).
# Each step has a time limit (seconds, below) so that a hang cannot eat the others' time;
# PYTHON (default python) runs everything, LENGTHS overrides the lengths.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results/gpu}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac  # relative to the folder it was called from
cd "$REPO" || exit 2  # where `python -m benchmarks.<name>` finds the package
PY=${PYTHON:-python}
LENGTHS=${LENGTHS:-"200 1000 2000 4000 8000"}
if ! $PY -c "import torch" 2>/dev/null; then
    echo "gpu_check.sh: $PY cannot import torch; run it as 'uv run bash benchmarks/gpu_check.sh'" \
         "or with PYTHON=<the python of your environment>" >&2
    exit 2
fi
if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: $PY sees no CUDA device (torch.cuda.is_available() is False); run it on a" \
         "GPU machine, with PYTHON=<its python> if needed" >&2
    exit 2
fi
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: output to the terminal and OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} at $(date -u +%H:%M:%S)"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, numpy, recbole; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'numpy', numpy.__version__, 'recbole', recbole.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")  # the learning tests in parallel
step tests 240 $PY -m pytest -q -p no:cacheprovider -rA --durations=10 $XDIST tests/test_cuda.py

EFF=(-m benchmarks.efficiency --device cuda --clock wall --lengths $LENGTHS)
step train_fp32 100 $PY "${EFF[@]}" --preset train --out "$OUT/train_fp32" \
    --models SoftmaxSASRec LRURec LinRec ELASTIC ELASTIC@use_imr=False SASRec
step train_fp16 90 $PY "${EFF[@]}" --preset train --amp fp16 --out "$OUT/train_fp16" \
    --models SoftmaxSASRec LRURec LinRec ELASTIC ELASTIC@use_imr=False SASRec
step inference 50 $PY "${EFF[@]}" --preset inference --out "$OUT/inference" \
    --models SoftmaxSASRec LRURec LinRec LinRecBERT ELASTIC SASRec
step gpu_paths 60 $PY -m benchmarks.gpu_paths
