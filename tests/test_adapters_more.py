"""ER-NeRF, RAD-NeRF, GaussianTalker and InsTaG patched by se4lip-patch and run on the CPU with torch.

For each: the tensor its audio network receives with SE4Lip features in every layout (512-dim, as the
released weights) and with its own features; test audio as .wav and .npy; the frame-count and checkpoint
checks; refusal of checkouts it does not recognise; and its own features still running where
se4lip_features cannot be imported. SyncTalk and TalkingGaussian go through the shared checks too. The
byte-exact patch/check/revert cycle of every renderer, ER-NeRF in CRLF included, is
tests/test_adapters.py::test_patch_check_repatch_revert_restores_bytes.
"""

import argparse
import importlib
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from adapter_helpers import (
    N_FRAMES,
    N_TRAIN,
    block_package,
    copy_checkout,
    extract_command,
    snapshot,
    write_features,
    write_wav,
)
from se4lip_features.adapters import common, engine, instag, patch
from se4lip_features.adapters.common import CheckpointError, FeatureError

from se4lip_features import audio, extract, weights
from se4lip_features.extract import extract_file
from se4lip_features.frames import LAYOUTS

pytest_plugins = ("adapter_helpers",)  # its fixtures: checkout, data, default_weights, weights_512, ...

NEW = ("ernerf", "radnerf", "gaussiantalker", "instag")
EOL = {"ernerf": "\r\n"}  # ER-NeRF's files are CRLF upstream
N_VAL = N_FRAMES - N_TRAIN
DS = 29  # DeepSpeech features: (frames, 16, 29) in aud_ds.npy / aud.npy


def native_features(data):
    """The renderers' own DeepSpeech files, under both names they use (float64, as their extractor writes)."""
    rng = np.random.default_rng(0)
    for name in ("aud_ds.npy", "aud.npy"):
        np.save(data / name, rng.standard_normal((N_FRAMES, 16, DS)))


def ns(**kw):
    return argparse.Namespace(**kw)


def nerf_opt(data, feature, **kw):
    return ns(**{"path": str(data), "aud": "", "att": 2, "asr": False, "emb": False, "preload": 0,
                 "asr_model": feature, **kw})


def nerf_window(pkg):
    """(window of frame 5, its encoding) from NeRFDataset and NeRFNetwork of an ER-NeRF-like checkout."""
    def run(data, feature, **kw):
        network = importlib.import_module(f"{pkg}.network")
        provider = importlib.import_module(f"{pkg}.provider")
        opt = nerf_opt(data, feature, **kw)
        model = network.NeRFNetwork(opt)
        window = provider.NeRFDataset(opt, "cpu", "train").collate([5])["auds"]
        return window, model.encode_audio(window)
    return run


def gaussiantalker_args(data, out, *argv, sentinel=False):
    arguments = importlib.import_module("arguments")
    parser = argparse.ArgumentParser()
    lp, hp = arguments.ModelParams(parser, sentinel=sentinel), arguments.ModelHiddenParams(parser)
    args = parser.parse_args(["-s", str(data), "-m", str(out), *argv])
    return args, lp.extract(args), hp.extract(args)


def gaussiantalker_window(data, feature, custom_aud=None):
    scene = importlib.import_module("scene")
    gaussian_model = importlib.import_module("scene.gaussian_model")
    argv = ["--audio_feature", feature] if feature != "native" else []
    _, dataset, hyper = gaussiantalker_args(data, data / "out", *argv)
    model = gaussian_model.GaussianModel(3, hyper)
    sc = scene.Scene(dataset, custom_aud=custom_aud)
    batch = torch.stack([camera["aud_f"] for camera in sc.train_cameras[5:9]])  # (4, 8, dim, window)
    return batch[0], model._deformation.deformation_net.encode_audio(batch), sc


def instag_args(data, feature, audio=""):
    return ns(source_path=str(data), audio=audio, audio_extractor=feature, N_views=-1, eval=False)


