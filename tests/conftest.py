"""Shared fixtures: a tiny randomly initialised SE4Lip saved to a temporary file, and the committed speech clip."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from se4lip_features import extract, weights
from se4lip_features.model import ModelConfig, SE4Lip
from se4lip_features.training import data, lips

pytest.register_assert_rewrite("adapter_helpers")  # the adapter tests' shared fixtures (a pytest plugin)
torch.set_num_threads(1)  # the suite must stay fast on 2 shared CPU cores

DATA = Path(__file__).parent / "data"
SPEECH = DATA / "speech.wav"  # 1.2 s of GRID s1 bbaf2n.mp4 ("bin blue at f"), 16 kHz int16
TINY = ModelConfig(gru_hidden=16, gru_layers=2, embed_dim=32)
GRID = DATA / "grid"  # two GRID s1 utterances (mp4 + word alignments + mediapipe landmarks)
CLIPS = ("bbaf2n", "bbaf3s")


class ReplayDetector:
    """Landmarks recorded once with mediapipe (tests/data/grid/*_mediapipe.npy), so no detector is needed."""

    scheme = lips.MEDIAPIPE

    def __init__(self, no_face=()):
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
    return data.prepare_videos([GRID / f"{c}.mp4" for c in CLIPS], out, detector=ReplayDetector(no_face=[10, 11]),
                               progress=False, **kw)


def tiny_model(seed: int = 0) -> SE4Lip:
    """A tiny SE4Lip whose parameters come from numpy's seeded generator, not torch's initialisers.

    The golden features in tests/data were computed with ``tiny_model(0)``: numpy's PCG64 stream is
    stable across versions, so they only change when the front end or the extraction changes.
    """
    model = SE4Lip(TINY)
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
