#!/usr/bin/env bash
# The GPU checks, on a machine with one CUDA GPU (8 minutes at most, TOTAL_SECONDS=480):
#
#     cd <repo> && uv run bash benchmarks/gpu_check.sh [OUT_DIR]   # default: benchmarks/results/gpu
#
# 1. at once, as concurrent processes (launch-bound work shares one GPU well):
#    - tests/test_cuda.py: Triton kernels equal their references at real sizes, models give the
#      CPU's outputs, compiled == eager, CUDA-graph streaming == step, fp16/bf16 autocast stays
#      finite, every model learns ml-100k through RecBole's trainer with AMP;
#    - one ml-1m epoch per model (benchmarks.accuracy, L = 200, full ranking), from DATA_PATH
#      (default ../shared/datasets, else shared/datasets; skipped if ml-1m is in neither);
# 2. then one at a time (timings): the training setting in fp32 and bf16 autocast and the
#    inference setting at L = 200 ... 8000, every model against its floor and SoftmaxSASRec
#    (benchmarks.efficiency); compile off against on, and the torch kernels
#    (RECBOLE_EFFICIENT_TRITON=0) against the Triton ones, at L = 1000 and 8000; the three forms
#    of the LRU scan (benchmarks.gpu_paths);
# 3. benchmarks.gpu_summary: the targets met or missed, in OUT_DIR/summary.md.
# Each step has a time limit (seconds, below) so that a hang cannot eat the others' time, and no
# step runs past TOTAL_SECONDS from the start (a step left out leaves its setting missing, which
# the summary reports); PYTHON (default python) runs everything, LENGTHS overrides the lengths.
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

TOTAL=${TOTAL_SECONDS:-480}  # the whole script: 8 minutes
DEADLINE=$(( $(date +%s) + TOTAL ))
step() {  # step NAME SECONDS COMMAND...: output to the terminal and OUT/NAME.log
    local name=$1 limit=$2 left=$(( DEADLINE - $(date +%s) ))
    shift 2
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped, the script's $TOTAL s are spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} at $(date -u +%H:%M:%S)"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, numpy, recbole; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'numpy', numpy.__version__, 'recbole', recbole.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")  # the learning tests in parallel
DATA=${DATA_PATH:-}
for candidate in "$REPO/../shared/datasets" "$REPO/shared/datasets"; do
    [ -z "$DATA" ] && [ -f "$candidate/ml-1m/ml-1m.inter" ] && DATA=$candidate
done
OURS=(SoftmaxSASRec LRURec LinRec LinRecBERT ELASTIC)
step tests 240 $PY -m pytest -q -p no:cacheprovider -rA --durations=10 $XDIST tests/test_cuda.py &
if [ -n "$DATA" ]; then
    for model in "${OURS[@]}"; do
        step "ml1m_$model" 240 $PY -m benchmarks.accuracy --models "$model" --dataset ml-1m \
            --data_path "$DATA" --epochs 1 --out "$OUT/ml1m/$model" --gpu_id=0 \
            --MAX_ITEM_LIST_LENGTH=200 --allow_download=False > /dev/null &
    done
else
    echo "== ml-1m epochs skipped: no ml-1m/ml-1m.inter under DATA_PATH, ../shared/datasets or" \
         "shared/datasets"
fi
wait
[ -n "$DATA" ] && cat "$OUT"/ml1m/*/accuracy.md > "$OUT/ml1m.md" 2>/dev/null

TIMED=(SoftmaxSASRec LRURec LinRec ELASTIC ELASTIC@use_imr=False SASRec)
EFF=(-m benchmarks.efficiency --device cuda --clock wall)
step train_fp32 90 $PY "${EFF[@]}" --lengths $LENGTHS --preset train --out "$OUT/train_fp32" \
    --models "${TIMED[@]}"
step inference 60 $PY "${EFF[@]}" --lengths $LENGTHS --preset inference --out "$OUT/inference" \
    --models "${OURS[@]}" SASRec
step train_bf16 90 $PY "${EFF[@]}" --lengths $LENGTHS --preset train --amp bf16 \
    --out "$OUT/train_bf16" --models "${TIMED[@]}"
# what each change gives: compile off (variants of the same run), Triton off (a run of its own)
step compile_off 60 $PY "${EFF[@]}" --lengths 1000 8000 --preset train \
    --out "$OUT/ablation_compile" --models SoftmaxSASRec LRURec LRURec@compile=False LinRec \
    LinRec@compile=False ELASTIC ELASTIC@compile=False
step triton_off 60 env RECBOLE_EFFICIENT_TRITON=0 $PY "${EFF[@]}" --lengths 1000 8000 \
    --preset train --out "$OUT/ablation_torch_kernels" --models SoftmaxSASRec LRURec LinRec ELASTIC
step gpu_paths 45 $PY -m benchmarks.gpu_paths --lengths 1000 8000
$PY -m benchmarks.gpu_summary "$OUT"
