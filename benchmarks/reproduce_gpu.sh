#!/usr/bin/env bash
# The ml-1m reproduction on one CUDA GPU, in at most 10 minutes (TOTAL_SECONDS=570):
#
#     cd <repo> && uv run bash benchmarks/reproduce_gpu.sh [OUT_DIR]   # default: benchmarks/results/reproduce_gpu
#
# 1. concurrency (~1 min): LRURec and LinRec for one epoch each, one after another, then as two
#    processes at once (benchmarks.reproduce --jobs 2): both wall times in OUT_DIR/concurrency.txt;
# 2. every model of ours under LRURec's protocol (history excluded, selection on validation
#    Recall@10), as concurrent processes (--jobs 5) with LRURec's schedule: validation every 8
#    epochs (~500 training steps on ml-1m at batch 128), early stopping after 10 validations
#    without a better one, at most 500 epochs; each run gets the time left, less the final test;
# 3. if 2 minutes are left: RecBole's protocol for LRURec and SoftmaxSASRec, the same way.
# Runs resume: the same command with the same OUT_DIR in another device window continues each
# unfinished run from its latest checkpoint (a run that stopped on its time budget continues
# too). DATA_PATH (default ../shared/datasets, else shared/datasets, else a download) holds
# ml-1m/; PYTHON (default python) runs everything.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results/reproduce_gpu}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
cd "$REPO" || exit 2
PY=${PYTHON:-python}
if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "reproduce_gpu.sh: $PY sees no CUDA device (or cannot import torch); run it on a GPU" \
         "machine as 'uv run bash benchmarks/reproduce_gpu.sh', or with PYTHON=<its python>" >&2
    exit 2
fi
DATA=${DATA_PATH:-}
for candidate in "$REPO/../shared/datasets" "$REPO/shared/datasets"; do
    [ -z "$DATA" ] && [ -f "$candidate/ml-1m/ml-1m.inter" ] && DATA=$candidate
done
DATA=${DATA:-$REPO/dataset}  # not on disk: fetched by name into the repository's dataset/
mkdir -p "$OUT"
START=$(date +%s)
TOTAL=${TOTAL_SECONDS:-570}
left() { echo $(( START + TOTAL - $(date +%s) )); }
REPRO=(-m benchmarks.reproduce --device cuda --data_path "$DATA")
OURS=(SoftmaxSASRec LRURec LinRec LinRecBERT ELASTIC)

# 1. one after another, then at once (fresh scratch runs: nothing is reused)
scratch=$OUT/concurrency
rm -rf "$scratch"
t0=$(date +%s)
timeout 120 $PY "${REPRO[@]}" --protocols lrurec --models LRURec LinRec --epochs 1 \
    --jobs 1 --time_budget 60 --out "$scratch/one_after_another" > "$OUT/concurrency.log" 2>&1
t1=$(date +%s)
timeout 120 $PY "${REPRO[@]}" --protocols lrurec --models LRURec LinRec --epochs 1 \
    --jobs 2 --time_budget 60 --out "$scratch/at_once" >> "$OUT/concurrency.log" 2>&1
t2=$(date +%s)
echo "LRURec + LinRec, one epoch each on ml-1m (data loading and test included):" \
     "one after another $((t1 - t0)) s, as two processes at once $((t2 - t1)) s" \
    | tee "$OUT/concurrency.txt"

# 2. LRURec's protocol, every model at once
budget=$(( $(left) - 90 ))  # data loading, the final test and the report
if [ "$budget" -gt 60 ]; then
    timeout $(( budget + 80 )) $PY "${REPRO[@]}" --protocols lrurec --models "${OURS[@]}" \
        --jobs 5 --time_budget "$budget" --eval_step=8 --out "$OUT" 2>&1 | tee "$OUT/lrurec.log"
else
    echo "reproduce_gpu.sh: $(left) s left, LRURec's protocol not started"
fi

# 3. RecBole's protocol, if time is left
budget=$(( $(left) - 90 ))
if [ "$budget" -gt 120 ]; then
    timeout $(( budget + 80 )) $PY "${REPRO[@]}" --protocols recbole \
        --models LRURec SoftmaxSASRec --jobs 2 --time_budget "$budget" --eval_step=8 \
        --out "$OUT/recbole_protocol" 2>&1 | tee "$OUT/recbole.log"
fi
echo "reproduce_gpu.sh: done in $(( $(date +%s) - START )) s; tables in $OUT/reproduce.md" \
     "and $OUT/recbole_protocol/reproduce.md"
