"""Renderer adapters: se4lip-patch on every fixture checkout, then SyncTalk and TalkingGaussian patched and
run on the CPU with torch (tests/test_adapters_more.py runs ER-NeRF, RAD-NeRF, GaussianTalker and InsTaG).

The fixture checkouts (tests/fixtures/renderers) are our own minimal files holding only the anchor lines
the patcher relies on; the real renderers are never needed here.
"""

import argparse
import ast
import base64
import hashlib
import importlib
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from adapter_helpers import (
    DIM,
    N_FRAMES,
    N_TRAIN,
    copy_checkout,
    snapshot,
    synctalk_opt,
    write_features,
    write_wav,
)
from conftest import needs_av
from se4lip_features.adapters import common, engine, gaussian, patch
from se4lip_features.adapters.common import CheckpointError, FeatureError

from se4lip_features import cli, sidecar, weights
from se4lip_features.extract import extract_file
from se4lip_features.sidecar import sidecar_path

pytest_plugins = ("adapter_helpers",)  # its fixtures: checkout, data, default_weights, ...

# -- the patcher ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("renderer", sorted(patch.RENDERERS))
def test_patch_check_repatch_revert_restores_bytes(tmp_path, renderer, eol, capsys):
    root = copy_checkout(renderer, tmp_path / renderer, eol)
    original = snapshot(root)
    assert patch.main([renderer, str(root), "--check"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("not patched")

    assert patch.main([renderer, str(root)]) == 0
    patched = snapshot(root)
    changed = {rel for rel in original if patched[rel] != original[rel]}
    edits = patch.RENDERERS[renderer].edits
    assert changed == {edit.path for edit in edits}
    swapped = {edit.path for edit in edits if any(isinstance(item, engine.Swap) for item in edit.patched)}
    n_new = sum(isinstance(item, engine.New) for edit in patch.RENDERERS[renderer].edits for item in edit.patched)
    marked = 0
    for rel in changed:
        text = patched[rel].decode()
        ast.parse(text, rel)
        assert text.count("\n") == text.count(eol)  # every line, inserted ones included, ends in eol
        marked += sum(line.endswith(engine.MARK) for line in text.splitlines())
        if rel not in swapped:  # files without a rewritten line only gain lines
            kept = [line for line in text.splitlines(keepends=True) if not line.rstrip().endswith(engine.MARK)]
            assert "".join(kept) == original[rel].decode()
    swaps = sum(isinstance(item, engine.Swap) for edit in patch.RENDERERS[renderer].edits for item in edit.patched)
    assert marked == n_new + swaps  # ...and the one rewritten line, all marked

    capsys.readouterr()
    assert patch.main([renderer, str(root), "--check"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(": patched")
    assert patch.main([renderer, str(root)]) == 0  # idempotent
    assert "already patched" in capsys.readouterr().out
    assert snapshot(root) == patched

    added = {rel for rel in patched if rel not in original}  # the adapters for environments without the package
    assert added == {f"{engine.RUNTIME}/{name}" for name in [*patch.runtime_files(), engine.RESTORE]}
    record = engine.read_restore(root)  # what a later version needs to take each patched file back
    assert sorted(record) == sorted(changed)
    for rel, entry in record.items():
        assert base64.b64decode(entry["original"]) == original[rel]
        assert entry["patched"] == hashlib.sha256(patched[rel]).hexdigest()
    assert patched[f"{engine.RUNTIME}/sidecar.py"] == Path(sidecar.__file__).read_bytes()
    assert patched[f"{engine.RUNTIME}/common.py"] == Path(common.__file__).read_bytes()
    subprocess.run([sys.executable, "-c", f"import {engine.RUNTIME}.{renderer}"], cwd=root, check=True)  # __pycache__

    assert patch.main([renderer, str(root), "--revert"]) == 0
    assert snapshot(root) == original  # byte for byte, and the adapters' folder gone with its byte code
    assert not (root / engine.RUNTIME).exists()
    assert patch.main([renderer, str(root), "--revert"]) == 0
    assert snapshot(root) == original


def test_commit_note_reads_the_checkouts_own_repository(tmp_path, capsys):
    """A renderer vendored inside another repository is not at that repository's HEAD: no note about it."""
    def commit(folder):
        subprocess.run(["git", "init", "-q", str(folder)], check=True)
        subprocess.run(["git", "-C", str(folder), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                       check=True)
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()

    outer = tmp_path / "project"
    root = copy_checkout("synctalk", outer / "third_party" / "SyncTalk")
    commit(outer)
    assert patch.main(["synctalk", str(root)]) == 0
    assert "note:" not in capsys.readouterr().out
    assert patch.main(["synctalk", str(root), "--revert"]) == 0
    head = commit(root)  # now a repository of its own, at a commit other than the verified one
    assert patch.main(["synctalk", str(root)]) == 0
    assert f"this checkout is at {head[:7]}" in capsys.readouterr().out


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path, capsys):
    root = copy_checkout("synctalk", tmp_path / "st")
    original = snapshot(root)
    assert patch.main(["synctalk", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--- a/main.py" in out and "+++ b/nerf_triplane/provider.py" in out
    assert "+                elif self.opt.asr_model == 'se4lip':  # se4lip-patch" in out
    assert snapshot(root) == original
    assert patch.main(["synctalk", str(root)]) == 0
    patched = snapshot(root)
    assert patch.main(["synctalk", str(root), "--revert", "--dry-run"]) == 0
    assert "-    parser.add_argument('--audio_feature', dest='asr_model', choices=" in capsys.readouterr().out
    assert snapshot(root) == patched


def test_missing_anchor_refuses_naming_the_file_and_changes_nothing(tmp_path, capsys):
    root = copy_checkout("talkinggaussian", tmp_path / "tg")
    reader = root / "scene" / "dataset_readers.py"  # the last file the patcher visits
    reader.write_text(reader.read_text().replace("        if audio_file == '':", "        if not audio_file:"))
    original = snapshot(root)
    assert patch.main(["talkinggaussian", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{reader}: cannot find the self-driven feature load in readCamerasFromTransforms" in err
    assert "    if audio_file == '':" in err and "Nothing was changed" in err
    assert snapshot(root) == original  # arguments/ and motion_net.py were not written either


def test_ambiguous_anchor_and_missing_file_refuse(tmp_path, capsys):
    root = copy_checkout("synctalk", tmp_path / "st")
    main_py = root / "main.py"
    line = "    parser.add_argument('--asr_model', type=str, default='deepspeech')\n"
    main_py.write_text(main_py.read_text().replace(line, line + line))
    assert patch.main(["synctalk", str(root)]) == 1
    assert "the --asr_model argument: found 2 times, expected once" in capsys.readouterr().err
    main_py.unlink()
    assert patch.main(["synctalk", str(root)]) == 1
    assert f"{main_py}: not found" in capsys.readouterr().err
    assert patch.main(["synctalk", str(tmp_path / "nowhere")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_stray_marked_lines_refuse_patch_and_revert(tmp_path, capsys):
    root = copy_checkout("synctalk", tmp_path / "st")
    assert patch.main(["synctalk", str(root)]) == 0
    network = root / "nerf_triplane" / "network.py"
    lines = network.read_text().splitlines(keepends=True)
    network.write_text("".join(line for line in lines if "feature_dim" not in line))  # a hand edit
    before = snapshot(root)
    for extra in ([], ["--revert"]):
        assert patch.main(["synctalk", str(root), *extra]) == 1
        assert "are not edits of this version of se4lip-patch" in capsys.readouterr().err
    assert snapshot(root) == before


def test_split_lines_round_trips_any_endings():
    text = "a\r\nb\n\nc\r\nlast"
    lines = engine.split_lines(text)
    assert lines == [("a", "\r\n"), ("b", "\n"), ("", "\n"), ("c", "\r\n"), ("last", "")]
    assert engine.join_lines(lines) == text
    assert engine.newline_of(lines) == "\n"  # 2 CRLF of 5 lines
    assert engine.split_lines("") == []


VERIFIED = {"synctalk": "ZiqiaoPeng/SyncTalk@d2427a3", "talkinggaussian": "Fictionarry/TalkingGaussian@9bd34f7",
            "ernerf": "Fictionarry/ER-NeRF@0cf72d8", "radnerf": "ashawkey/RAD-NeRF@0de5ed2",
            "gaussiantalker": "cvlab-kaist/GaussianTalker@250fb93", "instag": "Fictionarry/InsTaG@42f68f8"}


def test_verified_commits_are_recorded(capsys):
    assert {name: f"{r.repo}@{r.commit[:7]}" for name, r in patch.RENDERERS.items()} == VERIFIED
    assert all(len(r.commit) == 40 for r in patch.RENDERERS.values())
    with pytest.raises(SystemExit):
        patch.main(["--help"])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert all([name, where] in lines for name, where in VERIFIED.items())  # one renderer per line


def test_command_line_runs_as_a_program(tmp_path):
    root = copy_checkout("talkinggaussian", tmp_path / "tg")
    exe = shutil.which("se4lip-patch")  # the console script, once the package is installed
    cmd = [exe] if exe else [sys.executable, "-m", "se4lip_features.adapters.patch"]
    # no PYTHONPATH=<checkout>: its se4lip_features lacks adapters/, which a regular install puts inside the package
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([*cmd, "talkinggaussian", str(root)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*cmd, "talkinggaussian", str(root), "--check"], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 0 and done.stdout.rstrip().endswith(": patched")


# -- shared feature logic ------------------------------------------------------------------------------

def test_read_features_checks_the_sidecar(tmp_path):
    npy = tmp_path / "f.npy"
    feats = np.ones((5, 16, DIM), np.float32)
    write_features(npy, feats)
    out, meta = common.read_features(npy)
    assert out.shape == (5, 16, DIM) and out.dtype == np.float32 and meta["dim"] == DIM
    write_features(npy, feats, n_frames=6)
    with pytest.raises(FeatureError, match=r"shape \(5, 16, 24\), but its sidecar describes \(6, 16, 24\)"):
        common.read_features(npy)
    write_features(npy, feats, fps=50.0)
    with pytest.raises(FeatureError, match="50 fps"):
        common.read_features(npy)
    write_features(npy, np.ones((5, 32, DIM), np.float32))
    with pytest.raises(FeatureError, match="window of 32 steps"):
        common.read_features(npy)
    feats[2, 3, 4] = np.nan
    write_features(npy, feats)
    with pytest.raises(FeatureError, match="finite"):
        common.read_features(npy)
    sidecar_path(npy).unlink()
    with pytest.raises(FileNotFoundError, match="f.json"):
        common.read_features(npy)


def test_stale_features_are_refused_when_aud_wav_was_replaced(data, default_weights):
    extract_file(data / "aud.wav", data / "aud_se4lip.npy")
    write_wav(data / "aud.wav", N_FRAMES / 25, hz=330)  # other audio, the same length
    with pytest.raises(FeatureError, match=r"aud_se4lip.npy: extracted from a aud.wav with SHA-256 \w{12}, but .* "
                                           r"the audio was replaced .*`se4lip-extract .*aud.wav -o .*aud_se4lip.npy "
                                           r"--weights .*tiny.safetensors --force`"):
        common.load_features(data, "", "aud_id")
    meta = extract_file(data / "aud.wav", data / "aud_se4lip.npy", force=True)  # what the message says to run
    assert common.load_features(data, "", "aud_id").shape == (meta["n_frames"], 16, DIM)


def test_missing_sidecar_hint_is_a_command_that_works(data, default_weights):
    npy = data / "aud_se4lip.npy"
    extract_file(data / "aud.wav", npy)
    sidecar_path(npy).unlink()
    with pytest.raises(FileNotFoundError, match=r"write both again with `se4lip-extract AUDIO -o .*aud_se4lip.npy "
                                                r"--force`"):
        common.load_features(data, "", "aud_id")
    assert cli.extract_main([str(data / "aud.wav"), "-o", str(npy), "--force"]) == 0
    assert common.load_features(data, "", "aud_id").shape == (N_FRAMES, 16, DIM)


def test_frame_count_hint_knows_when_aud_wav_itself_is_short(data, default_weights, tmp_path):
    write_wav(data / "aud.wav", 20 / 25)  # 20 frames of audio for 30 video frames
    extract_file(data / "aud.wav", data / "aud_se4lip.npy")
    with pytest.raises(FeatureError, match=r"20 feature rows for 30 video frames .* they came from .*aud.wav, which "
                                           r"is itself that short or long: .* data_utils/process.py$"):
        common.load_features(data, "", "aud_id")
    other = tmp_path / "clip.wav"  # features from another file: then re-extracting from aud.wav is the advice
    write_wav(other, 20 / 25)
    extract_file(other, data / "aud_se4lip.npy", force=True)
    with pytest.raises(FeatureError, match=r"re-extract from this video's audio: `se4lip-extract .*aud.wav -o "):
        common.load_features(data, "", "aud_id")


def test_concurrent_extractions_leave_one_whole_pair(data, default_weights):
    """Two processes (TalkingGaussian's face and mouth training) extract the missing features at once."""
    code = ("import sys; from se4lip_features import weights; weights.DEFAULT_NAME = sys.argv[2]; "
            "from se4lip_features.adapters import common; print(common.load_features(sys.argv[1], '', 'aud_id').shape)")
    runs = [subprocess.Popen([sys.executable, "-I", "-c", code, str(data), str(default_weights["tiny"])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [f"({N_FRAMES}, 16, {DIM})"] * 2
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(("aud_se4lip", ".aud_se4lip"))) == [
        "aud_se4lip.json", "aud_se4lip.npy"]  # no temporaries left
    feats, meta = common.read_features(data / "aud_se4lip.npy")
    assert meta["audio_sha256"] == sidecar.sha256_file(data / "aud.wav") and feats.shape == (N_FRAMES, 16, DIM)


def test_the_sidecar_is_in_place_before_the_features(data, default_weights, monkeypatch):
    """A reader that finds aud_se4lip.npy (the adapters key on it) always finds its sidecar."""
    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst).name), real(src, dst)))
    extract_file(data / "aud.wav", data / "aud_se4lip.npy")
    assert renamed == ["aud_se4lip.json", "aud_se4lip.npy"]


@needs_av
def test_video_test_audio_is_accepted_like_se4lip_extract_does(data, default_weights, tmp_path):
    wav = tmp_path / "speech.wav"
    write_wav(wav, 1.0)
    clip = tmp_path / "clip.mp4"  # a container ffmpeg (PyAV) opens by its contents, as se4lip-extract does
    clip.write_bytes(wav.read_bytes())
    np.testing.assert_array_equal(common.load_features(data, clip, "aud_id"), common.load_features(data, wav, "aud_id"))


def test_missing_features_and_wav_name_both_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aud_se4lip.npy: not found, and neither is .*aud.wav"):
        common.self_features(tmp_path)


def test_feature_flag_detection_and_saved_feature():
    def names(argv):
        return common.names_flag(argv, gaussian.FLAGS)

    assert names(["--audio_extractor", "x"]) and names(["--audio_feature=se4lip"]) and names(["--audio_ext", "x"])
    assert not names(["--audio", "test.npy", "-s", "data"])  # --audio is the test audio, not the feature
    merged = {"audio_extractor": "deepspeech", "model_path": "out"}
    gaussian.keep_saved_feature(merged, {"audio_extractor": "se4lip"}, ["-m", "out"])
    assert merged["audio_extractor"] == "se4lip"
    merged = {"audio_extractor": "deepspeech"}
    gaussian.keep_saved_feature(merged, {"audio_extractor": "se4lip"}, ["--audio_extractor", "deepspeech"])
    assert merged["audio_extractor"] == "deepspeech"
    merged = {"audio_extractor": "deepspeech"}
    gaussian.keep_saved_feature(merged, {}, [])  # no cfg_args
    assert merged["audio_extractor"] == "deepspeech"


# -- SyncTalk, patched -------------------------------------------------------------------------------

def test_synctalk_main_accepts_audio_feature(checkout, data, monkeypatch):
    root = checkout("synctalk")

    def parse(*argv):
        monkeypatch.setattr(sys, "argv", ["main.py", str(data), *argv])
        return runpy.run_path(str(root / "main.py"), run_name="__main__")["opt"]

    assert parse("--audio_feature", "se4lip").asr_model == "se4lip"
    assert parse("--asr_model", "se4lip").asr_model == "se4lip"  # se4lip is a value of the native flag too
    assert parse("--audio_feature", "hubert").asr_model == "hubert"
    assert parse().asr_model == "deepspeech"
    with pytest.raises(SystemExit):
        parse("--audio_feature", "se4Lip")


def test_synctalk_self_driven_extracts_and_sizes_the_network(checkout, data, default_weights, caplog):
    checkout("synctalk")
    network = importlib.import_module("nerf_triplane.network")
    provider = importlib.import_module("nerf_triplane.provider")
    opt = synctalk_opt(data)
    with caplog.at_level(logging.INFO, logger="se4lip_features"):
        model = network.NeRFNetwork(opt)
    assert "not found: extracting it from" in caplog.text and (data / "aud_se4lip.npy").exists()
    meta = json.loads((data / "aud_se4lip.json").read_text())
    assert meta["dim"] == DIM == model.audio_in_dim == model.audio_net.encoder_conv[0].in_channels
    dataset = provider.NeRFDataset(opt, "cpu", "train")
    assert dataset.auds.shape == (N_TRAIN, DIM, 16) and dataset.auds.dtype == torch.float32
    window = dataset.window(5)
    assert window.shape == (8, DIM, 16)
    assert model.encode_audio(window).shape == (8, 32)


def test_synctalk_features_reach_the_renderers_device(checkout, data, default_weights):
    checkout("synctalk")
    provider = importlib.import_module("nerf_triplane.provider")
    lazy = provider.NeRFDataset(synctalk_opt(data, preload=0), torch.device("meta"), "train")
    assert lazy.auds.device.type == "cpu" and lazy.window(3).device.type == "meta"  # moved per batch
    preloaded = provider.NeRFDataset(synctalk_opt(data, preload=2), torch.device("meta"), "train")
    assert preloaded.auds.device.type == "meta"  # --preload 2 moves them up front, as for its own features


def test_synctalk_cross_driven_npy_or_wav(checkout, data, default_weights, tmp_path):
    checkout("synctalk")
    provider = importlib.import_module("nerf_triplane.provider")
    wav = tmp_path / "speech.wav"
    write_wav(wav, 2.0)
    npy = tmp_path / "speech_se4lip.npy"
    extract_file(wav, npy)
    from_npy = provider.NeRFDataset(synctalk_opt(data, aud=str(npy)), "cpu", "test").auds
    from_wav = provider.NeRFDataset(synctalk_opt(data, aud=str(wav)), "cpu", "test").auds
    assert from_npy.shape == (50, DIM, 16)
    torch.testing.assert_close(from_wav, from_npy)


def test_synctalk_cross_driven_errors_raise(checkout, data, default_weights, tmp_path):
    checkout("synctalk")
    provider = importlib.import_module("nerf_triplane.provider")

    def load(aud):
        return provider.NeRFDataset(synctalk_opt(data, aud=str(aud)), "cpu", "test")

    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load(tmp_path / "missing.wav")
    wav = tmp_path / "speech.wav"
    write_wav(wav, 1.0)
    other = tmp_path / "other.npy"
    extract_file(wav, other, weights=str(default_weights["other"]))
    with pytest.raises(FeatureError, match="made with weights other .* come from tiny"):
        load(other)
    wide = tmp_path / "wide.npy"
    extract_file(wav, wide, weights=str(default_weights["wide"]))
    with pytest.raises(FeatureError, match="dim 40, but the avatar's features .* have dim 24"):
        load(wide)
    sidecar_path(wide).unlink()
    with pytest.raises(FileNotFoundError, match="wide.json"):
        load(wide)
    (tmp_path / "speech.txt").write_text("not audio")  # any file goes to se4lip-extract, which names the problem
    with pytest.raises(ValueError, match="speech.txt"):
        load(tmp_path / "speech.txt")


def test_wav_is_extracted_with_the_avatars_own_weights(data, default_weights, tmp_path):
    """Test audio gets the weights of the training features (fine-tuned here), found by the sidecar's source."""
    finetuned = tmp_path / "finetuned.safetensors"
    shutil.copy(default_weights["other"], finetuned)
    extract_file(data / "aud.wav", data / "aud_se4lip.npy", weights=str(finetuned))
    wav = tmp_path / "speech.wav"
    write_wav(wav, 1.0)
    expected = tmp_path / "expected.npy"
    extract_file(wav, expected, weights=str(default_weights["other"]))
    np.testing.assert_array_equal(common.load_features(data, wav, "aud_id"), np.load(expected))
    finetuned.unlink()  # gone: the default weights are not these, so no silent substitute
    with pytest.raises(FeatureError, match=r"trained on features from weights finetuned \(\w{12}\), which cannot "
                                           r"be used here .*no such weights file.*--weights PATH_TO_THOSE"):
        common.load_features(data, wav, "aud_id")


def test_hub_weights_are_recorded_by_their_address(data, default_weights, monkeypatch):
    uri = "hf://owner/repo/tuned.safetensors@v1"
    monkeypatch.setattr(weights, "_from_hub", lambda name: default_weights["other"])
    meta = extract_file(data / "aud.wav", data / "aud_se4lip.npy", weights=uri)
    assert meta["weights"] == "tuned" and meta["weights_source"] == uri


@pytest.mark.parametrize("rows, ok", [(27, False), (29, True), (31, True), (32, False)])
def test_synctalk_row_count_must_match_frames(checkout, data, rows, ok):
    checkout("synctalk")
    provider = importlib.import_module("nerf_triplane.provider")
    write_features(data / "aud_se4lip.npy", np.zeros((rows, 16, DIM), np.float32))
    if ok:
        assert provider.NeRFDataset(synctalk_opt(data), "cpu", "train").auds.shape == (N_TRAIN, DIM, 16)
    else:
        with pytest.raises(FeatureError, match=f"{rows} feature rows for {N_FRAMES} video frames"):
            provider.NeRFDataset(synctalk_opt(data), "cpu", "train")


def test_synctalk_checkpoints_of_other_features_are_refused(checkout, data, default_weights):
    checkout("synctalk")
    network = importlib.import_module("nerf_triplane.network")
    se4lip_state = network.NeRFNetwork(synctalk_opt(data)).state_dict()
    assert common.TAG in {k.split(".")[-1] for k in se4lip_state}
    missing, unexpected = network.NeRFNetwork(synctalk_opt(data)).load_state_dict(se4lip_state, strict=False)
    assert not missing and not unexpected
    deepspeech = network.NeRFNetwork(synctalk_opt(data, asr_model="deepspeech"))
    # a run on SyncTalk's own features never imports se4lip_features: torch reports the mismatch itself
    assert common.TAG not in {k.split(".")[-1] for k in deepspeech.state_dict()}
    with pytest.raises(RuntimeError, match=r"size mismatch for audio_net.encoder_conv.0.weight"):
        deepspeech.load_state_dict(se4lip_state, strict=False)
    with pytest.raises(CheckpointError, match="trained on 29-dim deepspeech .* built for 24-dim se4lip"):
        network.NeRFNetwork(synctalk_opt(data)).load_state_dict(deepspeech.state_dict(), strict=False)
    # the data directory's features re-extracted with other weights of the same dim: refused too
    extract_file(data / "aud.wav", data / "aud_se4lip.npy", weights=str(default_weights["other"]), force=True)
    with pytest.raises(CheckpointError, match="comes from other weights"):
        network.NeRFNetwork(synctalk_opt(data)).load_state_dict(se4lip_state, strict=False)


def test_synctalk_refuses_emb(checkout, data, default_weights):
    checkout("synctalk")
    network = importlib.import_module("nerf_triplane.network")
    with pytest.raises(ValueError, match="--emb"):
        network.NeRFNetwork(synctalk_opt(data, emb=True))


def test_synctalk_test_video_gets_the_test_audio(checkout, data, default_weights, tmp_path, monkeypatch, caplog):
    checkout("synctalk")
    utils = importlib.import_module("nerf_triplane.utils")
    calls = []
    monkeypatch.setattr(common.subprocess, "run", lambda cmd, check: calls.append(cmd))
    wav = tmp_path / "speech.wav"
    write_wav(wav, 1.0)
    out = tmp_path / "results"
    out.mkdir()
    utils.Trainer(synctalk_opt(data, aud=str(wav))).test(None, save_path=str(out))
    assert calls[-1][-1] == str(out / "ngp_audio.mp4") and str(wav) in calls[-1]
    npy = tmp_path / "speech_se4lip.npy"
    extract_file(wav, npy)  # its sidecar names speech.wav, which lies beside it
    utils.Trainer(synctalk_opt(data, aud=str(npy))).test(None, save_path=str(out))
    assert str(wav) in calls[-1]
    utils.Trainer(synctalk_opt(data)).test(None, save_path=str(out))  # self-driven: nothing to add
    assert len(calls) == 2

    def no_ffmpeg(cmd, check):
        raise FileNotFoundError("ffmpeg")

    monkeypatch.setattr(common.subprocess, "run", no_ffmpeg)
    with caplog.at_level(logging.WARNING, logger="se4lip_features"):  # the render is written: warn, do not fail
        utils.Trainer(synctalk_opt(data, aud=str(wav))).test(None, save_path=str(out))
    assert "could not add the audio to" in caplog.text and "ffmpeg not found" in caplog.text


# -- TalkingGaussian, patched ------------------------------------------------------------------------

def test_talkinggaussian_feature_survives_to_synthesis(checkout, data, tmp_path, monkeypatch):
    checkout("talkinggaussian")
    arguments = importlib.import_module("arguments")
    out = tmp_path / "out"
    out.mkdir()

    def parse(*argv, combined=False):
        parser = argparse.ArgumentParser()
        lp = arguments.ModelParams(parser)
        monkeypatch.setattr(sys, "argv", ["script.py", "-s", str(data), "-m", str(out), *argv])
        args = arguments.get_combined_args(parser) if combined else parser.parse_args(sys.argv[1:])
        return lp.extract(args)

    trained = parse("--audio_feature", "se4lip")  # train_mouth.py / train_face.py / train_fuse.py
    assert trained.audio_extractor == "se4lip"
    assert parse("--audio_extractor", "se4lip").audio_extractor == "se4lip"
    arguments.save_config(trained)
    assert parse(combined=True).audio_extractor == "se4lip"  # synthesize_fuse.py without the flag
    assert parse("--audio_feature", "se4lip", combined=True).audio_extractor == "se4lip"
    assert parse("--audio_extractor", "hubert", combined=True).audio_extractor == "hubert"


def test_talkinggaussian_networks_and_cameras(checkout, data, default_weights):
    checkout("talkinggaussian")
    motion_net = importlib.import_module("scene.motion_net")
    readers = importlib.import_module("scene.dataset_readers")
    args = argparse.Namespace(source_path=str(data), audio="", audio_extractor="se4lip")
    nets = [motion_net.MotionNetwork(args=args), motion_net.MouthMotionNetwork(args=args)]
    for net in nets:
        assert net.audio_in_dim == DIM == net.audio_net.encoder_conv[0].in_channels
    for split, n in (("transforms_train.json", N_TRAIN), ("transforms_val.json", N_FRAMES - N_TRAIN)):
        cameras = readers.readCamerasFromTransforms(str(data), split, False, ".jpg", "", "se4lip")
        assert len(cameras) == n and cameras[0]["img_id"] == (0 if n == N_TRAIN else N_TRAIN)
        auds = cameras[-1]["auds"]
        assert auds.shape == (8, DIM, 16) and auds.dtype == torch.float32
        assert nets[1].encode_audio(auds).shape == (8, 32)


def test_talkinggaussian_cross_driven_warns_when_cameras_run_out(checkout, data, default_weights, tmp_path,
                                                                caplog):
    checkout("talkinggaussian")
    readers = importlib.import_module("scene.dataset_readers")
    wav = tmp_path / "speech.wav"
    write_wav(wav, 2.0)
    with caplog.at_level(logging.WARNING, logger="se4lip_features"):
        cameras = readers.readCamerasFromTransforms(str(data), "transforms_val.json", False, ".jpg", str(wav), "se4lip")
    assert len(cameras) == 3 and cameras[0]["auds"].shape == (8, DIM, 16)
    assert "transforms_val.json has 3 cameras for the 50 frames" in caplog.text
    with pytest.raises(ValueError, match="is a directory, not an audio file"):
        readers.readCamerasFromTransforms(str(data), "transforms_val.json", False, ".jpg", str(data), "se4lip")


def test_talkinggaussian_refuses_other_checkpoints_and_lengths(checkout, data, default_weights):
    checkout("talkinggaussian")
    motion_net = importlib.import_module("scene.motion_net")
    readers = importlib.import_module("scene.dataset_readers")
    args = argparse.Namespace(source_path=str(data), audio="", audio_extractor="se4lip")
    state = motion_net.MouthMotionNetwork(args=args).state_dict()
    motion_net.MouthMotionNetwork(args=args).load_state_dict(state)  # strict, as train_fuse.py loads
    hubert = motion_net.MouthMotionNetwork(args=argparse.Namespace(**{**vars(args), "audio_extractor": "hubert"}))
    with pytest.raises(CheckpointError, match="trained on 1024-dim hubert .* pass the --audio_extractor value"):
        motion_net.MouthMotionNetwork(args=args).load_state_dict(hubert.state_dict(), strict=False)
    with pytest.raises(RuntimeError, match="size mismatch"):  # a hubert run: the renderer's own error
        hubert.load_state_dict(state, strict=False)
    write_features(data / "aud_se4lip.npy", np.zeros((35, 16, DIM), np.float32))
    with pytest.raises(FeatureError, match="35 feature rows for 30 video frames"):
        readers.readCamerasFromTransforms(str(data), "transforms_train.json", False, ".jpg", "", "se4lip")


def _ffmpeg():
    """An ffmpeg to run: the system's, else imageio-ffmpeg's binary (the dev extra); None without either."""
    if shutil.which("ffmpeg"):
        return shutil.which("ffmpeg")
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


@needs_av
@pytest.mark.skipif(_ffmpeg() is None, reason="no ffmpeg: neither on PATH nor imageio-ffmpeg (pip install -e '.[dev]')")
def test_mux_audio_runs_ffmpeg_and_the_video_carries_the_test_audio(tmp_path, monkeypatch):
    import av
    import soundfile

    from se4lip_features import audio

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(_ffmpeg())  # found by name, as the renderers' users have it
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    video = tmp_path / "ngp_ep0001.mp4"  # a silent 2 s render, 25 fps
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    t = np.arange(2 * audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.5)).astype(np.float32)  # silent for 0.5 s, then a tone
    wav = tmp_path / "test.wav"
    soundfile.write(wav, tone, audio.SAMPLE_RATE)

    muxed = common.mux_audio(wav, video)
    assert muxed == tmp_path / "ngp_ep0001_audio.mp4"
    with av.open(str(muxed)) as inp:
        assert inp.streams.video[0].frames in (0, 50) and len(inp.streams.audio) == 1
        n_frames = sum(1 for _ in inp.decode(video=0))
    assert n_frames == 50  # the render's frames, copied
    heard = audio.load_audio(muxed)
    assert abs(len(heard) - len(tone)) < 0.05 * audio.SAMPLE_RATE  # -shortest: the 2 s of both
    onset = np.flatnonzero(np.abs(heard) > 0.1)[0] / audio.SAMPLE_RATE
    assert onset == pytest.approx(0.5, abs=0.03)  # the tone starts where it starts in test.wav

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # without ffmpeg: the silent render stays, no error
    assert common.mux_audio(wav, video) is None and video.is_file()


def test_a_second_patcher_of_a_checkout_fails_at_once(tmp_path, capsys):
    """A patch and a revert of one checkout at once each staged the files as the other found them (issue 21)."""
    from se4lip_features import atomic

    root = copy_checkout("synctalk", tmp_path / "synctalk", "\n")
    before = snapshot(root)
    with atomic.exclusive(root):  # another se4lip-patch, still at work
        assert patch.main(["synctalk", str(root)]) == 1
        assert patch.main(["synctalk", str(root), "--revert"]) == 1
    busy = f"se4lip-patch: {root}: another se4lip tool is writing it now; wait for it to finish or choose another " \
           "output"
    assert capsys.readouterr().err.splitlines() == [busy] * 2
    assert snapshot(root) == before
    assert patch.main(["synctalk", str(root)]) == 0  # and once it is done, the next one runs


def _older_version(renderer):
    """The renderer's table as another se4lip-patch version might have it: the same places, other lines."""
    import dataclasses

    def older(item):
        if isinstance(item, (engine.New, engine.Swap)):
            return dataclasses.replace(item, text=item.text.replace(engine.MARK, "# older " + engine.MARK))
        return item

    return dataclasses.replace(renderer, edits=tuple(dataclasses.replace(e, patched=tuple(map(older, e.patched)))
                                                     for e in renderer.edits))


@pytest.mark.parametrize("renderer", ["synctalk", "gaussiantalker"])
def test_a_checkout_patched_by_another_version_is_reverted_or_repatched(tmp_path, capsys, monkeypatch, renderer):
    """A checkout patched by another version could be neither patched nor reverted (issue 21)."""
    fresh = copy_checkout(renderer, tmp_path / "fresh", "\n")
    original = snapshot(fresh)
    assert patch.main([renderer, str(fresh)]) == 0
    for mode in ("patch", "revert"):
        root = copy_checkout(renderer, tmp_path / mode, "\n")
        with monkeypatch.context() as m:
            m.setitem(patch.RENDERERS, renderer, _older_version(patch.RENDERERS[renderer]))
            assert patch.main([renderer, str(root)]) == 0
        assert "# older # se4lip-patch" in "".join(v.decode() for v in snapshot(root).values() if b"older" in v)
        if mode == "patch":  # taken back to the original, then patched by this version: as a fresh patch
            assert patch.main([renderer, str(root)]) == 0
            assert snapshot(root) == snapshot(fresh)
        assert patch.main([renderer, str(root), "--revert"]) == 0
        assert snapshot(root) == original
    # patched by a version that kept no record (or edited since): refused, nothing changed, the way out named
    root = copy_checkout(renderer, tmp_path / "norecord", "\n")
    with monkeypatch.context() as m:
        m.setitem(patch.RENDERERS, renderer, _older_version(patch.RENDERERS[renderer]))
        assert patch.main([renderer, str(root)]) == 0
    (root / engine.RUNTIME / engine.RESTORE).unlink()
    before = snapshot(root)
    capsys.readouterr()
    assert patch.main([renderer, str(root), "--revert"]) == 1
    err = capsys.readouterr().err
    assert "not edits of this version of se4lip-patch" in err and "git checkout" in err and engine.RESTORE in err
    assert snapshot(root) == before
