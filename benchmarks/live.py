"""Live mode (``--asr`` with se4lip): latency and compute per rendered frame of the renderers' real-time path.

Streams a speech file through ``se4lip_features.adapters.live.LiveASR`` headless, exactly as a patched
``NeRFGUI`` calls it (``warm_up()``, then per frame two ``run_step()`` and one ``get_next_feat()``), for each
weights x layout, and reports

- the algorithmic latency: how much audio after frame i's instant i / 25 s must have arrived before frame i's
  attention window (``--att 2``: frames i-4..i+3) exists, ``LiveASR.latency_s``;
- the compute per rendered frame (the two steps and the window), median and 95th percentile over the file,
  on ``--threads`` CPU threads (and on CUDA with ``--device cuda``);
- the renderers' own ASR latency for comparison: its context is ``(m + r) x 20 ms`` and its warm-up reads
  ``m + r + 8 + 2 x 3`` chunks before the first window (1.2 s and 1.48 s with the defaults ``-m 50 -r 10``).

The windows are checked against the offline path (``se4lip-extract`` of the same file, then the renderers'
window) on every frame. Writes ``live.json`` into ``--out``.

    python benchmarks/live.py --weights se4lip-grid-s1-melcnn-v1 se4lip-grid-s1-v1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from se4lip_features.adapters import common, live

from se4lip_features import audio, extract

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "quality"))
from run import cpu_name  # benchmarks/quality/run.py: the CPU as the quality report records it

DEFAULT_WAV = HERE.parent / "tests" / "data" / "grid" / "bbaf2n.mp4"
RENDERER_M, RENDERER_R = 50, 10  # the renderers' default -m and -r (20 ms chunks)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", default=["se4lip-grid-s1-melcnn-v1"])
    p.add_argument("--layouts", nargs="+", default=["ds", "ave"])
    p.add_argument("--audio", type=Path, default=DEFAULT_WAV, help="speech to stream (any file se4lip reads)")
    p.add_argument("--seconds", type=float, default=20.0, help="the audio repeated to this length")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=HERE / "results")
    return p


def offline_windows(npy: Path, att: int = 2) -> torch.Tensor:
    """(N, 8, D, W): the renderers' offline window of every frame, from a se4lip-extract file."""
    feats = torch.from_numpy(np.load(npy)).permute(0, 2, 1)
    lo, hi = live.ATT_ROWS[att]
    padded = torch.cat([feats.new_zeros(-lo, *feats.shape[1:]), feats, feats.new_zeros(hi, *feats.shape[1:])])
    return torch.stack([padded[i: i + hi - lo] for i in range(len(feats))])


def measure(weights: str, layout: str, wav: Path, device: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="se4lip-live-") as tmp:
        data = Path(tmp)
        shutil.copy(wav, data / common.SOURCE_WAV)  # the "avatar": its training features fix weights and layout
        common.extract(data / common.SOURCE_WAV, data / common.SELF_FEATURES, weights=weights, layout=layout)
        offline = data / "offline.npy"
        extract.extract_file(wav, offline, weights=weights, layout=layout, device=device)
        expected = offline_windows(offline)
        opt = argparse.Namespace(asr_wav=str(wav), asr_play=False, asr_save_feats=False, att=2, fps=50)
        asr = live.LiveASR(opt, common.self_meta(data), data / common.SELF_FEATURES, device=device)
        t0 = time.perf_counter()
        asr.warm_up()
        warm_s = time.perf_counter() - t0
        per_frame, worst = [], 0.0
        for i in range(len(expected)):
            t0 = time.perf_counter()
            asr.run_step()
            asr.run_step()
            window = asr.get_next_feat()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            per_frame.append(time.perf_counter() - t0)
            worst = max(worst, float((window.cpu() - expected[i]).abs().max()))
        asr.stop()
    ms = sorted(1000 * t for t in per_frame)
    return {"weights": asr.extractor.name, "layout": layout, "frames": len(per_frame),
            "latency_ms": round(1000 * asr.latency_s, 1),
            "stream_latency_ms": round(1000 * asr.stream.latency_s, 1),
            "warm_up_steps": asr.warm_up_steps, "warm_up_s": round(warm_s, 3),
            "ms_per_frame_median": round(statistics.median(ms), 2),
            "ms_per_frame_p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "max_abs_diff_to_offline": worst}


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    wav16 = audio.load_audio(args.audio)
    n = round(args.seconds * audio.SAMPLE_RATE)
    results = []
    with tempfile.TemporaryDirectory(prefix="se4lip-live-audio-") as tmp:
        wav = Path(tmp) / "speech.wav"
        sf.write(wav, np.tile(wav16, -(-n // len(wav16)))[:n], audio.SAMPLE_RATE, subtype="FLOAT")
        for weights in args.weights:
            for layout in args.layouts:
                row = measure(weights, layout, wav, args.device)
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    out = {"device": args.device, "threads": args.threads, "seconds": args.seconds, "audio": args.audio.name,
           "machine": cpu_name(), "torch": torch.__version__,
           "renderer_asr": {"m": RENDERER_M, "r": RENDERER_R, "context_ms": (RENDERER_M + RENDERER_R) * 20,
                            "warm_up_ms": (RENDERER_M + RENDERER_R + 8 + 2 * 3) * 20},
           "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("live.json" if args.device == "cpu" else f"live_{args.device.replace(':', '')}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
