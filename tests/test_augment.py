"""Training-audio augmentation: each kind changes what it says and leaves every sound where it was in time."""

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import DATA, TINY_MODEL
from test_train import TINY_TRAIN

from se4lip_features.training import augment
from se4lip_features.training.data import PreparedData
from se4lip_features.training.train import TrainConfig, WindowSampler


@pytest.fixture(scope="module")
def speech():
    wav, sr = sf.read(DATA / "speech.wav", dtype="float32")
    assert sr == 16000
    return wav


def _lag(ref, other, max_lag=2000):
    """The lag (samples, either way) at which ``other`` best matches ``ref``."""
    lags = np.arange(-max_lag, max_lag + 1)
    n = len(ref) - 2 * max_lag
    return int(lags[np.argmax([np.dot(ref[max_lag:max_lag + n], other[max_lag + k:max_lag + k + n]) for k in lags])])


def test_level_spreads_over_gain_db_and_white_noise_is_within_its_snr():
    wav = np.sin(np.arange(16000) / 5).astype(np.float32)
    rng = np.random.default_rng(0)
    peaks = [float(np.abs(augment.augment(wav, rng, gain_db=40.0, noise_p=0.0)).max()) for _ in range(200)]
    assert min(peaks) < 0.02 and max(peaks) > 50  # levels spread over +-40 dB
    noisy = augment.augment(wav, rng, gain_db=0.0, noise_p=1.0)
    snr = 10 * np.log10(np.mean(wav ** 2) / np.mean((noisy - wav) ** 2))
    assert 10 <= snr <= 40


def test_kinds_that_are_off_draw_no_random_numbers(speech):
    # a recipe without rooms, talkers or codecs samples exactly what it sampled before they existed
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    out = augment.augment(speech, a, gain_db=6.0, noise_p=0.5, reverb_p=0.0, babble_p=0.0, codec_p=0.0)
    gain = 10 ** (b.uniform(-6.0, 6.0) / 20)
    if b.random() < 0.5:
        pytest.fail("seed 1 draws noise; pick a seed that does not")
    np.testing.assert_allclose(out, speech * np.float32(gain), rtol=1e-6)
    assert a.random() == b.random()  # both generators at the same place


def test_a_room_keeps_the_direct_sound_first_and_the_level():
    rng = np.random.default_rng(0)
    click = np.zeros(16000, np.float32)
    click[4000] = 1.0
    wet = augment.reverberate(click, rng)
    assert int(np.argmax(np.abs(wet))) == 4000 and np.all(wet[:4000] == pytest.approx(0.0, abs=1e-6))
    assert np.mean(wet ** 2) == pytest.approx(np.mean(click ** 2), rel=1e-4)
    tail = wet[4001:]
    assert np.sum(tail ** 2) > 0.05 * np.sum(wet ** 2)  # a reverberant tail, not the click alone
    early, late = np.sum(tail[:800] ** 2), np.sum(tail[1600:2400] ** 2)
    assert late < early  # and it decays


def test_room_and_talkers_leave_the_speech_in_place(speech):
    rng = np.random.default_rng(1)
    wet = augment.reverberate(speech, rng)
    assert _lag(speech, wet) == 0
    others = [np.roll(speech, 3000)[::-1].copy(), np.random.default_rng(2).standard_normal(9000).astype(np.float32)]
    mixed = augment.babble(speech, others, rng)
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean((mixed - speech) ** 2))
    assert augment.BABBLE_SNR_DB[0] - 0.01 <= snr <= augment.BABBLE_SNR_DB[1] + 0.01
    assert _lag(speech, mixed) == 0 and mixed.dtype == np.float32 and len(mixed) == len(speech)
    assert augment.babble(speech, [np.zeros(100, np.float32)], rng) is speech  # silent talkers add nothing


@pytest.mark.parametrize("encoder,container,rate", [(e, c, r[0]) for e, c, r in augment.CODECS])
def test_a_codec_changes_the_sound_but_not_its_timing(speech, encoder, container, rate):
    pytest.importorskip("av")
    out = augment.codec_roundtrip(speech, encoder, container, rate)
    assert out.shape == speech.shape and out.dtype == np.float32
    assert _lag(speech, out) == 0  # AAC's 1024-sample priming and any other decoder delay removed
    assert np.corrcoef(speech, out)[0, 1] > 0.9
    err = 10 * np.log10(np.mean((out - speech) ** 2) / np.mean(speech ** 2))
    assert -40 < err < -10  # lossy: audibly changed, still the same speech


def test_warp_scales_the_band_and_keeps_its_ends():
    spec = torch.zeros(1, 3, 257)
    spec[..., 50] = 1.0
    np.testing.assert_array_equal(augment.warp_frequency(spec, 1.0), spec)
    up, down = augment.warp_frequency(spec, 1.1), augment.warp_frequency(spec, 0.9)
    assert int(up[0, 0].argmax()) == 55 and int(down[0, 0].argmax()) == 45  # a formant at bin 50 moves by 10 %
    ramp = torch.arange(257.0).expand(2, 257)
    for alpha in (0.8, 0.9, 1.1, 1.2):
        warped = augment.warp_frequency(ramp, alpha)[0]
        assert warped[0] == 0 and warped[-1] == pytest.approx(256.0)  # 0 Hz and Nyquist stay
        assert torch.all(warped[1:] > warped[:-1])  # no bin read twice, none skipped backwards


def test_sampler_applies_each_kind_only_when_asked(grid_dataset):
    data = PreparedData(grid_dataset)
    items = [(data, c) for c in data.clips]
    plain = WindowSampler(items, TINY_TRAIN, TINY_MODEL).batch(np.random.default_rng(0))
    assert plain.warps is None
    cfg = dataclasses.replace(TINY_TRAIN, warp=0.1, reverb_p=1.0, babble_p=1.0, codec_p=1.0)
    batch = WindowSampler(items, cfg, TINY_MODEL).batch(np.random.default_rng(0))
    assert batch.warps.shape == (cfg.clips_per_batch,) and np.all(np.abs(batch.warps - 1) <= 0.1)
    assert all(a.shape == b.shape and not torch.allclose(a, b) for a, b in zip(plain.wavs, batch.wavs))
    (spec, which), _ = batch.speech(data.fps, TINY_MODEL.n_stft_frames)
    (unwarped, same_which), _ = dataclasses.replace(batch, warps=None).speech(data.fps, TINY_MODEL.n_stft_frames)
    assert torch.equal(which, same_which) and spec.shape == unwarped.shape and not torch.allclose(spec, unwarped)


@pytest.mark.parametrize("field,value", [("warp", 0.5), ("reverb_p", 1.5), ("babble_p", -0.1), ("codec_p", 2.0)])
def test_out_of_range_shares_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
