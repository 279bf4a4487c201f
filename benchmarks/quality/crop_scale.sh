#!/usr/bin/env bash
# Issue 20's crop lever: lip crops of 1.6 outer-eye-corner distances (jaw and chin in view) against the 1.2 the
# releases are trained on, each continuing se4lip-gridlrw-melcnn-v1 for 600 steps with its stage-2 recipe (as the
# speaker-augmentation lever and its control, benchmarks/quality/speaker_augmentation.sh):
#   bash benchmarks/quality/crop_scale.sh [OUT]
# The wider crops are prepared from the same videos into $DATA16 (default /work/data16); training adapts the
# release's lip encoder to them (se4lip-train records the data's crop scale). Then sync + landmark probe on
# every held-out set, each model on crops of its own scale (the probe reads only the audio features). Measured
# with 1 torch thread per job beside two other jobs: 21 minutes per training, 12 for preparing, 20 per evaluation.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-benchmarks/results/levers}
data=${DATA:-/work/data}
data16=${DATA16:-/work/data16}
runs=${RUNS:-/work/runs}
shared=${SHARED:-../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for s in grid_s1 lrw_ar; do se4lip-prepare "$shared/$s/video" -o "$data16/$s" --crop-scale 1.6; done
se4lip-prepare "${WILD:-/work/wild_src}" -o "$data16/wild" --crop-scale 1.6
se4lip-prepare "${WILD2:-/work/wild2_src}" -o "$data16/wild2" --segment 8 --crop-scale 1.6
recipe=(--init se4lip-gridlrw-melcnn-v1 --gain-db 40 --noise-p 0.5 --consistency 10 --lr 1e-4 --warmup-steps 50
        --steps 600 --val-every 300)
se4lip-train "$data16/grid_s1" "$data16/lrw_ar" -o "$runs/crop16" "${recipe[@]}"
se4lip-train "$data/grid_s1" "$data/lrw_ar" -o "$runs/control" "${recipe[@]}"
for d in "$data16:crop16" "$data:control"; do
    root=${d%%:*} run=${d##*:}
    python benchmarks/quality/generalise.py --baselines --weights "$runs/$run/final.safetensors" \
        --set "grid_s1=$root/grid_s1:benchmarks/quality/heldout.json" --set "lrw_ar=$root/lrw_ar" \
        --set "wild=$root/wild:all" --set "wild2=$root/wild2:all" --out "$out/crop_scale/$run"
done