def instag_window(data, feature):
    motion_net = importlib.import_module("scene.motion_net")
    readers = importlib.import_module("scene.dataset_readers")
    args = instag_args(data, feature)
    nets = [cls(args=args) for cls in (motion_net.MotionNetwork, motion_net.MouthMotionNetwork,
                                       motion_net.PersonalizedMotionNetwork)]
    window = readers.readNerfSyntheticInfo(str(data), False, False, args=args)["train_cameras"][5]["auds"]
    encoded = [net.encode_audio(window) for net in nets]
    assert all(e.shape == encoded[0].shape for e in encoded)
    return window, encoded[0]


def synctalk_window(data, feature):
    network = importlib.import_module("nerf_triplane.network")
    provider = importlib.import_module("nerf_triplane.provider")
    opt = nerf_opt(data, feature)
    window = provider.NeRFDataset(opt, "cpu", "train").window(5)
    return window, network.NeRFNetwork(opt).encode_audio(window)


def talkinggaussian_window(data, feature):
    motion_net = importlib.import_module("scene.motion_net")
    readers = importlib.import_module("scene.dataset_readers")
    args = ns(source_path=str(data), audio="", audio_extractor=feature)
    cameras = readers.readCamerasFromTransforms(str(data), "transforms_train.json", False, ".jpg", "", feature)
    window = cameras[5]["auds"]
    encoded = [cls(args=args).encode_audio(window) for cls in (motion_net.MotionNetwork, motion_net.MouthMotionNetwork)]
    return window, encoded[1]


RUN = {  # renderer -> (window, encoding) for a feature name ("native": the renderer's own DeepSpeech)
    "ernerf": lambda data, f: nerf_window("nerf_triplane")(data, "deepspeech" if f == "native" else f),
    "radnerf": lambda data, f: nerf_window("nerf")(data, "deepspeech" if f == "native" else f),
    "gaussiantalker": lambda data, f: gaussiantalker_window(data, f)[:2],
    "instag": lambda data, f: instag_window(data, "deepspeech" if f == "native" else f),
    "synctalk": lambda data, f: synctalk_window(data, "deepspeech" if f == "native" else f),
    "talkinggaussian": lambda data, f: talkinggaussian_window(data, "deepspeech" if f == "native" else f),
}
ENCODED = {"ernerf": (1, 32), "radnerf": (1, 64), "gaussiantalker": (4, 1, 32), "instag": (1, 32),
           "synctalk": (8, 32), "talkinggaussian": (8, 32)}
ALL = tuple(RUN)  # the four new renderers, and SyncTalk and TalkingGaussian through the same checks


# -- what every renderer guarantees --------------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("renderer", ALL)
def test_audio_network_receives_se4lip_windows(checkout, data, weights_512, renderer, layout):
    checkout(renderer, EOL.get(renderer, "\n"))
    extract_file(data / "aud.wav", data / "aud_se4lip.npy", layout=layout)
    window, encoded = RUN[renderer](data, "se4lip")
    assert window.shape == (8, 512, LAYOUTS[layout]) and window.dtype == torch.float32  # [8, 512, 16|2|1]
    assert tuple(encoded.shape) == ENCODED[renderer]
    feats = np.load(data / "aud_se4lip.npy")  # (30, window, 512); frame 5's window holds rows 1..8
    torch.testing.assert_close(window[0], torch.from_numpy(feats[1]).T)


@pytest.mark.parametrize("renderer", ALL)
def test_own_features_still_work_in_a_patched_checkout(checkout, data, renderer):
    checkout(renderer, EOL.get(renderer, "\n"))
    native_features(data)
    window, encoded = RUN[renderer](data, "native")
    assert window.shape == (8, DS, 16) and tuple(encoded.shape) == ENCODED[renderer]
    assert not (data / "aud_se4lip.npy").exists()


