"""Level and noise robustness of SE4Lip weights: feature cosine to the nominal level per gain and SNR, sync at -30 dB.

For the held-out utterances (``--split``; ``--max-clips`` takes the first N of them), each weights file's features
(layout ds, every frame x sub-step vector) at gains -40..0 dB and in white noise at ``--snr`` dB are compared
with the features of the audio as recorded (se4lip_features.analysis.robustness.level_noise); the mean and the
worst clip's mean cosine are reported per condition, and the sync accuracy (SyncNet-style, the weights' own lip
encoder) at nominal level and at -30 dB. Writes ``--out`` (JSON) and the same name with .png (cosine vs gain,
one line per weights; SNR conditions as points on the right).

    python benchmarks/quality/robustness.py --weights se4lip-grid-s1-melcnn-v1 se4lip-gridlrw-melcnn-v1 \
        --data /work/data/grid_s1 --split benchmarks/quality/heldout.json --snr 10 20 30 --threads 2 \
        --out benchmarks/results/generalisation/robustness.json

benchmarks/results/generalisation/robustness.{json,png} come from that command, run by
``benchmarks/quality/generalisation.sh``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from se4lip_features import extract
from se4lip_features.analysis import probe
from se4lip_features.analysis.robustness import GAINS_DB, level_noise
from se4lip_features.training.data import PreparedData


def plot(results: dict, path: Path) -> None:
    """Mean cosine to the nominal features against gain (left) and SNR (right), one line per weights."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or state

    fig = Figure(figsize=(10, 3.8))
    (ax1, ax2) = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]}, sharey=True)
    for name, r in results.items():
        for ax, kind in ((ax1, "gain"), (ax2, "snr")):
            conds = sorted((c for c in r["conditions"].values() if c["kind"] == kind), key=lambda c: c["db"])
            if conds:
                ax.plot([c["db"] for c in conds], [c["mean_cosine"] for c in conds], "o-", label=name)
                ax.fill_between([c["db"] for c in conds], [c["min_cosine"] for c in conds],
                                [c["mean_cosine"] for c in conds], alpha=0.15)
    for ax in (ax1, ax2):
        ax.axhline(0.95, color="grey", ls=":", lw=1)
    ax1.text(0.01, 0.93, "0.95: within it, features barely move", color="grey", fontsize=8, va="top",
             transform=ax1.get_yaxis_transform())  # x in axes units, y in data units
    ax1.set(xlabel="gain (dB)", ylabel="cosine to nominal-level features",
            title="level (mean; band down to worst clip)")
    ax2.set(xlabel="white-noise SNR (dB)", title="noise")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="names, .safetensors paths or hf://")
    p.add_argument("--data", type=Path, required=True, help="prepared dataset (se4lip-prepare)")
    p.add_argument("--split", type=Path, required=True, help="JSON {'val': [ids]}: the held-out utterances")
    p.add_argument("--max-clips", type=int, help="the first N held-out utterances only")
    p.add_argument("--gains", type=float, nargs="+", default=list(GAINS_DB), help="dB (default: %(default)s)")
    p.add_argument("--snr", type=float, nargs="+", default=[20.0], help="white-noise SNRs, dB (default: 20)")
    p.add_argument("--sync-gain", type=float, default=-30.0, help="gain at which sync is measured (dB)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="JSON to write (the PNG goes beside it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = PreparedData(args.data)
    held = probe.split_clips(data, split_file=args.split)[1][: args.max_clips]
    results = {}
    extractors = [extract.load(w, "cpu") for w in args.weights]
    names = [ex.name for ex in extractors]
    for w, ex in zip(args.weights, extractors):
        label = ex.name if names.count(ex.name) == 1 else str(w)  # two runs' final.safetensors: their paths
        t0 = time.perf_counter()
        results[label] = level_noise(ex, data, held, args.gains, args.snr, args.sync_gain,
                                     progress=sys.stderr.isatty())
        results[label].update(sha256=ex.sha256, run_s=round(time.perf_counter() - t0, 1))
        r = results[label]
        print(label, {k: round(c["mean_cosine"], 3) for k, c in r["conditions"].items()},
              {k: round(s["accuracy"], 3) for k, s in r["sync"].items()}, file=sys.stderr)
    out = {"command": "python benchmarks/quality/robustness.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "data": str(args.data), "split": str(args.split), "clips": [c.id for c in held],
           "threads": args.threads, "weights": results}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
