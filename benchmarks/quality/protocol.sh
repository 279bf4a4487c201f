#!/usr/bin/env bash
# The SE4Lip paper's own protocol on an identity the starting weights never saw (issue 20, item 3):
#   bash benchmarks/quality/protocol.sh BASE.safetensors [OUT]
# BASE must not have seen GRID s1 (the base of the model card: LRW-AR only). Then
# 1. BASE fine-tuned as se4lip-finetune does, on a 4-minute "identity" video of 80 GRID s1 utterances outside
#    the held-out ones (benchmarks/finetune_identity.py --side training), 2 torch threads;
# 2. the landmark probe (and sync) on s1's 60 held-out utterances (benchmarks/quality/heldout.json) for
#    log-mel, Whisper tiny.en, BASE zero-shot, BASE fine-tuned and, for reference, the released weights (which
#    trained on s1's other utterances): OUT/generalise.{json,md}, each LMD against the better baseline.
# The prepared set is read from $DATA/grid_s1 (default /work/data; its prepare command is in the model card),
# the fine-tuning's work (video, prepared data, weights; not committed) goes to $WORK (default /tmp/se4lip-protocol).
# Needs the whisper extra: pip install -e ".[dev,landmarks,whisper]".
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: protocol.sh BASE.safetensors [OUT]}
out=${2:-benchmarks/results/protocol}
data=${DATA:-/work/data}
work=${WORK:-/tmp/se4lip-protocol}
threads=${THREADS:-2}
mkdir -p "$out" "$work"
export OMP_NUM_THREADS=$threads
python benchmarks/finetune_identity.py --init "$base" --side training --n-videos 80 --threads "$threads" \
    --work "$work/finetune" --out "$out/finetune_grid_s1_4min.json"
python benchmarks/quality/generalise.py --threads "$threads" \
    --set "grid_s1=$data/grid_s1:benchmarks/quality/heldout.json" --baselines log-mel whisper-tiny.en \
    --weights "$base" "$work/finetune/finetuned.safetensors" se4lip-grid-s1-melcnn-v1 se4lip-gridlrw-melcnn-v1 \
    --out "$out"
