"""Shared fixtures: a tiny randomly initialised SE4Lip saved to a temporary file, and the committed speech clip."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from se4lip_features import extract, weights
from se4lip_features.model import ModelConfig, SE4Lip

torch.set_num_threads(1)  # the suite must stay fast on 2 shared CPU cores

DATA = Path(__file__).parent / "data"
SPEECH = DATA / "speech.wav"  # 1.2 s of GRID s1 bbaf2n.mp4 ("bin blue at f"), 16 kHz int16
TINY = ModelConfig(gru_hidden=16, gru_layers=2, embed_dim=32)


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
