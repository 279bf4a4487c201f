"""Audio-video offset of each held-out clip measured without any lip encoder: a check on the sync labels.

The sync evaluation counts a clip as right when its predicted offset is within one frame of 0, which
assumes every recording is in sync. This script tests that assumption with acoustic features only: the
landmark probe (the renderers' AudioNet + AudioAttNet, ``se4lip_features.analysis.probe``) is trained on log-mel
features of the training clips to predict the mouth landmarks, and for each held-out clip the predicted
mouth opening (timed by the audio) is cross-correlated with the detected one (timed by the video). The
shift of best correlation is the clip's offset in frames, positive when the audio comes later (the
convention of ``se4lip-eval sync``). Pass SE4Lip sync JSONs to print their offsets beside it.

    python benchmarks/quality/offsets.py --sync /path/sync.json -o offsets.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from se4lip_features.analysis import probe
from se4lip_features.training.data import PreparedData

HERE = Path(__file__).resolve().parent


def best_shift(pred_gap: np.ndarray, true_gap: np.ndarray, valid: np.ndarray, max_shift: int) -> tuple[int, list]:
    """Shift s maximising the correlation of pred[i] with true[i - s] over valid frames; and all correlations."""
    n = len(pred_gap)
    corr = []
    for s in range(-max_shift, max_shift + 1):
        i = np.arange(max(0, s), min(n, n + s))
        keep = valid[i - s]
        corr.append(probe.pearson(pred_gap[i][keep], true_gap[i - s][keep]) or -1.0)
    return int(np.argmax(corr)) - max_shift, [round(c, 4) for c in corr]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/data/grid_s1"), help="prepared dataset")
    p.add_argument("--split", type=Path, default=HERE / "heldout.json", help="JSON whose 'val' ids are held out")
    p.add_argument("--features", default="log-mel", help="feature type of the probe (default: %(default)s)")
    p.add_argument("--sync", type=Path, nargs="*", default=[], help="se4lip-eval sync JSONs to compare with")
    p.add_argument("--max-shift", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, help="JSON output")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    data = PreparedData(args.data)
    train, held = probe.split_clips(data, split_file=args.split)
    targets = probe.Targets.from_data(data)
    label, extractor = probe.feature_extractor(args.features)
    bank = probe.FeatureBank.build(label, extractor, data)
    model, table, mean_shape = probe.train_probe(bank, targets, train, args.seed)
    pred = probe.predict(model, table, bank.rows, held, targets, mean_shape)

    clips, row = {}, 0
    for clip in held:
        frames = probe.clip_frames([clip])
        pred_gap = probe.mouth_gap(pred[row: row + clip.n_frames], targets.gap)
        true_gap = probe.mouth_gap(np.nan_to_num(targets.points[frames]), targets.gap)
        shift, corr = best_shift(pred_gap, true_gap, targets.valid[frames], args.max_shift)
        clips[clip.id] = {"offset": shift, "corr": corr}
        row += clip.n_frames
    others = {path.stem: json.loads(path.read_text())["clips"] for path in args.sync}

    offsets = np.array([c["offset"] for c in clips.values()])
    print(f"{label} probe, {len(held)} held-out clips: offset counts "
          + ", ".join(f"{v:+d}: {n}" for v, n in zip(*np.unique(offsets, return_counts=True))))
    print("| clip | " + " | ".join([label, *others]) + " |")
    for cid, c in clips.items():
        theirs = [others[k][cid]["offset"] for k in others if cid in others[k]]
        if abs(c["offset"]) > 1 or any(abs(o) > 1 for o in theirs):
            print(f"| {cid} | {c['offset']:+d} | " + " | ".join(f"{o:+d}" for o in theirs) + " |")
    if args.out:
        args.out.write_text(json.dumps({"features": label, "seed": args.seed, "max_shift": args.max_shift,
                                        "command": "python benchmarks/quality/offsets.py " + " ".join(
                                            sys.argv[1:] if argv is None else argv),
                                        "clips": clips}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
