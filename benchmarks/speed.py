"""Extraction speed: SE4Lip (each layout) against HuBERT-large and a SyncTalk-AVE-style mel CNN, same speech.

All extractors run in one process, on the same audio (GRID s1 utterances concatenated to ``--seconds``),
with the same thread count, and are timed after a warm-up; the figure is seconds of compute per second
of audio (lower is faster), the best of ``--repeats`` runs taken in turns (see ``timed``). Writes
``speed.json`` (and ``speed.png`` with matplotlib) into ``--out``.

- SE4Lip: ``Extractor.extract`` (front end, windows, GRU, layout), fp32 and the bf16 fast path.
- SE4Lip streaming: ``StreamingExtractor.push`` of 40 ms chunks on ONE thread, per pushed frame.
- HuBERT-large: ``transformers.HubertModel`` built from the ``facebook/hubert-large-ls960-ft`` config
  (written out below, no download) with random weights, which cost what the trained ones do; audio in
  20 s pieces as the renderers' ``hubert.py`` feeds it; fp32 and bf16 autocast.
- AVE-style: the audio encoder SyncTalk's ``ave`` features come from, rebuilt from its description
  (Wav2Lip mel front end + 13-layer 2-D CNN, one 16x80 mel window per video frame; random weights);
  fp32 and bf16 autocast.

    pip install -e ".[benchmarks]"
    python benchmarks/speed.py --weights se4lip-grid-s1-v1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import se4lip_features
from se4lip_features import audio, extract, frames
from se4lip_features.analysis.baselines import MEL_HOP, MEL_N_FFT  # Wav2Lip's hparams
from se4lip_features.model import SE4Lip

HERE = Path(__file__).resolve().parent
DEFAULT_VIDEOS = Path("/work/shared/data/grid_s1/video")
FPS = 25.0


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", default=[None], help="SE4Lip weights: released names or .safetensors "
                   "files (default: random weights of the default config, which cost the same)")
    p.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder of speech videos or audio files")
    p.add_argument("--seconds", type=float, default=60.0, help="audio to extract (default: %(default)g)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per extractor, taken in turns; the best is "
                                                             "reported")
    p.add_argument("--stream-seconds", type=float, default=20.0, help="audio pushed 40 ms at a time (1 thread)")
    p.add_argument("--skip", nargs="*", default=[], choices=["hubert", "ave", "stream"], help="leave these out")
    p.add_argument("--sync-data", type=Path, help="prepared dataset: held-out sync accuracy with each precision")
    p.add_argument("--split", type=Path, help="split.json of the training run, naming the held-out clips")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for speed.json / speed.png")
    return p


def speech(folder: Path, seconds: float) -> np.ndarray:
    """Utterances of ``folder`` (sorted) concatenated, as 16 kHz float32, cut to ``seconds``."""
    parts, total = [], 0
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in audio.AUDIO_SUFFIXES | audio.VIDEO_SUFFIXES):
        wav = audio.load_audio(path)
        parts.append(wav)
        total += len(wav)
        if total >= seconds * audio.SAMPLE_RATE:
            return np.concatenate(parts)[: round(seconds * audio.SAMPLE_RATE)]
    raise SystemExit(f"{folder}: only {total / audio.SAMPLE_RATE:.1f} s of audio, {seconds:g} s asked for")


def timed(jobs: dict, repeats: int, seconds: float) -> dict:
    """Wall times of each job, after one warm-up call each; the repeats go round all the jobs in turn.

    On a shared machine another process only ever adds time, and taking turns spreads a busy spell over
    all the jobs, so the figure reported is the best of the repeats (the median is kept as well).
    """
    times = {name: [] for name in jobs}
    for fn in jobs.values():
        fn()
    for _ in range(repeats):
        for name, fn in jobs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"s_per_s": min(t) / seconds, "median_s_per_s": statistics.median(t) / seconds,
                   "runs_s": [round(x, 4) for x in t]} for name, t in times.items()}


# ----------------------------------------------------------------------------------------------- HuBERT


def hubert_large():
    """HuBERT-large with the architecture of facebook/hubert-large-ls960-ft (its config.json), random weights."""
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, hidden_act="gelu",
        conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_bias=True,
        feat_extract_norm="layer", feat_extract_activation="gelu", do_stable_layer_norm=True,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, layer_norm_eps=1e-5, vocab_size=32,
        apply_spec_augment=False,
    )
    return HubertModel(cfg).eval()


def run_hubert(model, wav: np.ndarray, bf16: bool) -> np.ndarray:
    """last_hidden_state (T50, 1024) of the audio fed in 20 s pieces (320 000 samples), as hubert.py does."""
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(wav), 320000):
            piece = torch.from_numpy(wav[start: start + 320000 + 80])[None]  # the 400 - 320 sample overlap
            out.append(model(piece).last_hidden_state[0].float())
    return torch.cat(out).numpy()


# -------------------------------------------------------------------------------------- AVE-style encoder

class ConvBlock(nn.Module):
    """Conv2d + BatchNorm + ReLU, the input added before the ReLU when ``residual``."""

    def __init__(self, c_in, c_out, kernel, stride, padding, residual=False):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.BatchNorm2d(c_out)
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return torch.relu(y + x if self.residual else y)


class AveStyleEncoder(nn.Module):
    """A (B, 1, 80, 16) mel window -> (B, 512): 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1, 13 conv layers."""

    def __init__(self):
        super().__init__()
        r = {"residual": True}
        self.net = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1), ConvBlock(32, 32, 3, 1, 1, **r), ConvBlock(32, 32, 3, 1, 1, **r),
            ConvBlock(32, 64, 3, (3, 1), 1), ConvBlock(64, 64, 3, 1, 1, **r), ConvBlock(64, 64, 3, 1, 1, **r),
            ConvBlock(64, 128, 3, 3, 1), ConvBlock(128, 128, 3, 1, 1, **r), ConvBlock(128, 128, 3, 1, 1, **r),
            ConvBlock(128, 256, 3, (3, 2), 1), ConvBlock(256, 256, 3, 1, 1, **r),
            ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0),
        )

    def forward(self, mel):
        return self.net(mel).flatten(1)


class AveStyleExtractor:
    """Wav2Lip mel spectrogram (80 frames/s) and one 16-frame window per video frame through the CNN."""

    def __init__(self, batch_size: int):
        self.encoder = AveStyleEncoder().eval()
        self.filters = torch.from_numpy(audio.mel_filterbank(audio.SAMPLE_RATE, MEL_N_FFT, audio.MEL_BANDS,
                                                              audio.MEL_FMIN, audio.MEL_FMAX))
        self.window = torch.hann_window(MEL_N_FFT, periodic=True)
        self.batch_size = batch_size

    def mel(self, wav: np.ndarray) -> torch.Tensor:
        """(T_mel, 80) normalised log-mel: pre-emphasis 0.97, |STFT| 800/200, dB - 20, clip to [-4, 4]."""
        x = torch.from_numpy(wav)
        x = torch.cat([x[:1], x[1:] - 0.97 * x[:-1]])
        spec = torch.stft(x, MEL_N_FFT, MEL_HOP, MEL_N_FFT, self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs()  # (401, T_mel)
        db = 20 * torch.log10(torch.clamp(self.filters @ spec, min=1e-5)) - 20
        return torch.clamp(8 * (db + 100) / 100 - 4, -4, 4).T

    @torch.inference_mode()
    def __call__(self, wav: np.ndarray, bf16: bool = False) -> np.ndarray:
        mel = self.mel(wav)
        n = audio.frame_count(len(wav), FPS)
        starts = np.minimum((80 * np.arange(n) / FPS).astype(int), len(mel) - 16)  # clamped to the end
        out = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for b in range(0, n, self.batch_size):
                idx = torch.from_numpy(starts[b: b + self.batch_size, None] + np.arange(16)[None, :])
                windows = mel[idx].transpose(1, 2)[:, None]  # (B, 1, 80, 16)
                out.append(self.encoder(windows).float())
        return torch.cat(out).numpy()


# ------------------------------------------------------------------------------------------------ SE4Lip


def se4lip(weights: str | None, precision: str) -> extract.Extractor:
    if weights:
        return se4lip_features.load(weights, device="cpu", precision=precision)
    cfg = se4lip_features.load(device="cpu").config  # the default weights' design
    model = SE4Lip(cfg).eval()
    return extract.Extractor(model, {"name": "random", "sha256": ""}, torch.device("cpu"), precision)


def stream_per_frame(extractor, wav: np.ndarray, layout: str) -> dict:
    """Compute per 40 ms push (one frame each, after the start-up), one thread."""
    chunk = round(audio.SAMPLE_RATE / FPS)
    stream = se4lip_features.StreamingExtractor(extractor, fps=FPS, layout=layout)
    stream.push(wav[: chunk * 25])  # warm-up: the first second
    stream.reset()
    times, frames = [], 0
    for start in range(0, len(wav), chunk):
        t0 = time.perf_counter()
        frames += len(stream.push(wav[start: start + chunk]))
        times.append(time.perf_counter() - t0)
    frames += len(stream.flush())
    times = np.asarray(times[round(stream.latency_s * FPS) + 1:])  # pushes that each complete one frame
    return {"ms_per_frame_mean": 1e3 * float(times.mean()), "ms_per_frame_p50": 1e3 * float(np.median(times)),
            "ms_per_frame_p95": 1e3 * float(np.percentile(times, 95)), "frames": frames,
            "latency_ms": 1e3 * stream.latency_s}


def fidelity(exact: extract.Extractor, fast: extract.Extractor, wav: np.ndarray) -> dict:
    """How far the bf16 path and streaming are from the plain fp32 features of the same audio."""
    out = {}
    for layout in frames.LAYOUTS:
        a = exact.extract(wav, audio.SAMPLE_RATE, FPS, layout)
        b = fast.extract(wav, audio.SAMPLE_RATE, FPS, layout)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        stream = se4lip_features.StreamingExtractor(exact, fps=FPS, layout=layout)
        chunk = round(audio.SAMPLE_RATE / FPS)
        streamed = np.concatenate([stream.push(wav[k: k + chunk]) for k in range(0, len(wav), chunk)]
                                  + [stream.flush()])
        out[layout] = {"bf16_cosine_min": float(cos.min()), "bf16_cosine_mean": float(cos.mean()),
                       "bf16_max_abs_diff": float(np.abs(a - b).max()),
                       "bf16_rms_diff": float(np.sqrt(np.mean((a - b) ** 2))),
                       "stream_fp32_max_abs_diff": float(np.abs(streamed - a).max())}
        print(f"fidelity {layout:6s}: bf16 vs fp32 cosine min {cos.min():.5f} mean {cos.mean():.6f}, max |diff| "
              f"{out[layout]['bf16_max_abs_diff']:.4f} (features have unit RMS); streamed fp32 vs offline max |diff| "
              f"{out[layout]['stream_fp32_max_abs_diff']:.1e}", flush=True)
    return out


def sync_accuracy(encoders: dict, data_dir: Path, split: Path | None) -> dict:
    """Held-out SyncNet-style sync accuracy (se4lip_features.evaluate) with each extractor's precision."""
    from se4lip_features import evaluate
    from se4lip_features.training.data import PreparedData

    data = PreparedData(data_dir)
    if split:
        held = set(json.loads(split.read_text())["val"])
        clips = [c for c in data.clips if c.id in held]
    else:
        clips = data.split(60)[1]
    out = {}
    for precision, enc in encoders.items():
        # the speech windows through the fast path
        out[precision] = summary = evaluate.sync_set(enc.model, evaluate.dataset_clips(data, clips), data.fps,
                                                     embed=enc.embed)["summary"]
        print(f"held-out sync, {len(clips)} clips, {precision}: accuracy {summary['accuracy']:.3f}, exact "
              f"{summary['exact_accuracy']:.3f}, frame-level within 1 {summary['frame_within1']:.3f}, confidence "
              f"{summary['mean_confidence']:.4f}", flush=True)
    return out


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    wav = speech(args.videos, args.seconds)
    duration = len(wav) / audio.SAMPLE_RATE
    print(f"{duration:g} s of speech, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}", flush=True)
    jobs = {}
    for weights in args.weights:
        for precision in extract.PRECISIONS:
            enc = se4lip(weights, precision)
            for layout in frames.LAYOUTS:
                jobs[f"se4lip {enc.name} {layout} {precision}"] = (
                    lambda enc=enc, layout=layout: enc.extract(wav, audio.SAMPLE_RATE, FPS, layout))
    if "ave" not in args.skip:
        ave = AveStyleExtractor(batch_size=frames.DEFAULT_BATCH)
        jobs["ave-style fp32"] = lambda: ave(wav)
        jobs["ave-style bf16 autocast"] = lambda: ave(wav, bf16=True)
    if "hubert" not in args.skip:
        hubert = hubert_large()
        jobs["hubert-large fp32"] = lambda: run_hubert(hubert, wav, bf16=False)
        jobs["hubert-large bf16 autocast"] = lambda: run_hubert(hubert, wav, bf16=True)
    rows = timed(jobs, args.repeats, duration)
    del jobs
    for name, row in rows.items():
        print(f"{name:44s} {row['s_per_s']:.4f} s per s of audio (best of {args.repeats}; median "
              f"{row['median_s_per_s']:.4f})", flush=True)

    stream = {}
    if "stream" not in args.skip:
        torch.set_num_threads(1)
        piece = wav[: round(args.stream_seconds * audio.SAMPLE_RATE)]
        for weights in args.weights:
            for precision in extract.PRECISIONS:
                enc = se4lip(weights, precision)
                for layout in frames.LAYOUTS:
                    stream[f"{enc.name} {layout} {precision}"] = r = stream_per_frame(enc, piece, layout)
                    print(f"stream {enc.name} {layout:6s} {precision}: {r['ms_per_frame_mean']:.2f} ms per 40 ms "
                          f"frame (p50 {r['ms_per_frame_p50']:.2f}, p95 {r['ms_per_frame_p95']:.2f}; 1 thread), "
                          f"latency {r['latency_ms']:.0f} ms", flush=True)

    quality = {}
    torch.set_num_threads(args.threads)
    for weights in filter(None, args.weights):
        encoders = {precision: se4lip(weights, precision) for precision in extract.PRECISIONS}
        name = encoders["fp32"].name
        print(name, flush=True)
        quality[name] = {"features": fidelity(encoders["fp32"], encoders["bf16"], wav)}
        if args.sync_data:
            quality[name]["sync"] = sync_accuracy(encoders, args.sync_data, args.split)

    ratios = {}
    for name, row in rows.items():
        if name.startswith("se4lip"):
            ratios[name] = {other: rows[other]["s_per_s"] / row["s_per_s"]
                            for other in rows if not other.startswith("se4lip")}
    print("\nhow many times faster SE4Lip is than each baseline:")
    for name, r in ratios.items():
        print(f"  {name:40s} " + "  ".join(f"{other}: {x:.1f}x" for other, x in r.items()))

    result = {
        "audio_s": duration, "threads": args.threads, "repeats": args.repeats,
        "weights": [w or "random" for w in args.weights],
        "machine": {"processor": platform.processor(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "s_per_s": {name: row["s_per_s"] for name, row in rows.items()}, "runs": rows, "ratios": ratios,
        "stream_1_thread": stream, "fast_path_quality": quality,
        "command": " ".join(["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, args.out / "speed.png", args.threads, duration)
    print(f"\nwrote {args.out / 'speed.json'}")
    return 0


def plot(rows: dict, path: Path, threads: int, duration: float) -> None:
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state
    except ImportError:
        return
    names = list(rows)
    fig = Figure(figsize=(7, 0.35 * len(names) + 1))
    ax = fig.subplots()
    values = [rows[n]["s_per_s"] for n in names]
    ax.barh(names, values, color=["C0" if n.startswith("se4lip") else "C3" for n in names])
    ax.invert_yaxis()
    ax.set(xlabel="seconds of compute per second of audio", title=f"{duration:g} s of speech, {threads} CPU threads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