@pytest.mark.parametrize("renderer", ALL)
def test_runs_without_the_package(checkout, data, weights_512, renderer, monkeypatch, tmp_path):
    """Without se4lip_features: own features as before, se4lip from a precomputed file, and a one-line stop."""
    checkout(renderer, EOL.get(renderer, "\n"))
    native_features(data)
    extract_file(data / "aud.wav", data / "aud_se4lip.npy")
    with_package = RUN[renderer](data, "se4lip")[0]
    block_package(monkeypatch)
    monkeypatch.delenv("SE4LIP_EXTRACT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no se4lip-extract either
    window, _ = RUN[renderer](data, "native")
    assert window.shape == (8, DS, 16)
    window, _ = RUN[renderer](data, "se4lip")  # numpy reads the features: the checkout's se4lip_adapters
    torch.testing.assert_close(window, with_package, rtol=0, atol=0)
    assert "se4lip_adapters.common" in sys.modules and "se4lip_features" not in sys.modules
    (data / "aud_se4lip.npy").unlink()
    with pytest.raises(ValueError, match=r"se4lip_features is not installed in this Python .* no se4lip-extract is "
                                         r"on PATH; install se4lip-features here, or set SE4LIP_EXTRACT="):
        RUN[renderer](data, "se4lip")


@pytest.mark.parametrize("renderer", ["synctalk", "talkinggaussian"])
def test_se4lip_extract_of_another_environment_writes_the_same_bytes(checkout, data, weights_512, renderer,
                                                                       monkeypatch, tmp_path):
    """Missing features extracted by $SE4LIP_EXTRACT (a subprocess) equal those the package writes in-process."""
    checkout(renderer)
    RUN[renderer](data, "se4lip")  # the package extracts aud_se4lip.npy itself
    in_process = {p: (data / p).read_bytes() for p in ("aud_se4lip.npy", "aud_se4lip.json")}
    window_in_process = RUN[renderer](data, "se4lip")[0]
    for name in in_process:
        (data / name).unlink()
    block_package(monkeypatch)
    monkeypatch.setenv("SE4LIP_EXTRACT", str(extract_command(tmp_path, weights_512)))
    window, _ = RUN[renderer](data, "se4lip")
    assert {p: (data / p).read_bytes() for p in in_process} == in_process  # bit for bit, sidecar included
    torch.testing.assert_close(window, window_in_process, rtol=0, atol=0)
    assert "se4lip_features" not in sys.modules


# What a renderer process runs, on its own: a patched checkout's reader and network, for deepspeech or se4lip.
RENDERER_RUN = {
    "synctalk": ("import argparse, numpy, importlib; "
                 "opt = argparse.Namespace(path=DATA, aud='', asr=False, emb=False, preload=0, asr_model=FEATURE); "
                 "window = importlib.import_module('nerf_triplane.provider')"
                 ".NeRFDataset(opt, 'cpu', 'train').window(5); "
                 "importlib.import_module('nerf_triplane.network').NeRFNetwork(opt).encode_audio(window)"),
    "talkinggaussian": ("import argparse, numpy, importlib; "
                        "args = argparse.Namespace(source_path=DATA, audio='', audio_extractor=FEATURE); "
                        "window = importlib.import_module('scene.dataset_readers').readCamerasFromTransforms("
                        "DATA, 'transforms_train.json', False, '.jpg', '', FEATURE)[5]['auds']; "
                        "importlib.import_module('scene.motion_net').MotionNetwork(args=args).encode_audio(window)"),
}


@pytest.mark.parametrize("renderer", sorted(RENDERER_RUN))
def test_renderer_environment_without_the_package(checkout, data, renderer, tmp_path):
    """A renderer's interpreter where se4lip_features cannot be imported: its deepspeech features as before, and
    se4lip features extracted by the se4lip-extract of another environment ($SE4LIP_TEST_EXTRACT in CI: the
    modern one, while this test runs in the renderers' Python 3.7/3.8), equal to this environment's own."""
    other = os.environ.get("SE4LIP_TEST_EXTRACT") or shutil.which("se4lip-extract")
    if not other:
        pytest.skip("no se4lip-extract to stand for another environment (set SE4LIP_TEST_EXTRACT)")
    root = checkout(renderer)
    native_features(data)
    stub = tmp_path / "stub" / "se4lip_features"  # shadows the installed package, as if it were not installed
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('se4lip_features is not installed here (test stub)')\n")

    def run(feature):
        code = (f"import sys; sys.path[:0] = [{str(stub.parent)!r}, {str(root)!r}]; DATA, FEATURE = {str(data)!r}, "
                f"{feature!r}; {RENDERER_RUN[renderer]}; "
                f"numpy.save({str(tmp_path / 'window.npy')!r}, window.numpy()); "
                "assert 'se4lip_features' not in sys.modules or not hasattr(sys.modules['se4lip_features'], 'load')")
        env = dict(os.environ, SE4LIP_EXTRACT=other, PYTHONNOUSERSITE="1")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        assert done.returncode == 0, done.stderr
        return np.load(tmp_path / "window.npy"), done.stderr

    window, _ = run("deepspeech")
    assert window.shape == (8, DS, 16)
    window, log = run("se4lip")
    assert f"running {other}" in log  # extracted by the other environment
    feats, meta = common.read_features(data / "aud_se4lip.npy")
    assert meta["weights"] == weights.DEFAULT_NAME and window.shape == (8, meta["dim"], 16)
    np.testing.assert_array_equal(window[0], feats[1].T)
    # ...the same features as this environment extracts itself (bit for bit in one environment; across
    # Python/torch versions within the golden test's 1e-4)
    expected = extract.load().extract(audio.load_audio(data / "aud.wav"), audio.SAMPLE_RATE)
    np.testing.assert_allclose(feats, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("renderer", ALL)
def test_unrecognised_checkouts_are_refused(tmp_path, renderer, capsys):
    other = "instag" if renderer in ("synctalk", "ernerf", "radnerf") else "ernerf"
    root = copy_checkout(other, tmp_path / other)
    original = snapshot(root)
    assert patch.main([renderer, str(root)]) == 1
    err = capsys.readouterr().err
    assert f"does not look like a {patch.RENDERERS[renderer].repo} checkout" in err and "Nothing was changed" in err
    assert snapshot(root) == original
    # another version of the renderer: one anchor changed, nothing written, the file and lines named
    root = copy_checkout(renderer, tmp_path / renderer)
    last = patch.RENDERERS[renderer].edits[-1]
    path = root / last.path
    lines = path.read_text().split("\n")
    path.write_text("\n".join(line + "  # v2" if line == last.anchor[-1] else line for line in lines))
    original = snapshot(root)
    assert patch.main([renderer, str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: cannot find {last.what}" in err and last.anchor[-1] in err
    assert snapshot(root) == original


def test_a_failed_write_leaves_nothing_half_patched(tmp_path, monkeypatch, capsys):
    root = copy_checkout("instag", tmp_path / "instag")
    original = snapshot(root)
    replace, calls = engine.os.replace, []

    def flaky(src, dst):  # the third file cannot be replaced (a full disk, a read-only file, ...)
        calls.append(dst)
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied", str(dst))
        replace(src, dst)

    monkeypatch.setattr(engine.os, "replace", flaky)
    assert patch.main(["instag", str(root)]) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "Nothing was changed" in err
    assert snapshot(root) == original  # the two files already replaced were restored, no temporary left


def test_inserted_code_imports_the_package_only_in_se4lip_branches():
    """Every inserted import sits under an inserted ``if``/``elif`` that tests for the se4lip feature."""
    for name, renderer in patch.RENDERERS.items():
        for edit in renderer.edits:
            lines = edit.patched_text()
            for i, line in enumerate(lines):
                if "se4lip_features" not in line:
                    continue
                heads = [h for h in lines[:i] if h.endswith(f":  {engine.MARK}")]
                assert heads, (name, edit.what)
                head = heads[-1].split("#")[0].strip()
                assert head.startswith(("if ", "elif ")) and "'se4lip'" in head, (name, edit.what, head)


# -- ER-NeRF and RAD-NeRF ------------------------------------------------------------------------------

@pytest.mark.parametrize("renderer, pkg, default", [("ernerf", "nerf_triplane", "deepspeech"),
                                                    ("radnerf", "nerf", "cpierse/wav2vec2-large-xlsr-53-esperanto")])
def test_nerf_flags_test_audio_and_mux(checkout, data, default_weights, tmp_path, monkeypatch, renderer, pkg,
                                       default):
    root = checkout(renderer, EOL.get(renderer, "\n"))

    def parse(*argv):
        monkeypatch.setattr(sys, "argv", ["main.py", str(data), *argv])
        return runpy.run_path(str(root / "main.py"), run_name="__main__")["opt"]

    assert parse("--audio_feature", "se4lip").asr_model == "se4lip"
    assert parse("--asr_model", "se4lip").asr_model == "se4lip"
    assert parse("--audio_feature", "esperanto").asr_model == "esperanto"
    assert parse().asr_model == default
    with pytest.raises(SystemExit):
        parse("--audio_feature", "ave")  # not a feature of these two

    provider = importlib.import_module(f"{pkg}.provider")
    wav = tmp_path / "speech.wav"
    write_wav(wav, 2.0)
    npy = tmp_path / "speech_se4lip.npy"
    extract_file(wav, npy)
    from_npy = provider.NeRFDataset(nerf_opt(data, "se4lip", aud=str(npy)), "cpu", "test").auds
    from_wav = provider.NeRFDataset(nerf_opt(data, "se4lip", aud=str(wav)), "cpu", "test").auds
    assert from_npy.shape == (50, 24, 16)  # the whole test audio: 2 s at 25 fps
    torch.testing.assert_close(from_wav, from_npy)
    calls = []
    monkeypatch.setattr(common.subprocess, "run", lambda cmd, check: calls.append(cmd))
    utils = importlib.import_module(f"{pkg}.utils")
    out = tmp_path / "results"
    out.mkdir()
    utils.Trainer(nerf_opt(data, "se4lip", aud=str(npy))).test(None, save_path=str(out))
    assert calls[-1][-1] == str(out / "ngp_ep0001_audio.mp4") and str(wav) in calls[-1]
    utils.Trainer(nerf_opt(data, "deepspeech", aud=str(npy))).test(None, save_path=str(out))
    assert len(calls) == 1  # its own features: the renderer's silent video, as before


@pytest.mark.parametrize("renderer, pkg", [("ernerf", "nerf_triplane"), ("radnerf", "nerf")])
def test_nerf_checks_frames_checkpoints_and_modes(checkout, data, default_weights, renderer, pkg):
    checkout(renderer, EOL.get(renderer, "\n"))
    network = importlib.import_module(f"{pkg}.network")
    provider = importlib.import_module(f"{pkg}.provider")
    se4lip = network.NeRFNetwork(nerf_opt(data, "se4lip")).state_dict()
    network.NeRFNetwork(nerf_opt(data, "se4lip")).load_state_dict(se4lip)
    deepspeech = network.NeRFNetwork(nerf_opt(data, "deepspeech")).state_dict()
    with pytest.raises(CheckpointError, match="trained on 29-dim deepspeech .* built for 24-dim se4lip"):
        network.NeRFNetwork(nerf_opt(data, "se4lip")).load_state_dict(deepspeech, strict=False)
    extract_file(data / "aud.wav", data / "aud_se4lip.npy", weights=str(default_weights["other"]), force=True)
    with pytest.raises(CheckpointError, match="comes from other weights"):
        network.NeRFNetwork(nerf_opt(data, "se4lip")).load_state_dict(se4lip, strict=False)
    write_features(data / "aud_se4lip.npy", np.zeros((33, 16, 24), np.float32))
    with pytest.raises(FeatureError, match=f"33 feature rows for {N_FRAMES} video frames"):
        provider.NeRFDataset(nerf_opt(data, "se4lip"), "cpu", "train")
    assert network.NeRFNetwork(nerf_opt(data, "se4lip", asr=True)).audio_in_dim == 24  # live mode: tests/test_live.py
    with pytest.raises(ValueError, match="--emb"):
        network.NeRFNetwork(nerf_opt(data, "se4lip", emb=True))


def test_radnerf_test_py_without_a_data_directory(checkout, data, default_weights, tmp_path, monkeypatch):
    root = checkout("radnerf")
    network = importlib.import_module("nerf.network")
    provider = importlib.import_module("nerf.provider")
    wav = tmp_path / "speech.wav"
    write_wav(wav, 2.0)
    npy = tmp_path / "speech_se4lip.npy"
    extract_file(wav, npy, layout="hubert")
    monkeypatch.setattr(sys, "argv", ["test.py", "--pose", "p.json", "--aud", str(npy), "--audio_feature", "se4lip"])
    opt = runpy.run_path(str(root / "test.py"), run_name="__main__")["opt"]
    assert opt.asr_model == "se4lip" and not hasattr(opt, "path")
    opt.pose = str(data / "transforms_val.json")
    model = network.NeRFNetwork(opt)  # sized from the --aud sidecar
    dataset = provider.NeRFDataset_Test(opt, "cpu")
    window = dataset.collate([0])["auds"]
    assert dataset.auds.shape == (50, 24, 2) and window.shape == (8, 24, 2)
    assert model.encode_audio(window).shape == (1, 64)
    # the checkpoint of an avatar whose features came from other weights is refused
    other = tmp_path / "other.npy"
    extract_file(wav, other, weights=str(default_weights["other"]), layout="hubert")
    with pytest.raises(CheckpointError, match="comes from other weights"):
        network.NeRFNetwork(ns(**{**vars(opt), "aud": str(other)})).load_state_dict(model.state_dict())
    with pytest.raises(FeatureError, match="without a data directory .* must be a .npy"):
        provider.NeRFDataset_Test(ns(**{**vars(opt), "aud": str(wav)}), "cpu")
    native = tmp_path / "speech_ds.npy"
    np.save(native, np.zeros((50, 16, DS)))
    own = provider.NeRFDataset_Test(ns(**{**vars(opt), "aud": str(native), "asr_model": "deepspeech"}), "cpu")
    assert own.collate([0])["auds"].shape == (8, DS, 16)


# -- GaussianTalker ------------------------------------------------------------------------------------

def test_gaussiantalker_flag_survives_to_render(checkout, data, default_weights, tmp_path, monkeypatch):
    checkout("gaussiantalker")
    arguments = importlib.import_module("arguments")
    out = tmp_path / "out"
    out.mkdir()
    args, dataset, hyper = gaussiantalker_args(data, out, "--audio_feature", "se4lip")
    assert dataset.audio_feature == hyper.audio_feature == "se4lip" and hyper.source_path == str(data)
    assert gaussiantalker_args(data, out)[2].audio_feature == "deepspeech"  # its own behaviour by default
    with pytest.raises(ValueError, match="--audio_feature hubert: choose one of deepspeech, se4lip"):
        gaussiantalker_args(data, out, "--audio_feature", "hubert")
    arguments.save_config(args)  # train.py -> cfg_args

    def render_args(*argv, sentinel=True):  # render.py: ModelParams(parser, sentinel=True) + get_combined_args
        parser = argparse.ArgumentParser()
        lp, hp = arguments.ModelParams(parser, sentinel=sentinel), arguments.ModelHiddenParams(parser)
        monkeypatch.setattr(sys, "argv", ["render.py", "-m", str(out), *argv])
        merged = arguments.get_combined_args(parser)
        return lp.extract(merged), hp.extract(merged)

    assert [g.audio_feature for g in render_args()] == ["se4lip", "se4lip"]
    saved = json.loads((out / "cfg_args").read_text())
    del saved["audio_feature"]  # a model trained before the patch
    (out / "cfg_args").write_text(json.dumps(saved))
    assert render_args()[1].audio_feature == "deepspeech"


def test_gaussiantalker_custom_audio_and_checks(checkout, data, default_weights, tmp_path, caplog):
    checkout("gaussiantalker")
    gaussian_model = importlib.import_module("scene.gaussian_model")
    wav = data / "custom.wav"  # --custom_aud is read relative to the data directory
    write_wav(wav, 2.0)
    extract_file(wav, data / "custom_se4lip.npy")
    with caplog.at_level(logging.WARNING, logger="se4lip_features"):
        _, _, from_npy = gaussiantalker_window(data, "se4lip", custom_aud="custom_se4lip.npy")
    assert "50 feature rows, but GaussianTalker renders custom audio with the 3 cameras" in caplog.text
    _, _, from_wav = gaussiantalker_window(data, "se4lip", custom_aud="custom.wav")
    assert len(from_npy.custom_cameras) == N_VAL and from_npy.custom_cameras[0]["aud_f"].shape == (8, 24, 16)
    torch.testing.assert_close(from_wav.custom_cameras[2]["aud_f"], from_npy.custom_cameras[2]["aud_f"])
    # deformation.pth of a DeepSpeech model is refused by an se4lip model, naming what it was trained on
    native_features(data)
    hyper = gaussiantalker_args(data, data / "out")[2]
    own = gaussian_model.GaussianModel(3, hyper)
    own.save_deformation(tmp_path)
    se4lip = gaussian_model.GaussianModel(3, gaussiantalker_args(data, data / "out", "--audio_feature", "se4lip")[2])
    with pytest.raises(CheckpointError, match="trained on 29-dim deepspeech .* built for 24-dim se4lip"):
        se4lip.load_model(tmp_path)
    se4lip.save_deformation(tmp_path)
    gaussian_model.GaussianModel(3, gaussiantalker_args(data, data / "out", "--audio_feature", "se4lip")[2]
                                 ).load_model(tmp_path)  # strict, as the renderer loads it
    write_features(data / "aud_se4lip.npy", np.zeros((27, 16, 24), np.float32))
    with pytest.raises(FeatureError, match=f"27 feature rows for {N_FRAMES} video frames"):
        gaussiantalker_window(data, "se4lip")


# -- InsTaG --------------------------------------------------------------------------------------------

def test_instag_readers_test_audio_and_synthesis(checkout, data, default_weights, tmp_path, monkeypatch):
    root = checkout("instag")
    readers = importlib.import_module("scene.dataset_readers")
    pretrain_readers = importlib.import_module("scene_pretrain.dataset_readers")
    cams = pretrain_readers.readCamerasFromTransforms(str(data), "transforms_train.json", False, ".jpg", "", "se4lip")
    assert len(cams) == N_TRAIN and cams[5]["auds"].shape == (8, 24, 16)
    native_features(data)
    own = pretrain_readers.readCamerasFromTransforms(str(data), "transforms_train.json", False, ".jpg", "",
                                                     "deepspeech")
    assert own[5]["auds"].shape == (8, DS, 16)  # pre-training's own aud_ds.npy
    wav = tmp_path / "speech.wav"
    write_wav(wav, 2.0)
    npy = tmp_path / "speech_se4lip.npy"
    extract_file(wav, npy)
    by_wav = readers.readCamerasFromTransforms(str(data), "transforms_val.json", False, ".jpg", str(wav), "se4lip")
    by_npy = readers.readCamerasFromTransforms(str(data), "transforms_val.json", False, ".jpg", str(npy), "se4lip")
    assert len(by_npy) == 50  # InsTaG loops the camera list until every feature row has one
    torch.testing.assert_close(by_wav[49]["auds"], by_npy[49]["auds"])

    arguments = importlib.import_module("arguments")
    out = tmp_path / "out"
    out.mkdir()
    parser = argparse.ArgumentParser()
    lp = arguments.ModelParams(parser)
    trained = lp.extract(parser.parse_args(["-s", str(data), "-m", str(out), "--audio_feature", "se4lip"]))
    assert trained.audio_extractor == "se4lip"
    arguments.save_config(trained)
    calls = []
    monkeypatch.setattr(common.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(sys, "argv", ["synthesize_fuse.py", "-S", str(data), "-M", str(out), "--use_train",
                                      "--audio", str(npy)])  # no feature flag: the saved se4lip is kept
    runpy.run_path(str(root / "synthesize_fuse.py"), run_name="__main__")
    video = out / "train" / "ours_None" / "renders" / "out.mp4"
    assert video.exists() and calls[-1][-1] == str(video.with_name("out_audio.mp4")) and str(wav) in calls[-1]


def pretrain_dir(tmp_path, data_template, names=("may", "obama1")):
    root = tmp_path / "pretrain"
    for name in names:
        (root / name).mkdir(parents=True)
        for f in ("aud.wav", "transforms_train.json", "transforms_val.json"):
            (root / name / f).write_bytes((data_template / f).read_bytes())
    return root


def test_instag_pretraining_networks_take_the_identities_features(checkout, data_template, default_weights,
                                                                  tmp_path, capsys, caplog):
    checkout("instag")
    motion_net = importlib.import_module("scene.motion_net")
    root = pretrain_dir(tmp_path, data_template)
    assert instag.main([str(root)]) == 0  # python -m se4lip_features.adapters.instag data/pretrain
    out = capsys.readouterr().out
    assert f"{root / 'may' / 'aud_se4lip.npy'}: {N_FRAMES} frames x 16 x 24" in out and "obama1" in out
    assert "no jaein, macron, shaheen" in caplog.text
    args = instag_args(root, "se4lip")  # pretrain_face.py builds its networks from -s data/pretrain
    nets = [motion_net.MotionNetwork(args=args), motion_net.PersonalizedMotionNetwork(args=args)]
    assert all(net.audio_in_dim == 24 for net in nets)
    extract_file(root / "obama1" / "aud.wav", root / "obama1" / "aud_se4lip.npy", force=True,
                 weights=str(default_weights["wide"]))
    with pytest.raises(FeatureError, match="dim 40, but the avatar's features .* have dim 24"):
        motion_net.MotionNetwork(args=args)
    assert instag.main([str(root)]) == 1 and "dim 40" in capsys.readouterr().err
    write_features(root / "may" / "aud_se4lip.npy", np.zeros((20, 16, 24), np.float32))
    assert instag.main([str(root)]) == 1 and "20 feature rows for 30 video frames" in capsys.readouterr().err
    assert instag.main([str(tmp_path / "nowhere")]) == 1


def test_instag_checkpoints_and_frames(checkout, data, default_weights):
    checkout("instag")
    motion_net = importlib.import_module("scene.motion_net")
    readers = importlib.import_module("scene.dataset_readers")
    native_features(data)
    for cls in (motion_net.MotionNetwork, motion_net.MouthMotionNetwork, motion_net.PersonalizedMotionNetwork):
        prior = cls(args=instag_args(data, "deepspeech")).state_dict()
        with pytest.raises(CheckpointError, match="trained on 29-dim deepspeech .* built for 24-dim se4lip"):
            cls(args=instag_args(data, "se4lip")).load_state_dict(prior)  # a DeepSpeech prior, loaded strictly
        cls(args=instag_args(data, "se4lip")).load_state_dict(cls(args=instag_args(data, "se4lip")).state_dict())
    write_features(data / "aud_se4lip.npy", np.zeros((N_FRAMES + 2, 16, 24), np.float32))
    with pytest.raises(FeatureError, match=f"{N_FRAMES + 2} feature rows"):
        readers.readCamerasFromTransforms(str(data), "transforms_train.json", False, ".jpg", "", "se4lip")
