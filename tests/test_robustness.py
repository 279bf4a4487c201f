"""analysis.robustness: feature cosine to the nominal level per gain and SNR, and sync at a gain, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from se4lip_features import evaluate


def test_with_noise_has_the_asked_snr():
    from se4lip_features.analysis.robustness import with_noise

    wav = np.sin(np.arange(16000) / 5).astype(np.float32)
    noisy = with_noise(wav, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(wav ** 2) / np.mean((noisy - wav) ** 2))
    assert noisy.dtype == np.float32 and snr == pytest.approx(20.0, abs=0.2)


def test_level_noise_on_the_tiny_model(grid_dataset, extractor):
    from se4lip_features.analysis.robustness import level_noise
    from se4lip_features.training.data import PreparedData

    data = PreparedData(grid_dataset)
    clips = data.clips[:2]
    r = level_noise(extractor, data, clips, gains_db=(-40, 0), snrs_db=(10, 30), sync_gain_db=-30)
    assert list(r["conditions"]) == ["gain -40 dB", "gain 0 dB", "snr 10 dB", "snr 30 dB"]
    assert r["conditions"]["gain 0 dB"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)  # the nominal level itself
    for c in r["conditions"].values():
        assert len(c["per_clip"]) == 2 and c["min_cosine"] <= c["mean_cosine"] <= 1 + 1e-5
    # a log front end without level normalisation moves with the level; more noise moves it further
    assert r["conditions"]["gain -40 dB"]["mean_cosine"] < 0.9999
    assert r["conditions"]["snr 10 dB"]["mean_cosine"] < r["conditions"]["snr 30 dB"]["mean_cosine"]
    assert set(r["sync"]) == {"nominal", "gain -30 dB"}
    assert r["sync"]["nominal"]["n_clips"] == r["sync"]["gain -30 dB"]["n_clips"] == 2
    # each condition's sync is that of sync_set on the same clips at that level, nothing else
    quiet = [(c.id, data.clip_audio(c) * np.float32(10 ** (-30 / 20)), data.clip_lips(c), data.clip_valid(c))
             for c in clips]
    assert r["sync"]["gain -30 dB"] == evaluate.sync_set(extractor.model, quiet, data.fps,
                                                         embed=extractor.embed)["summary"]
