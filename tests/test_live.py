"""The renderers' real-time mode (--asr) with se4lip: the patched NeRFGUI's ASR, driven headless as the GUI does.

Stand-ins only for what a test cannot have: a GUI window (the fixtures' headless NeRFGUI.play calls the ASR as
the real render loop does) and a microphone (a fake pyaudio module). The live class itself runs for real.
"""

import argparse
import importlib
import json
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from adapter_helpers import block_package, write_wav
from se4lip_features.adapters import common, live, nerf

from se4lip_features import extract

pytest_plugins = ("adapter_helpers",)  # its fixtures: checkout, data, default_weights

NERF = {"synctalk": "nerf_triplane", "ernerf": "nerf_triplane", "radnerf": "nerf"}


def live_opt(data, wav="", **kw):
    values = {"path": str(data), "aud": "", "asr": True, "asr_wav": str(wav), "asr_play": False,
              "asr_save_feats": False, "asr_model": "se4lip", "att": 2, "fps": 50, "emb": False,
              "workspace": str(data / "workspace")}
    values.update(kw)
    return argparse.Namespace(**values)


def offline_windows(npy, att):
    """The renderers' offline path: the file's (N, W, D) rows as (N, D, W), each frame's window zero-padded."""
    feats = torch.from_numpy(np.load(npy)).permute(0, 2, 1)
    lo, hi = live.ATT_ROWS[att]
    zero = torch.zeros_like(feats[0])
    return [torch.stack([feats[k] if 0 <= k < len(feats) else zero for k in range(i + lo, i + hi)])
            for i in range(len(feats))]


def live_asr(opt):
    """What the patched GUI builds, without a checkout."""
    return nerf.live_asr(opt)


def gui_module(renderer):
    return importlib.import_module(f"{NERF[renderer]}.gui")


@pytest.fixture
def voice(tmp_path):
    wav = tmp_path / "speech.wav"
    write_wav(wav, 1.46, hz=180)  # not a whole number of 20 ms chunks, nor of frames
    return wav


@pytest.mark.parametrize("renderer", list(NERF))
def test_live_windows_equal_the_offline_ones(checkout, data, default_weights, voice, tmp_path, renderer):
    checkout(renderer)
    gui = gui_module(renderer).NeRFGUI(live_opt(data, voice), None, None)
    assert isinstance(gui.asr, live.LiveASR)
    npy = tmp_path / "offline.npy"
    extract.extract_file(voice, npy, weights=str(default_weights["tiny"]))
    expected = offline_windows(npy, att=2)
    with gui:
        got = gui.play(len(expected) + 5)  # frame N + 4 reads rows N..N+7: zeros, as the offline path pads
    for i, window in enumerate(expected):
        assert got[i].shape == (8, window.shape[1], 16)
        torch.testing.assert_close(got[i], window, atol=1e-5, rtol=0)
    assert not got[-1].any() and gui.asr.stopped


@pytest.mark.parametrize("renderer", list(NERF))
def test_other_features_keep_the_renderers_own_asr(checkout, data, renderer):
    checkout(renderer)
    own = importlib.import_module(f"{NERF[renderer]}.asr").ASR
    for feature in ("deepspeech", "hubert", "cpierse/wav2vec2-large-xlsr-53-esperanto"):
        gui = gui_module(renderer).NeRFGUI(live_opt(data, asr_model=feature), None, None)
        assert type(gui.asr) is own
    assert not (data / common.SELF_FEATURES).exists()  # nothing of se4lip ran


@pytest.mark.parametrize("layout, att", [("ave", 2), ("hubert", 0), ("ds", 1)])
def test_the_avatars_layout_and_attention_mode_go_live(checkout, data, default_weights, voice, tmp_path,
                                                       layout, att):
    checkout("ernerf", eol="\r\n")
    common.extract(data / common.SOURCE_WAV, data / common.SELF_FEATURES, layout=layout)  # the avatar's features
    npy = tmp_path / "offline.npy"
    extract.extract_file(voice, npy, weights=str(default_weights["tiny"]), layout=layout)
    expected = offline_windows(npy, att)
    with gui_module("ernerf").NeRFGUI(live_opt(data, voice, att=att), None, None) as gui:
        got = gui.play(len(expected))
    assert got[0].shape == expected[0].shape == ((1 if att == 0 else 8), 24, {"ave": 1, "hubert": 2, "ds": 16}[layout])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_window_waits_for_its_audio_and_no_longer(data, default_weights, voice):
    asr = live_asr(live_opt(data, voice))
    stream_latency = asr.stream.latency_s
    assert asr.latency_s == pytest.approx(3 / 25 + stream_latency)  # --att 2 reads 3 frames ahead
    for i in range(20):
        asr.get_next_feat()
        needed = round((i / 25 + asr.latency_s) * 16000)  # audio up to the last sample frame i's window reads
        assert needed <= asr.idx < needed + asr.chunk  # read all of it, and not one 20 ms chunk more
    asr.stop()


