"""Extraction: frame count, layouts, centring, one encoder pass per sub-step, determinism, golden features, files."""

import json
import math
import os

import numpy as np
import pytest
import soundfile
import torch
from conftest import DATA, SPEECH, TINY_MODEL

import se4lip_features
from se4lip_features import __version__, audio, extract, sidecar
from se4lip_features.audio import AudioError
from se4lip_features.sidecar import sha256_file

GOLDEN_ROWS = [0, 1, 15, 29]  # first, second, middle and last of the clip's 30 frames at 25 fps
GOLDEN_CHANNELS = 8


def silence(seconds, sr=16000):
    return np.zeros(round(seconds * sr), np.float32)


@pytest.mark.parametrize("fps, seconds, rows", [
    (25, 1.2, 30), (25, 1.01, 25), (25, 1.03, 26), (25, 0.58, 15),  # 14.5 frames: halves round up
    (30, 1.2, 36), (30, 1.01, 30), (30, 1.02, 31),
    (29.97, 1.01, 30), (29.97, 1.02, 31), (29.97, 10.0, 300),  # 299.7: no drift over 10 s
])
def test_one_row_per_video_frame(extractor, fps, seconds, rows):
    wav = np.random.default_rng(0).uniform(-0.1, 0.1, round(seconds * 16000)).astype(np.float32)
    assert audio.frame_count(len(wav), fps) == rows
    assert extractor.extract(wav, 16000, fps=fps, layout="ave").shape == (rows, 1, TINY_MODEL.embed_dim)


def test_frame_count_uses_the_duration_at_any_sample_rate(extractor):
    wav = np.random.default_rng(0).uniform(-0.1, 0.1, round(1.03 * 44100)).astype(np.float32)
    assert extractor.extract(wav, 44100, fps=25, layout="ave").shape[0] == 26  # 25.75 frames


def test_audio_shorter_than_one_frame(extractor):
    assert extractor.extract(silence(0.02), 16000, fps=25).shape[0] == 1  # half a frame rounds up to one
    with pytest.raises(AudioError, match=r"^clip\.wav: 0\.019 s of audio is shorter than one frame at 25 fps$"):
        extractor.extract(silence(0.019), 16000, fps=25, name="clip.wav")


@pytest.mark.parametrize("layout, width", [("ds", 16), ("hubert", 2), ("ave", 1)])
def test_layouts_are_3d_float32(extractor, speech, layout, width):
    feats = extractor.extract(*speech, fps=25, layout=layout)
    assert feats.shape == (30, width, TINY_MODEL.embed_dim) and feats.dtype == np.float32
    # unit-norm embeddings times sqrt(dim): every channel has unit RMS, like the features renderers expect
    np.testing.assert_allclose(np.linalg.norm(feats, axis=2), math.sqrt(TINY_MODEL.embed_dim), rtol=1e-5)


def test_layouts_share_one_sub_step_grid(extractor, speech):
    ds = extractor.extract(*speech, layout="ds")
    hubert = extractor.extract(*speech, layout="hubert")
    # sub-step k of frame i is centred at i/fps + (k - (W-1)/2) / (2 fps): hubert's two are ds's middle two
    np.testing.assert_allclose(hubert, ds[:, 7:9], atol=1e-5)
    # neighbouring frames share 14 of their 16 sub-steps, the very same numbers
    np.testing.assert_array_equal(ds[1:, :14], ds[:-1, 2:])


