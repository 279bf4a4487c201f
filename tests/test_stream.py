"""Streaming and chunked extraction: the same features as offline extraction, frames as soon as they are
final, and memory that does not grow with the duration."""

import json

import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import GRID, SPEECH, TINY_MODEL, needs_av, push_all, speech_of

import se4lip_features
from se4lip_features import StreamingExtractor, audio, extract, frames
from se4lip_features.audio import AudioError

HALF = audio.window_samples(TINY_MODEL.n_stft_frames) // 2  # 1792 samples: a window reaches 112 ms either side


@pytest.mark.parametrize("fps", [25, 29.97])
@pytest.mark.parametrize("layout", ["ds", "hubert", "ave"])
def test_streamed_frames_equal_offline_ones(extractor, speech, layout, fps):
    offline = extractor.extract(*speech, fps=fps, layout=layout)
    wav = speech[0]
    rng = np.random.default_rng(1)
    sizes = [1] * 300 + rng.integers(1, 4000, 40).tolist()  # single samples, then random sizes
    stream = StreamingExtractor(extractor, fps=fps, layout=layout)
    np.testing.assert_allclose(push_all(stream, wav, sizes), offline, atol=1e-4)
    np.testing.assert_allclose(push_all(stream, wav, [10 * len(wav)]), offline, atol=1e-4)  # one chunk > file
    assert stream.n_frames == 0  # flush started a new stream


def test_integer_and_stereo_chunks(extractor, speech):
    as_int, sr = soundfile.read(SPEECH, dtype="int16")
    offline = extractor.extract(as_int, sr, layout="hubert")
    stream = StreamingExtractor(extractor, layout="hubert")
    np.testing.assert_allclose(push_all(stream, as_int, [333]), offline, atol=1e-4)
    stereo = np.stack([as_int, as_int], axis=1)
    np.testing.assert_allclose(push_all(stream, stereo, [1000]), offline, atol=1e-4)


def test_other_sample_rates_are_resampled_like_offline(extractor):
    wav44 = soxr.resample(soundfile.read(SPEECH, dtype="float32")[0], 16000, 44100).astype(np.float32)
    offline = extractor.extract(wav44, 44100, layout="ds")
    stream = StreamingExtractor(extractor, layout="ds", sr=44100)
    np.testing.assert_allclose(push_all(stream, wav44, [1, 441, 5000]), offline, atol=1e-4)


@pytest.mark.parametrize("fps", [25, 29.97])
@pytest.mark.parametrize("layout", ["ds", "hubert", "ave"])
def test_each_frame_comes_with_the_sample_that_completes_its_last_window(extractor, layout, fps):
    wav = np.random.default_rng(0).uniform(-0.1, 0.1, 9000).astype(np.float32)
    stream = StreamingExtractor(extractor, fps=fps, layout=layout)
    arrived = []  # samples pushed when each frame came out
    for n in range(1, len(wav) + 1):
        arrived += [n] * len(stream.push(wav[n - 1: n]))
    width = frames.LAYOUTS[layout]
    last_unit = 2 * np.arange(len(arrived)) + width - 1  # the last sub-step of frame i, in half-frame units
    last_centre = np.round((last_unit - (width - 1) / 2) / (2 * fps) * 16000).astype(int)
    np.testing.assert_array_equal(arrived, last_centre + HALF)  # not a sample later, nor earlier
    assert len(arrived) + len(stream.flush()) == audio.frame_count(len(wav), fps)


@pytest.mark.parametrize("layout, seconds", [("ds", 0.150 + 0.112), ("hubert", 0.010 + 0.112), ("ave", 0.112)])
def test_algorithmic_latency(extractor, layout, seconds):
    # the last sub-step of frame i is centred (W - 1) / (4 fps) after i / fps; its window reaches 112 ms further
    assert StreamingExtractor(extractor, fps=25, layout=layout).latency_s == pytest.approx(seconds, abs=1e-9)


def test_a_stream_shorter_than_a_frame_has_no_frames(extractor):
    stream = StreamingExtractor(extractor, layout="ave")
    assert stream.push(np.zeros(300, np.float32)).shape == (0, 1, TINY_MODEL.embed_dim)
    assert stream.flush().shape == (0, 1, TINY_MODEL.embed_dim)
    assert stream.flush().shape == (0, 1, TINY_MODEL.embed_dim)  # nothing pushed at all


def test_bad_chunks_and_options_are_refused(extractor):
    stream = StreamingExtractor(extractor)
    stream.push(np.zeros(100, np.float32))
    bad = np.zeros(50, np.float32)
    bad[7] = np.nan
    with pytest.raises(AudioError, match=r"^stream: chunk at sample 100: contains NaN or infinite samples$"):
        stream.push(bad)
    with pytest.raises(AudioError, match=r"expected a 1-D or 2-D waveform, got shape \(2, 2, 2\)"):
        stream.push(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="unknown layout 'x'"):
        StreamingExtractor(extractor, layout="x")
    with pytest.raises(ValueError, match="fps must be positive and at most 240"):
        StreamingExtractor(extractor, fps=0)
    with pytest.raises(ValueError, match="sample rate 4000 Hz is outside 8000-96000 Hz"):
        StreamingExtractor(extractor, sr=4000)
    assert se4lip_features.StreamingExtractor is StreamingExtractor