def test_warm_up_reads_enough_for_the_first_window(data, default_weights, voice):
    asr = live_asr(live_opt(data, voice))
    asr.warm_up()
    done = asr.idx
    assert done >= asr.latency_s * 16000 and asr.warm_up_steps == int(np.ceil(asr.latency_s * 50))
    asr.get_next_feat()
    assert asr.idx == done  # frame 0 needed nothing more


def test_save_feats_writes_what_se4lip_extract_writes(data, default_weights, voice, tmp_path):
    asr = live_asr(live_opt(data, voice, asr_save_feats=True))
    asr.run()
    saved = voice.with_name("speech_se4lip.npy")
    npy = tmp_path / "offline.npy"
    expected = extract.extract_file(voice, npy, weights=str(default_weights["tiny"]))
    assert json.loads(saved.with_suffix(".json").read_text()) == expected
    np.testing.assert_allclose(np.load(saved), np.load(npy), atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError, match=r"speech_se4lip.npy: exists; move it away or drop --asr_save_feats"):
        live_asr(live_opt(data, voice, asr_save_feats=True))  # refused before any work


class FakeStream:
    """A pyaudio stream: reads give 20 ms of int16 PCM from ``pcm`` (then silence); writes are kept."""

    def __init__(self, pcm, played):
        self.pcm, self.pos, self.played, self.closed = pcm, 0, played, False

    def read(self, n, exception_on_overflow=True):
        time.sleep(0.001)
        out = self.pcm[self.pos: self.pos + n]
        self.pos += n
        return np.pad(out, (0, n - len(out))).astype(np.int16).tobytes()

    def write(self, data, n):
        self.played.append(np.frombuffer(data, np.int16))

    def stop_stream(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def microphone(monkeypatch, voice):
    wav, _ = sf.read(voice, dtype="int16")
    played = []
    opened = []

    class PyAudio:
        def open(self, **kw):
            assert kw["rate"] == 16000 and kw["channels"] == 1 and kw["frames_per_buffer"] == 320
            opened.append(FakeStream(wav, played))
            return opened[-1]

        def terminate(self):
            pass

    monkeypatch.setitem(sys.modules, "pyaudio", types.SimpleNamespace(PyAudio=PyAudio, paInt16=8))
    return types.SimpleNamespace(played=played, opened=opened)


def test_microphone_session_saves_its_audio_and_features(data, default_weights, microphone, tmp_path):
    opt = live_opt(data, "", asr_save_feats=True, asr_play=True)
    (data / "workspace").mkdir()
    with live_asr(opt) as asr:
        asr.warm_up()
        got = [asr.get_next_feat() for _ in range(30)]
        assert asr.reader.is_alive() and asr.player.is_alive()  # the microphone and the player run on threads
    assert all(stream.closed for stream in microphone.opened) and not asr.reader.is_alive()
    recording = data / "workspace" / "asr_live.wav"
    saved = data / "workspace" / "asr_live_se4lip.npy"
    npy = tmp_path / "offline.npy"
    expected = extract.extract_file(recording, npy, weights=str(default_weights["tiny"]))
    assert json.loads(saved.with_suffix(".json").read_text()) == expected
    np.testing.assert_allclose(np.load(saved), np.load(npy), atol=1e-5, rtol=0)
    for a, b in zip(got, offline_windows(npy, att=2)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert microphone.played  # --asr_play played the audio out


def test_live_mode_sizes_the_network_from_the_avatars_features(checkout, data, default_weights):
    checkout("synctalk")
    network = importlib.import_module("nerf_triplane.network")
    assert network.NeRFNetwork(live_opt(data)).audio_in_dim == 24


def test_weights_that_changed_since_training_are_refused(data, default_weights, voice):
    common.self_meta(data)
    meta = json.loads((data / "aud_se4lip.json").read_text())
    meta["weights_source"] = str(default_weights["other"])
    (data / "aud_se4lip.json").write_text(json.dumps(meta))
    with pytest.raises(common.FeatureError, match="live features must come from the same weights"):
        live_asr(live_opt(data, voice))


def test_without_the_package_live_mode_says_what_to_install(checkout, data, default_weights, monkeypatch):
    root = checkout("radnerf")
    common.self_meta(data)
    block_package(monkeypatch)
    monkeypatch.syspath_prepend(str(root))
    gui = importlib.import_module("nerf.gui")
    with pytest.raises(ValueError, match=r"needs se4lip-features installed here \(pip install se4lip-features\)"):
        gui.NeRFGUI(live_opt(data), None, None)


def test_radnerf_test_py_goes_live_from_the_aud_features(checkout, data, default_weights, voice, tmp_path):
    """RAD-NeRF's test.py has no data directory: the --aud features' sidecar names the weights and layout."""
    checkout("radnerf")
    npy = tmp_path / "test_se4lip.npy"
    extract.extract_file(voice, npy, weights=str(default_weights["tiny"]), layout="hubert")
    opt = live_opt(data, voice, path=None, aud=str(npy))
    with gui_module("radnerf").NeRFGUI(opt, None, None) as gui:
        got = gui.play(5)
    assert gui.asr.layout == "hubert" and got[0].shape == (8, 24, 2)
    for a, b in zip(got, offline_windows(npy, att=2)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
