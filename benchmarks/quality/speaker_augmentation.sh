#!/usr/bin/env bash
# Issue 20's speaker-augmentation lever, against a control that differs only by it:
#   bash benchmarks/quality/speaker_augmentation.sh [OUT]
# Both continue se4lip-gridlrw-melcnn-v1 for 600 steps on GRID s1 + LRW-AR with its stage-2 recipe (level +-40 dB,
# white noise for half the clips, consistency 10, lr 1e-4); the lever adds vocal-tract-length warps (+-10%), rooms,
# other talkers and low-bit-rate codecs, each for 30% of the clips (training/augment.py). Then sync + landmark probe
# on every held-out set (release, lever, control; log-mel and Whisper tiny.en as baselines) and level/noise
# robustness on the 60 held-out GRID s1 utterances. Measured with 1 torch thread per job, two jobs at a time:
# about 30 minutes per training, 50 and 17 minutes for the two generalise runs, 8 for robustness.
# The prepared sets are read from $DATA (default /work/data), the runs written to $RUNS (default /work/runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-benchmarks/results/levers}
data=${DATA:-/work/data}
runs=${RUNS:-/work/runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
recipe=(--init se4lip-gridlrw-melcnn-v1 --gain-db 40 --noise-p 0.5 --consistency 10 --lr 1e-4 --warmup-steps 50
        --steps 600 --val-every 300)
se4lip-train "$data/grid_s1" "$data/lrw_ar" -o "$runs/aug" "${recipe[@]}" \
    --warp 0.1 --reverb-p 0.3 --babble-p 0.3 --codec-p 0.3
se4lip-train "$data/grid_s1" "$data/lrw_ar" -o "$runs/control" "${recipe[@]}"
sets=(--set "grid_s1=$data/grid_s1:benchmarks/quality/heldout.json" --set "lrw_ar=$data/lrw_ar"
      --set "wild=$data/wild:all")
python benchmarks/quality/generalise.py "${sets[@]}" --baselines log-mel whisper-tiny.en \
    --weights se4lip-gridlrw-melcnn-v1 "$runs/aug/final.safetensors" --out "$out/speaker_augmentation"
python benchmarks/quality/generalise.py "${sets[@]}" --baselines --weights "$runs/control/final.safetensors" \
    --out "$out/control"
python benchmarks/quality/robustness.py --weights se4lip-gridlrw-melcnn-v1 "$runs/control/final.safetensors" \
    "$runs/aug/final.safetensors" --data "$data/grid_s1" --split benchmarks/quality/heldout.json --gains -40 0 \
    --snr 20 --out "$out/robustness.json"
