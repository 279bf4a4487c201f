"""Shared fixtures: a tiny randomly initialised SE4Lip saved to a temporary file, and the committed speech clip."""

from __future__ import annotations  # tuple[...] annotations on Python 3.7 and 3.8

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from se4lip_features import audio, extract, weights
from se4lip_features.model import ModelConfig, SE4Lip

try:
    import av
except ImportError:  # not installed with Python 3.7, which PyAV has no wheel for: files are read by soundfile there
    av = None
needs_av = pytest.mark.skipif(av is None, reason="needs PyAV, which has no wheel for Python 3.7")

pytest.register_assert_rewrite("adapter_helpers")  # the adapter tests' shared fixtures (a pytest plugin)
torch.set_num_threads(1)  # the suite must stay fast on 2 shared CPU cores
# Training modules and PyAV are imported where used: the runtime tests also run where they are not available.

DATA = Path(__file__).parent / "data"
SPEECH = DATA / "speech.wav"  # 1.2 s of GRID s1 bbaf2n.mp4 ("bin blue at f"), 16 kHz int16
# the paper's STFT + GRU design, tiny: the golden features in tests/data were computed with it
TINY_MODEL = ModelConfig(gru_hidden=16, gru_layers=2, embed_dim=32, front_end="stft", speech_encoder="gru")
GRID = DATA / "grid"  # two GRID s1 utterances (mp4 + word alignments + mediapipe landmarks)
CLIPS = ("bbaf2n", "bbaf3s")


class ReplayDetector:
    """Landmarks recorded once with mediapipe (tests/data/grid/*_mediapipe.npy), so no detector is needed."""

    def __init__(self, no_face=()):
        from se4lip_features.training import lips

        self.scheme = lips.MEDIAPIPE
        self.calls, self.no_face = 0, set(no_face)

    def __call__(self, frames):
        recorded = np.load(GRID / f"{CLIPS[self.calls]}_mediapipe.npy")  # (n, 42, 2): mouth then eye corners
        out = np.full((len(frames), 468, 2), np.nan, np.float32)
        out[:, list(self.scheme.mouth) + list(self.scheme.eye_corners)] = recorded[: len(frames)]
        out[sorted(self.no_face)] = np.nan
        self.calls += 1
        return out

    def close(self):
        pass


def prepare_grid(out, **kw):
    from se4lip_features.training import data

    return data.prepare_videos([GRID / f"{c}.mp4" for c in CLIPS], out, detector=ReplayDetector(no_face=[10, 11]),
                               progress=False, **kw)


def tiny_model(seed: int = 0) -> SE4Lip:
    """A tiny SE4Lip whose parameters come from numpy's seeded generator, not torch's initialisers.

    The golden features in tests/data were computed with ``tiny_model(0)``: numpy's PCG64 stream is
    stable across versions, so they only change when the front end or the extraction changes.
    """
    model = SE4Lip(TINY_MODEL)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            bound = 1.0 / np.sqrt(p.shape[-1]) if p.ndim > 1 else 0.1
            p.copy_(torch.from_numpy(rng.uniform(-bound, bound, p.shape).astype(np.float32)))
        model.speech.spec_mean.fill_(-4.0)  # roughly the log-magnitude statistics of speech
        model.speech.spec_std.fill_(2.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """``tiny_model(0)`` saved in fp32 to a temporary .safetensors (never a fake "pretrained" file)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    weights.save(tiny_model(0), path, fp16=False)
    return path


@pytest.fixture(scope="session")
def extractor(tiny_weights) -> extract.Extractor:
    return extract.load(tiny_weights, device="cpu")


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    """The committed clip as (float32 samples, sample rate)."""
    wav, sr = soundfile.read(SPEECH, dtype="float32")
    return wav, sr


@pytest.fixture(scope="session")
def grid_dataset(tmp_path_factory) -> Path:
    """The two GRID clips prepared as 6 clips of 1 s (frames 10-11 of each video without a face)."""
    root = tmp_path_factory.mktemp("data") / "grid"
    prepare_grid(root, segment_s=1.0)
    return root


def speech_of(seconds):
    """The committed 16 kHz clip repeated to ``seconds``, with a little noise so no two windows are alike."""
    wav, _ = soundfile.read(SPEECH, dtype="float32")
    wav = np.tile(wav, int(np.ceil(seconds * 16000 / len(wav))))[: round(seconds * 16000)]
    return wav + np.random.default_rng(0).normal(0, 1e-3, len(wav)).astype(np.float32)


def push_all(stream, wav, sizes):
    """Push ``wav`` in chunks of the given sizes (cycled), then flush; returns all frames."""
    out, start, k = [], 0, 0
    while start < len(wav):
        n = sizes[k % len(sizes)]
        rows = stream.push(wav[start: start + n])
        assert rows.dtype == np.float32 and rows.shape[1:] == (stream.width, stream.dim)
        out.append(rows)
        start, k = start + n, k + 1
    out.append(stream.flush())
    return np.concatenate(out)


def renderer_folder(root: Path, missing_lms=(5,), n_frames=20):
    """A SyncTalk-style data folder: aud.wav, ori_imgs/<i>.jpg and 68-point <i>.lms of GRID's first n_frames."""
    import av

    from se4lip_features.training import lips

    frames, _ = lips.read_video(GRID / "bbaf2n.mp4")
    wav = audio.load_audio(GRID / "bbaf2n.mp4")
    (root / "ori_imgs").mkdir(parents=True)
    soundfile.write(root / "aud.wav", wav, audio.SAMPLE_RATE)
    recorded = np.load(GRID / "bbaf2n_mediapipe.npy")
    for i, frame in enumerate(frames[:n_frames]):
        with av.open(str(root / "ori_imgs" / f"{i}.jpg"), "w", format="image2") as out:
            stream = out.add_stream("mjpeg")
            stream.width, stream.height, stream.pix_fmt = 360, 288, "yuvj420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        if i in missing_lms:
            continue
        lms = np.repeat(recorded[i, :40].mean(0, keepdims=True), 68, axis=0)
        lms[48:68] = recorded[i, :20]
        lms[36], lms[45] = recorded[i, 40], recorded[i, 41]
        np.savetxt(root / "ori_imgs" / f"{i}.lms", lms, "%f")
    return wav