@pytest.mark.parametrize("fps", [25, 29.97])
@pytest.mark.parametrize("layout", ["ds", "hubert", "ave"])
def test_chunked_extraction_equals_one_pass(extractor, monkeypatch, layout, fps):
    wav = speech_of(4.0)
    whole = extractor.extract(wav, 16000, fps=fps, layout=layout)  # 4 s: one chunk, one encoder run
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 0.37)  # 11 blocks whose ends fall anywhere in a frame
    np.testing.assert_allclose(extractor.extract(wav, 16000, fps=fps, layout=layout), whole, atol=1e-5)


def test_long_file_is_read_encoded_and_written_in_bounded_pieces(extractor, tmp_path, monkeypatch):
    wav = soxr.resample(speech_of(20.0), 16000, 44100).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, np.stack([wav, 0.5 * wav], axis=1), 44100, subtype="FLOAT")  # 44.1 kHz stereo
    expected = extractor.extract(audio.load_audio(path), audio.SAMPLE_RATE, layout="ds")  # the whole file in memory

    held, pushed = [], []
    push = frames.FrameStream.push

    def spying(self, wav16, last=False):
        pushed.append(len(wav16))
        rows = push(self, wav16, last)
        held.append((len(self.samples), len(self.emb)))
        return rows

    monkeypatch.setattr(frames.FrameStream, "push", spying)
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1.0)
    out = tmp_path / "long_se4lip.npy"
    meta = extract.extract_file(path, out, extractor=extractor, layout="ds")
    feats = np.load(out)
    np.testing.assert_allclose(feats, expected, atol=1e-5)
    assert meta["n_frames"] == len(feats) == 500 and json.loads(out.with_suffix(".json").read_text()) == meta
    # audio arrives about a second at a time (soxr hands out uneven pieces); between pushes the stream holds
    # less than 0.5 s of samples (a window and the look-ahead of the last frame) and at most 16 embeddings
    assert len(pushed) == 20 and max(pushed) <= 16000 + 1000
    assert max(n for n, _ in held) < 8000 and max(n for _, n in held) <= 16


def test_streamed_npy_is_what_np_save_writes(extractor, tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 0.5)
    out = tmp_path / "a_se4lip.npy"
    extract.extract_file(SPEECH, out, extractor=extractor, layout="hubert")
    feats = np.load(out)
    with open(tmp_path / "ref.npy", "wb") as f:
        np.save(f, feats)
    assert out.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert feats.shape == (30, 2, TINY_MODEL.embed_dim)


def test_a_problem_late_in_a_long_file_leaves_nothing(extractor, tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1.0)
    wav = speech_of(5.0)
    wav[4 * 16000] = np.nan  # in the fifth chunk, after four have been written
    path = tmp_path / "glitch.wav"
    soundfile.write(path, wav, 16000, subtype="FLOAT")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(AudioError, match=r"glitch\.wav: contains NaN or infinite samples$"):
        extract.extract_file(path, tmp_path / "new" / "deeper" / "glitch_se4lip.npy", extractor=extractor)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .partial, no folder made for it


def test_extraction_does_not_keep_a_whole_file_of_embeddings(extractor, monkeypatch):
    calls = []
    embed = extractor.embed

    def counting(wav, centres, *args, **kwargs):
        calls.append((len(wav), len(centres)))
        return embed(wav, centres, *args, **kwargs)

    monkeypatch.setattr(extractor, "embed", counting)
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1.0)
    feats = extractor.extract(speech_of(6.0), 16000, layout="ds")
    assert feats.shape == (150, 16, TINY_MODEL.embed_dim)
    # each encoder run sees about a second of audio and encodes about a second of sub-steps (50 at 25 fps)
    assert len(calls) == 6 and max(n for n, _ in calls) < 16000 + 8000 and max(k for _, k in calls) <= 50 + 16
    assert sum(k for _, k in calls) == 2 * (150 - 1) + 16  # every sub-step encoded exactly once


@torch.inference_mode()
def test_state_is_dropped_between_streams(extractor, speech):
    stream = StreamingExtractor(extractor, layout="ds")
    first = push_all(stream, speech[0], [700])
    stream.push(np.ones(5000, np.float32))
    stream.reset()
    np.testing.assert_array_equal(push_all(stream, speech[0], [700]), first)


@needs_av
@pytest.mark.parametrize("chunk_s", [0.3, 30.0])
def test_video_audio_is_read_incrementally_like_load_audio(extractor, tmp_path, monkeypatch, chunk_s):
    video = GRID / "bbaf2n.mp4"  # AAC in mp4, decoded by FFmpeg frame by frame
    expected = extractor.extract(audio.load_audio(video), audio.SAMPLE_RATE, layout="ave")
    monkeypatch.setattr(audio, "BLOCK_SECONDS", chunk_s)
    meta = extract.extract_file(video, tmp_path / "v.npy", extractor=extractor, layout="ave")
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected, atol=1e-5)
    assert meta["n_frames"] == len(expected) == 75


def test_a_level_normalised_release_streams_its_offline_features(speech):
    enc = se4lip_features.load("se4lip-gridlrw-melcnn-v1", device="cpu")
    assert enc.config.level_norm
    offline = enc.extract(*speech)
    np.testing.assert_allclose(push_all(StreamingExtractor(enc), speech[0], [1000]), offline, atol=1e-4)
