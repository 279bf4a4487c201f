"""Audio front end: file formats, video audio tracks, resampling, downmix, PCM scaling, STFT windows, errors."""

import av
import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import SPEECH

from se4lip_features import audio
from se4lip_features.audio import AudioError


def tone(freq, sr, seconds=0.5, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sr)) / sr)).astype(np.float32)


def write_with_av(path, wav, sr, codec):
    """Encode mono float audio with FFmpeg (PyAV) into the container named by ``path``'s suffix."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(wav[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def best_lag(decoded, original, max_lag):
    """(lag, normalised correlation) of ``original`` within ``decoded`` (encoders may prepend priming)."""
    n = len(original)
    scores = [np.dot(decoded[lag: lag + n], original) / np.linalg.norm(decoded[lag: lag + n]) / np.linalg.norm(original)
              for lag in range(min(max_lag, len(decoded) - n) + 1)]
    return int(np.argmax(scores)), float(np.max(scores))


def dominant_hz(wav, sr):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.argmax(spectrum) * sr / len(wav)


def test_constants_describe_a_200ms_window():
    assert audio.stft_frames_per_window(0.2) == 25  # 125 STFT frames per second
    assert audio.window_samples(25) == 3584  # 24 hops of 128 + one 512-sample FFT
    assert audio.SAMPLE_RATE // audio.HOP_LENGTH == 125


def test_speech_windows_match_a_numpy_stft():
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(8000).astype(np.float32) * 0.1
    centres = [0, 1000, 4000, 7999, 9000]  # the first, fourth and fifth reach past the ends: silence there
    got = audio.speech_windows(torch.from_numpy(wav), torch.tensor(centres), 25).numpy()
    assert got.shape == (5, 25, 257) and got.dtype == np.float32

    padded = np.concatenate([np.zeros(2000), wav, np.zeros(4000)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)  # periodic, like torch.hann_window
    for w, c in enumerate(centres):
        # frame j of the window starts 1792 samples before the centre plus j hops, so frame 12 is centred on it
        frames = np.stack([padded[2000 + c - 1792 + 128 * j:][:512] * hann for j in range(25)])
        want = np.log(np.abs(np.fft.rfft(frames, axis=1)) + audio.LOG_EPS)
        np.testing.assert_allclose(got[w], want, atol=2e-3, err_msg=f"window centred on sample {c}")


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 32000, 44100, 48000, 96000])
def test_resampling_keeps_pitch_level_and_duration(sr):
    wav = tone(440.0, sr)
    out = audio.prepare_waveform(wav, sr)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(wav) * audio.SAMPLE_RATE / sr) <= 0.5
    assert dominant_hz(out, audio.SAMPLE_RATE) == pytest.approx(440.0, abs=2.0)
    inner = out[200:-200]  # the resampler's edges ramp in and out
    assert np.sqrt(np.mean(inner ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resampling_removes_what_16khz_cannot_hold():
    out = audio.prepare_waveform(tone(12000.0, 48000), 48000)  # above 8 kHz Nyquist: must not alias to 4 kHz
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 1e-3


@pytest.mark.parametrize("sr", [7999, 96001])
def test_sample_rate_outside_the_range_is_refused(sr):
    with pytest.raises(AudioError, match=rf"^clip\.wav: sample rate {sr} Hz is outside 8000-96000 Hz$"):
        audio.prepare_waveform(tone(440.0, sr), sr, name="clip.wav")


def test_channels_are_averaged():
    x = tone(440.0, 16000)
    np.testing.assert_array_equal(audio.prepare_waveform(np.stack([x, np.zeros_like(x)], axis=1), 16000), x / 2)
    six = np.random.default_rng(0).uniform(-1, 1, (1000, 6)).astype(np.float32)
    np.testing.assert_allclose(audio.prepare_waveform(six, 16000), six.mean(axis=1), atol=1e-7)


def test_stereo_44k_int16_file_is_downmixed_and_resampled(tmp_path, speech):
    wav, sr = speech
    left = soxr.resample(wav, sr, 44100)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, 0.5 * left], axis=1), 44100, subtype="PCM_16")
    back = audio.load_audio(tmp_path / "stereo.wav")
    assert back.dtype == np.float32 and back.shape == (len(wav),)
    # read block by block through soxr's streaming resampler: the bytes of the one-shot resampler
    np.testing.assert_array_equal(back, audio.prepare_waveform(*soundfile.read(tmp_path / "stereo.wav")))
    error = back - 0.75 * wav  # (x + x / 2) / 2; the round trip through 44.1 kHz only dulls the band edge
    assert np.sqrt(np.mean(error ** 2)) < 0.01 * np.sqrt(np.mean((0.75 * wav) ** 2))


def test_integer_pcm_is_scaled_like_libsndfile(tmp_path, speech):
    np.testing.assert_array_equal(audio.prepare_waveform(np.array([16384, -32768, 0], np.int16), 16000),
                                  [0.5, -1.0, 0.0])
    np.testing.assert_array_equal(audio.prepare_waveform(np.array([2 ** 30, -(2 ** 31)], np.int32), 16000),
                                  [0.5, -1.0])
    np.testing.assert_array_equal(audio.prepare_waveform(np.array([128, 192, 0], np.uint8), 16000),
                                  [0.0, 0.5, -1.0])  # unsigned 8-bit: silence is 128
    assert audio.prepare_waveform(np.zeros(10, np.float64), 16000).dtype == np.float32
    # the same file read as int16 samples or as floats by libsndfile gives the same waveform
    as_int, sr = soundfile.read(SPEECH, dtype="int16")
    np.testing.assert_array_equal(audio.prepare_waveform(as_int, sr), speech[0])


@pytest.mark.parametrize("fmt, exact", [("FLAC", True), ("OGG", False), ("MP3", False)])
def test_soundfile_formats(tmp_path, speech, fmt, exact):
    wav, sr = speech
    path = tmp_path / f"speech.{fmt.lower()}"
    soundfile.write(path, wav, sr, format=fmt)
    loaded = audio.load_audio(path)  # at 16 kHz already, like the committed clip
    assert sr == audio.SAMPLE_RATE and loaded.dtype == np.float32
    if exact:
        np.testing.assert_array_equal(loaded, wav)
    else:
        assert abs(len(loaded) - len(wav)) <= 1152  # at most one mp3 frame of padding
        lag, corr = best_lag(loaded, wav[:-1200], 64)
        assert lag == 0 and corr > 0.99


@pytest.mark.parametrize("name, codec", [("speech.mp4", "aac"), ("speech.m4a", "aac"), ("speech.mkv", "libopus")])
def test_audio_track_of_a_video_container(tmp_path, speech, name, codec):
    wav, sr = speech
    sr_out = 48000 if codec == "libopus" else sr
    src = soxr.resample(wav, sr, sr_out) if sr_out != sr else wav
    write_with_av(tmp_path / name, src.astype(np.float32), sr_out, codec)
    loaded = audio.load_audio(tmp_path / name)  # back at 16 kHz
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    # PyAV's muxer keeps AAC's 1024 priming samples (no edit list); the decoded speech itself is faithful
    lag, corr = best_lag(loaded, wav, 2048)
    assert lag in (0, 104, 1024) and corr > 0.99, (lag, corr)  # 104: libopus' 312-sample pre-skip at 48 kHz


def test_video_without_audio_is_refused(tmp_path):
    with av.open(str(tmp_path / "mute.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(AudioError, match=r"mute\.mp4: has no audio stream$"):
        audio.load_audio(tmp_path / "mute.mp4")


def test_unreadable_files_name_the_file_and_the_problem(tmp_path, capfd):
    (tmp_path / "empty.wav").touch()
    junk = np.random.default_rng(0).bytes(5000)
    for name in ("junk.wav", "junk.mp3", "junk.mp4"):
        (tmp_path / name).write_bytes(junk)
    cases = {
        "missing.wav": "no such file",
        "empty.wav": "file is empty",
        "junk.wav": r"not a readable audio file \(Format not recognised\)",
        "junk.mp3": r"cannot decode audio \(Invalid data found when processing input\)",
        "junk.mp4": r"cannot decode audio \(Invalid data found when processing input\)",
    }
    for name, problem in cases.items():
        with pytest.raises(AudioError, match=rf"^{tmp_path / name}: {problem}$"):
            audio.load_audio(tmp_path / name)
    with pytest.raises(AudioError, match="is a directory, not an audio file"):
        audio.load_audio(tmp_path)
    assert capfd.readouterr().err == ""  # no decoder writes its own complaints to the terminal


def test_unusable_waveforms_name_the_problem():
    with pytest.raises(AudioError, match=r"^x: expected a 1-D or 2-D waveform, got shape \(2, 3, 4\)$"):
        audio.prepare_waveform(np.zeros((2, 3, 4)), 16000, name="x")
    with pytest.raises(AudioError, match=r"^x: holds no samples$"):
        audio.prepare_waveform(np.zeros(0, np.float32), 16000, name="x")
    for bad in (np.nan, np.inf, -np.inf):
        wav = np.zeros(1000, np.float32)
        wav[500] = bad
        with pytest.raises(AudioError, match=r"^x: contains NaN or infinite samples$"):
            audio.prepare_waveform(wav, 44100, name="x")