@pytest.mark.parametrize("fps", [25, 30, 29.97])
@pytest.mark.parametrize("layout", ["ds", "hubert", "ave"])
def test_row_i_is_centred_on_i_over_fps(extractor, fps, layout):
    click = 16000  # a click at t = 1 s in 2 s of silence changes exactly the sub-steps whose window holds it
    wav = silence(2.0)
    wav[click] = 1.0
    changed = np.any(extractor.extract(wav, 16000, fps=fps, layout=layout)
                     != extractor.extract(silence(2.0), 16000, fps=fps, layout=layout), axis=2)
    n, width = changed.shape
    centre = np.arange(n)[:, None] / fps + (np.arange(width)[None, :] - (width - 1) / 2) / (2 * fps)  # seconds
    distance = np.round(centre * 16000).astype(int) - click
    half = audio.window_samples(TINY_MODEL.n_stft_frames) // 2  # 1792 samples, 112 ms either side
    assert np.abs(np.abs(distance) - half).min() > 16  # no window edge so close that Hann's zero hides the click
    np.testing.assert_array_equal(changed, np.abs(distance) < half)
    assert changed.any()


def test_each_sub_step_is_encoded_once_in_batches(extractor, speech, monkeypatch):
    batches = []
    encode = extractor.speech.encode

    def counting(x):
        batches.append(len(x))
        return encode(x)

    monkeypatch.setattr(extractor.speech, "encode", counting)
    feats = extractor.extract(*speech, fps=25, layout="ds", batch_size=8)
    n = feats.shape[0]
    assert sum(batches) == 2 * (n - 1) + 16  # 74 distinct sub-steps for 30 frames, not 30 x 16 = 480
    assert batches == [8] * 9 + [2]


def test_batch_size_does_not_change_the_features(extractor, speech):
    np.testing.assert_allclose(extractor.extract(*speech, batch_size=5), extractor.extract(*speech), atol=1e-5)


def test_same_input_same_bytes(extractor, tiny_weights, speech):
    first = extractor.extract(*speech)
    assert first.tobytes() == extractor.extract(*speech).tobytes()
    assert first.tobytes() == extract.load(tiny_weights, device="cpu").extract(*speech).tobytes()


def test_int16_and_float_input_give_the_same_features(extractor, speech):
    as_int, sr = soundfile.read(SPEECH, dtype="int16")
    np.testing.assert_array_equal(extractor.extract(as_int, sr), extractor.extract(*speech))


def test_silence_is_valid_input(extractor):
    feats = extractor.extract(silence(1.0), 16000, fps=25, layout="ds")
    assert feats.shape == (25, 16, TINY_MODEL.embed_dim) and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats, np.broadcast_to(feats[0, 0], feats.shape))  # every window is alike


def test_golden_features(extractor, speech):
    """Features of the committed clip from the seeded tiny model: catches silent front-end or extraction drift.

    After an intended change, rewrite them with ``SE4LIP_UPDATE_GOLDEN=1 pytest tests/test_extract.py``.
    """
    got = {"ds": extractor.extract(*speech, fps=25, layout="ds")[GOLDEN_ROWS, :, :GOLDEN_CHANNELS],
           "ave": extractor.extract(*speech, fps=25, layout="ave")[:, :, :GOLDEN_CHANNELS]}
    if os.environ.get("SE4LIP_UPDATE_GOLDEN"):
        for layout, feats in got.items():
            np.save(DATA / f"golden_{layout}.npy", feats)
        pytest.skip("golden features rewritten")
    for layout, feats in got.items():
        want = np.load(DATA / f"golden_{layout}.npy")
        assert feats.shape == want.shape
        np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-4, err_msg=f"layout {layout}")


