#!/usr/bin/env bash
# The generalisation section of benchmarks/quality/REPORT.md, every figure from one command:
#   bash benchmarks/quality/generalisation.sh [NEW_WEIGHTS] [OUT]
# 1. NEW_WEIGHTS fine-tuned as se4lip-finetune would, on a 4-minute "identity" video of 80 GRID s1 utterances
#    outside the held-out ones (2 torch threads: the time is the figure of the 4-minute target);
# 2. sync + landmark probe on every held-out set (grid_s1, lrw_ar, wild, wild2) for log-mel, the previous default,
#    NEW_WEIGHTS and NEW_WEIGHTS fine-tuned;
# 3. level and noise robustness of the previous default and NEW_WEIGHTS on the 60 held-out GRID s1 utterances;
# 4. OUT/REPORT.md from the three (benchmarks/quality/generalisation_report.py).
# The prepared sets are read from $DATA (default /work/data; prepare commands in REPORT.md), the fine-tuning's
# work (its video, prepared data and weights, not committed) goes to $WORK (default /tmp/se4lip-generalisation).
set -euo pipefail
cd "$(dirname "$0")/../.."
new=${1:-se4lip-gridlrw-melcnn-v1}
out=${2:-benchmarks/results/generalisation}
data=${DATA:-/work/data}
work=${WORK:-/tmp/se4lip-generalisation}
previous=se4lip-grid-s1-melcnn-v1
mkdir -p "$out" "$work"
export OMP_NUM_THREADS=2
python benchmarks/finetune_identity.py --init "$new" --side training --n-videos 80 --threads 2 \
    --work "$work/finetune" --out "$out/finetune_grid_s1_4min.json"
python benchmarks/quality/generalise.py --data-root "$data" --threads 2 \
    --weights "$previous" "$new" "$work/finetune/finetuned.safetensors" --out "$out"
python benchmarks/quality/robustness.py --weights "$previous" "$new" --data "$data/grid_s1" \
    --split benchmarks/quality/heldout.json --snr 10 20 30 --threads 2 --out "$out/robustness.json"
python benchmarks/quality/generalisation_report.py "$out"