def test_bad_arguments(extractor, speech):
    with pytest.raises(ValueError, match="unknown layout 'wav2vec'; choose one of ds, hubert, ave"):
        extractor.extract(*speech, layout="wav2vec")
    for fps in (0, -25, math.inf, math.nan):
        with pytest.raises(ValueError, match="fps must be positive and at most 240"):
            extractor.extract(*speech, fps=fps)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        extractor.extract(*speech, batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_unusable_device_is_named(tiny_weights):
    with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available"):
        extract.load(tiny_weights, device="cuda")
    with pytest.raises(ValueError, match=r"unknown device 'gpu'"):
        extract.load(tiny_weights, device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(extractor, tiny_weights, speech):
    on_gpu = extract.load(tiny_weights, device="cuda")
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.extract(*speech), extractor.extract(*speech), atol=1e-4)


def test_extract_file_writes_features_and_sidecar(extractor, tiny_weights, speech, tmp_path):
    out = tmp_path / "sub" / "aud_se4lip.npy"
    meta = extract.extract_file(SPEECH, out, extractor=extractor, fps=30, layout="hubert")
    feats = np.load(out)
    np.testing.assert_array_equal(feats, extractor.extract(*speech, fps=30, layout="hubert"))
    assert json.loads((tmp_path / "sub" / "aud_se4lip.json").read_text()) == meta == {
        "dim": TINY_MODEL.embed_dim, "layout": "hubert", "window": 2, "fps": 30.0, "n_frames": 36,
        "scale": "unit-norm embedding x sqrt(dim)", "weights": "tiny", "weights_sha256": sha256_file(tiny_weights),
        "weights_source": str(tiny_weights.resolve()), "precision": "fp32", "audio": "speech.wav",
        "audio_sha256": sha256_file(SPEECH), "version": __version__,
    }
    assert sidecar.read_sidecar(out) == meta
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["aud_se4lip.json", "aud_se4lip.npy"]


def test_extract_file_refuses_to_overwrite(extractor, tmp_path):
    out = tmp_path / "aud_se4lip.npy"
    extract.extract_file(SPEECH, out, extractor=extractor)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match=r"aud_se4lip\.npy: exists \(use --force to overwrite\)$"):
        extract.extract_file(SPEECH, out, extractor=extractor, layout="ave")
    assert out.read_bytes() == before
    extract.extract_file(SPEECH, out, extractor=extractor, layout="ave", force=True)
    assert np.load(out).shape == (30, 1, TINY_MODEL.embed_dim)


def test_failed_write_leaves_the_old_files_and_no_partial_one(extractor, tmp_path, monkeypatch):
    out = tmp_path / "aud_se4lip.npy"
    extract.extract_file(SPEECH, out, extractor=extractor)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(f, array):
        f.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extract.np, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        extract.extract_file(SPEECH, out, extractor=extractor, layout="ave", force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_read_sidecar_names_what_is_wrong(tmp_path):
    out = tmp_path / "aud_se4lip.npy"
    with pytest.raises(FileNotFoundError, match=r"aud_se4lip\.json: no sidecar for"):
        sidecar.read_sidecar(out)
    (tmp_path / "aud_se4lip.json").write_text("{")
    with pytest.raises(ValueError, match=r"aud_se4lip\.json: not valid JSON"):
        sidecar.read_sidecar(out)
    (tmp_path / "aud_se4lip.json").write_text(json.dumps({"dim": 512, "layout": "ds"}))
    with pytest.raises(ValueError, match=r"sidecar lacks \['fps', 'n_frames', 'weights', 'weights_sha256', 'window'\]"):
        sidecar.read_sidecar(out)


def test_read_features_checks_the_array_against_its_sidecar(extractor, tmp_path):
    out = tmp_path / "aud_se4lip.npy"
    extract.extract_file(SPEECH, out, extractor=extractor, layout="hubert")
    feats, meta = se4lip_features.read_features(out)
    assert feats.shape == (30, 2, extractor.dim) and meta["layout"] == "hubert" and meta["n_frames"] == 30
    np.save(out, feats[:-1])
    with pytest.raises(ValueError, match=r"aud_se4lip.npy: array of shape \(29, 2, 32\), but its sidecar "
                                         r"describes \(30, 2, 32\)"):
        se4lip_features.read_features(out)
    feats[3, 1, 2] = np.inf  # the one reader also refuses what the renderers could not train on
    np.save(out, feats)
    with pytest.raises(ValueError, match="must be finite floats"):
        se4lip_features.read_features(out)
