"""Reliability (issue #13): every mistake is one line and an exit status, nothing half-written or mixed is left
behind (signals, concurrent writers, a full disk), --force never deletes what the tools did not write, and
non-finite numbers never pass for results."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import CLIPS, GRID, SPEECH, ReplayDetector, needs_av, tiny_model
from se4lip_features.adapters import patch

from se4lip_features import atomic, extract, sidecar, weights
from se4lip_features.cli import eval_main, extract_main, finetune_main, prepare_main, train_main

TINY_RECIPE = ["--clips-per-batch", "2", "--lip-span", "4", "--speech-margin", "3", "--val-clips", "2",
               "--val-every", "2", "--warmup-steps", "1", "--no-bf16"]
TINY_FLAGS = [*TINY_RECIPE, "--gru-hidden", "16", "--gru-layers", "2", "--embed-dim", "32"]


def write_weights(path, model, config=None, nan=False):
    """A weights file as weights.save writes it, but with any config and, with ``nan``, a NaN in one tensor
    (weights.save refuses to write those)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if nan:
        state["speech.proj.bias"][0] = float("nan")
    meta = {"format": weights.FORMAT, "config": json.dumps(config or model.config.to_dict()),
            "tensors_sha256": weights.tensors_sha256(state)}
    save_file(state, str(path), metadata=meta)
    return path


def files(root):
    """Every file and folder under ``root``, hidden ones (temporaries) included."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def write_wav(path, seconds, gain=1.0):
    wav, sr = soundfile.read(SPEECH, dtype="float32")
    wav = np.tile(wav, int(np.ceil(seconds * sr / len(wav))))[: round(seconds * sr)]
    soundfile.write(path, wav * gain, sr)
    return path


def audio_only_mp4(path):
    import av

    wav, sr = soundfile.read(SPEECH, dtype="int16")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=sr)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wav[None, :], format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# -- one line and an exit status for every mistake, and nothing left behind ------------------------------

def _setup_force(tmp):
    (tmp / "videos").mkdir()
    shutil.copy(GRID / f"{CLIPS[0]}.mp4", tmp / "videos")
    (tmp / "videos" / "notes.txt").write_text("mine")


def _setup_bad_config(tmp):
    config = dict(tiny_model(0).config.to_dict(), embed_dim="32")
    write_weights(tmp / "bad.safetensors", tiny_model(0), config=config)


def _setup_nan(tmp):
    write_weights(tmp / "nan.safetensors", tiny_model(0), nan=True)


def _setup_ckpt(tmp):
    (tmp / "run").mkdir()
    torch.save({"model": tiny_model(0).state_dict()}, tmp / "run" / "ckpt.pt")
    data = (tmp / "run" / "ckpt.pt").read_bytes()
    (tmp / "run" / "ckpt.pt").write_bytes(data[: len(data) // 2])


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint does)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _setup_crafted_ckpt(tmp):
    (tmp / "run").mkdir()
    torch.save({"model": _RunsCode(tmp / "PWNED")}, tmp / "run" / "ckpt.pt")


def _setup_not_a_ckpt(tmp):
    torch.save([1, 2, 3], tmp / "list.pt")


def _setup_finished_run(tmp):
    (tmp / "run").mkdir()
    for name in ("final.safetensors", "history.json", "split.json", "training.png"):  # its ckpt.pt deleted
        (tmp / "run" / name).write_text("a finished run")


def _setup_ids(content):
    def setup(tmp):
        (tmp / "ids.json").write_text(content)
    return setup


def _setup_plot(tmp):
    (tmp / "plot.png").write_text("a file")


def _setup_audio_only(tmp):
    audio_only_mp4(tmp / "talk.mp4")


ARG = "{w}"  # the tiny weights
CASES = {  # name: (main, argv, setup, exit status, the line on stderr; * matches anything)
    # se4lip-extract
    "extract config of a wrong type": (
        extract_main, ["{speech}", "-o", "{tmp}/out.npy", "--weights", "{tmp}/bad.safetensors"], _setup_bad_config,
        1, ("se4lip-extract: {tmp}/bad.safetensors: unusable model config in its metadata (*embed_dim must be int, "
           "got '32'*)")),
    "extract NaN weights": (
        extract_main, ["{speech}", "-o", "{tmp}/out.npy", "--weights", "{tmp}/nan.safetensors"], _setup_nan, 1,
        ("se4lip-extract: {tmp}/nan.safetensors: tensor speech.proj.bias holds NaN or infinite values; these weights "
        "cannot be used")),
    "extract --device mps": (
        extract_main, ["{speech}", "-o", "{tmp}/out.npy", "--weights", ARG, "--device", "mps"], None, 1,
        "se4lip-extract: device 'mps': SE4Lip runs on cpu or cuda"),
    "extract --device xla": (
        extract_main, ["{speech}", "-o", "{tmp}/out.npy", "--weights", ARG, "--device", "xla"], None, 1,
        "se4lip-extract: device 'xla': SE4Lip runs on cpu or cuda"),
    # se4lip-prepare
    "prepare --force onto its input folder": (
        prepare_main, ["{tmp}/videos", "-o", "{tmp}/videos", "--force"], _setup_force, 1,
        ("se4lip-prepare: {tmp}/videos: exists and is not a dataset written by se4lip-prepare, so --force does not "
        "replace it; remove it yourself or choose another -o")),
    "prepare a wav": (
        prepare_main, ["{speech}", "-o", "{tmp}/data"], None, 1,
        ("se4lip-prepare: no usable video, nothing written: {speech}: has no video stream (lips need a video), "
        "skipped")),
    "prepare an audio-only mp4": (
        prepare_main, ["{tmp}/talk.mp4", "-o", "{tmp}/data"], _setup_audio_only, 1,
        ("se4lip-prepare: no usable video, nothing written: {tmp}/talk.mp4: has no video stream (lips need a "
        "video), skipped")),
    "prepare --fps 0": (
        prepare_main, ["{tmp}", "-o", "{tmp}/data", "--fps", "0"], None, 2,
        "se4lip-prepare: error: argument --fps: must be positive and at most 240, got 0"),
    "prepare --fps 1e300": (prepare_main, ["{tmp}", "-o", "{tmp}/data", "--fps", "1e300"], None, 2,
                            "se4lip-prepare: error: argument --fps: must be positive and at most 240, got 1e300"),
    # se4lip-train
    "train --steps -3": (train_main, ["{data}", "-o", "{tmp}/run", "--steps", "-3"], None, 2,
                         "se4lip-train: error: --steps must be at least 1, got -3"),
    "train --steps 0": (train_main, ["{data}", "-o", "{tmp}/run", "--steps", "0"], None, 2,
                        "se4lip-train: error: --steps must be at least 1, got 0"),
    "train --val-every 0": (train_main, ["{data}", "-o", "{tmp}/run", "--val-every", "0"], None, 2,
                            "se4lip-train: error: --val-every must be at least 1, got 0"),
    "train --temperature 0": (train_main, ["{data}", "-o", "{tmp}/run", "--temperature", "0"], None, 2,
                              "se4lip-train: error: --temperature must be positive and finite, got 0.0"),
    "train --window-frames 0": (
        train_main, ["{data}", "-o", "{tmp}/run", "--window-frames", "0"], None, 2,
        "se4lip-train: error: --window-frames must be odd and positive (frames centred on one), got 0"),
    "train --window-frames 4": (
        train_main, ["{data}", "-o", "{tmp}/run", "--window-frames", "4"], None, 2,
        "se4lip-train: error: --window-frames must be odd and positive (frames centred on one), got 4"),
    "train --embed-dim 0": (train_main, ["{data}", "-o", "{tmp}/run", "--embed-dim", "0"], None, 2,
                            "se4lip-train: error: --embed-dim must be at least 1, got 0"),
    "train --resume without a checkpoint": (
        train_main, ["{data}", "-o", "{tmp}/run", "--resume"], None, 1,
        "se4lip-train: {tmp}/run/ckpt.pt: no checkpoint to resume; start the run without --resume"),
    "train --resume a truncated checkpoint": (
        train_main, ["{data}", "-o", "{tmp}/run", "--resume", *TINY_FLAGS], _setup_ckpt, 1,
        "se4lip-train: {tmp}/run/ckpt.pt: damaged or not a se4lip-train checkpoint (*); start a new run"),
    "train into a finished run without its checkpoint": (
        train_main, ["{data}", "-o", "{tmp}/run", *TINY_FLAGS], _setup_finished_run, 1,
        "se4lip-train: {tmp}/run: exists and is not empty; a new run goes into a new or empty folder (-o)"),
    "train -o naming a file": (
        train_main, ["{data}", "-o", "{tmp}/plot.png", *TINY_FLAGS], _setup_plot, 1,
        "se4lip-train: -o {tmp}/plot.png: exists and is not a folder"),
    "train that fails leaves no folder": (  # no clip holds 40-frame lip windows: refused after split.json
        train_main, ["{data}", "-o", "{tmp}/run", *TINY_FLAGS, "--lip-span", "40"], None, 1,
        "se4lip-train: no clip has a run of valid, voiced lip windows to train on"),
    "train --resume a checkpoint that runs code": (  # loading it must not run it: files(tmp) shows no PWNED
        train_main, ["{data}", "-o", "{tmp}/run", "--resume", *TINY_FLAGS], _setup_crafted_ckpt, 1,
        ("se4lip-train: {tmp}/run/ckpt.pt: not a se4lip-train checkpoint: it holds objects other than tensors and "
         "plain values, and loading those could run code, so nothing in it was loaded (*)")),
    "finetune -o a released name": (
        finetune_main, ["{speech}", "-o", "{tmp}/se4lip-grid-s1-melcnn-v1.safetensors"], None, 1,
        ("se4lip-finetune: -o {tmp}/se4lip-grid-s1-melcnn-v1.safetensors: se4lip-grid-s1-melcnn-v1 is a released "
         "name, which only its own file may carry; name your fine-tuned weights otherwise")),
    # se4lip-eval
    "eval lmd on a .pt that is not a checkpoint": (
        eval_main, ["lmd", "{data}", "{tmp}/list.pt", "-o", "{tmp}/probe"], _setup_not_a_ckpt, 1,
        ("se4lip-eval lmd: {tmp}/list.pt: damaged or not a se4lip-train checkpoint (TypeError: holds a list, not "
         "a dict); start a new run")),
    "eval lmd --seeds -1": (eval_main, ["lmd", "{data}", "log-mel", "-o", "{tmp}/probe", "--seeds", "-1"], None, 2,
                            "se4lip-eval lmd: error: argument --seeds: must be 0 or more, got -1"),
    "eval lmd the same weights twice": (
        eval_main, ["lmd", "{data}", "{w}", "{w}", "-o", "{tmp}/probe"], None, 1, "se4lip-eval lmd: {w}: given twice"),
    "eval sync --ids missing": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--ids", "{tmp}/none.json"], None, 1,
        "se4lip-eval: --ids {tmp}/none.json: no such file"),
    "eval sync --ids without val": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--ids", "{tmp}/ids.json"], _setup_ids('{"train": []}'), 1,
        ("se4lip-eval: --ids {tmp}/ids.json: a JSON file needs a 'val' list of clip ids (as in a run's split.json), "
         "or to be a list")),
    "eval sync --ids not JSON": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--ids", "{tmp}/ids.json"], _setup_ids('{"val": [x'), 1,
        "se4lip-eval: --ids {tmp}/ids.json: not valid JSON (*)"),
    "eval sync --ids partly matching": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--ids", "{tmp}/ids.json"],
        _setup_ids('["bbaf2n@0", "bbaf2n@99"]'), 1,
        ("se4lip-eval: --ids {tmp}/ids.json: 1 of its 2 ids are not clips of {data} (e.g. bbaf2n@99); give only "
         "the dataset's clips")),
    "finetune --holdout 1.5": (finetune_main, ["{speech}", "-o", "{tmp}/me.safetensors", "--holdout", "1.5"], None, 2,
                               "se4lip-finetune: error: argument --holdout: must be between 0 and 1, got 1.5"),
    "extract -o x.npy with only x.json there": (
        extract_main, ["{speech}", "-o", "{tmp}/x.npy", "--weights", "{w}"],
        lambda tmp: (tmp / "x.json").write_text("{}"),
        1, "se4lip-extract: {tmp}/x.json: exists (use --force to overwrite)"),
    "extract --force onto a JSON of the user's": (
        extract_main, ["{speech}", "-o", "{tmp}/x.npy", "--weights", "{w}", "--force"],
        lambda tmp: (tmp / "x.json").write_text("{}"), 1,
        ("se4lip-extract: {tmp}/x.json: exists and is not the sidecar of a feature file, so --force does not replace "
         "it; move it away or name another output than x.npy")),
    "extract an input onto itself": (
        extract_main, ["{tmp}/in.npy", "-o", "{tmp}/in.npy", "--force"], lambda tmp: (tmp / "in.npy").write_text("x"),
        1, "se4lip-extract: {tmp}/in.npy: would be overwritten by its own features; choose another -o"),
    "extract a FIFO": (extract_main, ["{tmp}/fifo", "-o", "{tmp}/f.npy"], lambda tmp: os.mkfifo(tmp / "fifo"), 1,
                       "se4lip-extract: {tmp}/fifo: not a regular file"),
    "eval sync --ids matching no clip": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--ids", "{tmp}/ids.json"], _setup_ids('{"val": ["x"]}'),
        1, "se4lip-eval: --ids {tmp}/ids.json: none of its 1 ids is a clip of {data} (6 clips)"),
    "eval sync -o in a missing folder": (
        eval_main, ["sync", "{data}", "--weights", ARG, "-o", "{tmp}/missing/sync.json"], None, 1,
        "se4lip-eval: -o {tmp}/missing/sync.json: its folder does not exist"),
    "eval sync -o naming a new folder": (
        eval_main, ["sync", "{data}", "--weights", ARG, "-o", "{tmp}/newdir/"], None, 1,
        "se4lip-eval: -o {tmp}/newdir/: names a folder; name the JSON file to write"),
    "eval sync -o in a read-only folder": (
        eval_main, ["sync", "{data}", "--weights", ARG, "-o", "{tmp}/ro/s.json"], lambda tmp: (tmp / "ro").mkdir(0o555),
        1, "se4lip-eval: -o {tmp}/ro/s.json: its folder is not writable"),
    "eval sync --plot in a read-only folder": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--plot", "{tmp}/ro/plots"],
        lambda tmp: (tmp / "ro").mkdir(0o555),
        1, "se4lip-eval: --plot {tmp}/ro/plots: {tmp}/ro is not writable"),
    "eval sync --plot naming a file": (
        eval_main, ["sync", "{data}", "--weights", ARG, "--plot", "{tmp}/plot.png"], _setup_plot, 1,
        "se4lip-eval: --plot {tmp}/plot.png: exists and is not a folder"),
    "eval sync on a wav": (
        eval_main, ["sync", "{speech}", "--weights", ARG], None, 1,
        ("se4lip-eval: no usable video, nothing written: {speech}: has no video stream (lips need a video), "
        "skipped")),
    "eval lmd on NaN weights": (
        eval_main, ["lmd", "{data}", "{tmp}/nan.safetensors", "-o", "{tmp}/probe"], _setup_nan, 1,
        ("se4lip-eval lmd: {tmp}/nan.safetensors: tensor speech.proj.bias holds NaN or infinite values; these "
        "weights cannot be used")),
    "eval lmd -o naming a file": (
        eval_main, ["lmd", "{data}", "log-mel", "-o", "{tmp}/plot.png"], _setup_plot, 1,
        "se4lip-eval lmd: -o {tmp}/plot.png: exists and is not a folder"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_mistake_is_one_line_and_leaves_nothing(name, tmp_path, capfd, tiny_weights, grid_dataset):
    main, argv, setup, status, line = CASES[name]
    if "mp4" in name or "prepare a wav" in name or "on a wav" in name:
        pytest.importorskip("av")
    if name in ("prepare a wav", "eval sync on a wav", "prepare an audio-only mp4"):
        pytest.importorskip("mediapipe")
    if "read-only" in name and os.geteuid() == 0:
        pytest.skip("root writes into folders without write permission (a read-only mount stops it too)")
    if setup:
        setup(tmp_path)
    before = files(tmp_path)
    dataset_before = files(grid_dataset)
    paths = {"tmp": tmp_path, "w": tiny_weights, "speech": SPEECH, "data": grid_dataset}
    try:
        got = main([arg.format(**paths) for arg in argv])
    except SystemExit as exit:  # argparse's own checks exit (status 2) instead of returning
        got = exit.code
    assert got == status
    err = capfd.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    if status == 1:  # argparse's own errors (status 2) come after its usage line
        assert len(err) == 1, err
    pattern = ".*".join(re.escape(part.format(**paths)) for part in line.split("*"))
    assert re.fullmatch(pattern, err[-1]), err[-1]
    assert files(tmp_path) == before  # nothing written, nothing deleted, no temporary left
    assert files(grid_dataset) == dataset_before


def test_upper_case_npy_output_is_a_file(tmp_path, tiny_weights, capfd):
    assert extract_main([str(SPEECH), "-o", str(tmp_path / "UP.NPY"), "--weights", str(tiny_weights)]) == 0
    assert (tmp_path / "UP.NPY").is_file() and (tmp_path / "UP.json").is_file()


def test_force_replaces_a_dataset_it_wrote(tmp_path, capfd):
    """--force replaces a folder holding a prepared dataset (its meta.json marks it), and an empty one."""
    from se4lip_features.training import data

    out = tmp_path / "data"
    out.mkdir()
    assert data.is_prepared(out)  # empty: nothing to lose
    data.prepare_videos([GRID / f"{c}.mp4" for c in CLIPS], out, detector=ReplayDetector(), progress=False)
    assert data.is_prepared(out)
    (out / "runs" / "mine").mkdir(parents=True)  # the user's own files inside the dataset folder (issue 21, H7)
    (out / "runs" / "mine" / "final.safetensors").write_text("weights")
    (out / "NOTES.md").write_text("notes")
    data.prepare_videos([GRID / f"{c}.mp4" for c in CLIPS], out, detector=ReplayDetector(), progress=False,
                        segment_s=1.0)
    assert len(data.PreparedData(out).clips) == 6
    assert (out / "NOTES.md").read_text() == "notes" and (out / "runs" / "mine" / "final.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "audio.npy", "landmarks.npy", "lips.npy",
                                                     "meta.json", "runs", "valid.npy"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a dataset written by se4lip-prepare"):
        data.prepare_videos([GRID / f"{c}.mp4" for c in CLIPS], tmp_path / "mine", detector=ReplayDetector(),
                            progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


@needs_av
def test_a_video_without_audio_or_frames_is_skipped_not_the_run(tmp_path, caplog):
    from se4lip_features.training import data

    videos = [GRID / f"{CLIPS[0]}.mp4", audio_only_mp4(tmp_path / "talk.mp4"), GRID / f"{CLIPS[1]}.mp4", SPEECH]
    with caplog.at_level(logging.WARNING):
        meta = data.prepare_videos(videos, tmp_path / "data", detector=ReplayDetector(), progress=False)
    assert [c["id"] for c in meta["clips"]] == list(CLIPS)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{tmp_path / 'talk.mp4'}: has no video stream (lips need a video), skipped",
        f"{SPEECH}: has no video stream (lips need a video), skipped"]



def test_an_undecodable_video_is_one_line_naming_it(tmp_path):
    from se4lip_features.training import lips

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError) as err:
        lips.read_video(junk)
    assert str(err.value) == f"{junk}: cannot decode video (Invalid data found when processing input)"


# -- extraction: non-finite features, pairs, warnings -------------------------------------------------

@needs_av
@pytest.mark.parametrize("suffix, stated, held", [(".mp3", "3.60", "1.77"), (".mp4", "2.98", "1.41")])
def test_truncated_compressed_media_warn(tmp_path, extractor, caplog, suffix, stated, held):
    if suffix == ".mp3":
        wav, sr = soundfile.read(write_wav(tmp_path / "full.wav", 3.6), dtype="float32")
        soundfile.write(tmp_path / "full.mp3", wav, sr)
    else:
        shutil.copy(GRID / f"{CLIPS[0]}.mp4", tmp_path / "full.mp4")
    data = (tmp_path / f"full{suffix}").read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * (0.5 if suffix == ".mp3" else 0.6))])
    with caplog.at_level(logging.WARNING):
        extract.extract_file(cut, tmp_path / "cut.npy", extractor=extractor)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cut}: truncated: its header states {stated} s, its data holds {held} s"]


def test_truncated_ogg_warns(tmp_path, extractor, caplog):
    wav, sr = soundfile.read(write_wav(tmp_path / "full.wav", 3.6), dtype="float32")
    soundfile.write(tmp_path / "full.ogg", wav, sr)
    with caplog.at_level(logging.WARNING):
        extract.extract_file(tmp_path / "full.ogg", tmp_path / "full.npy", extractor=extractor)
    assert not caplog.records
    data = (tmp_path / "full.ogg").read_bytes()
    (tmp_path / "cut.ogg").write_bytes(data[: len(data) // 2])  # an Ogg header states no length: cut mid-page
    with caplog.at_level(logging.WARNING):
        extract.extract_file(tmp_path / "cut.ogg", tmp_path / "cut.npy", extractor=extractor)
    assert caplog.messages == [f"{tmp_path / 'cut.ogg'}: truncated: the file ends inside an Ogg page"]


def test_extraction_never_writes_non_finite_features(tmp_path):
    model = tiny_model(0)
    with torch.no_grad():
        model.speech.proj.bias[0] = float("nan")
    nan = extract.Extractor(model, {"name": "nan", "sha256": "0" * 64}, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"out\.npy: features of frame 0 are not finite"):
        extract.extract_file(SPEECH, tmp_path / "out.npy", extractor=nan)
    assert files(tmp_path) == []


def test_weights_are_never_saved_non_finite(tmp_path):
    model = tiny_model(0)
    with torch.no_grad():
        model.speech.proj.bias[0] = float("inf")
    with pytest.raises(ValueError, match="tensor speech.proj.bias holds NaN or infinite values"):
        weights.save(model, tmp_path / "w.safetensors", fp16=False)
    assert files(tmp_path) == []


def test_a_sidecar_that_cannot_be_replaced_keeps_the_old_pair(tmp_path, extractor, monkeypatch):
    out = tmp_path / "out.npy"
    extract.extract_file(SPEECH, out, extractor=extractor)
    old = out.read_bytes(), out.with_suffix(".json").read_bytes()
    other = write_wav(tmp_path / "other.wav", 2.0)
    replace = os.replace

    def failing(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(13, "Permission denied", str(dst))
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing)
    with pytest.raises(OSError, match="Permission denied"):
        extract.extract_file(other, out, extractor=extractor, force=True)
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == old
    assert files(tmp_path) == ["other.wav", "out.json", "out.npy"]


def test_truncated_and_quiet_audio_warn(tmp_path, extractor, caplog):
    full = write_wav(tmp_path / "full.wav", 3.6)
    data = full.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    write_wav(tmp_path / "quiet.wav", 1.2, gain=0.1)  # -20 dB
    with caplog.at_level(logging.WARNING):
        extract.extract_file(full, tmp_path / "full.npy", extractor=extractor)
        assert not caplog.records
        extract.extract_file(tmp_path / "cut.wav", tmp_path / "cut.npy", extractor=extractor)
        extract.extract_file(tmp_path / "quiet.wav", tmp_path / "quiet.npy", extractor=extractor)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'cut.wav'}: truncated: its header states 3.60 s, its data holds 1.80 s",
        (f"{tmp_path / 'quiet.wav'}: very quiet (peak -21 dBFS, below -20): the features are unreliable; "
        "normalise the audio")]


# -- faults: signals, concurrent writers, a full disk ---------------------------------------------------

# The child restores Python's SIGINT handler (background jobs start with SIGINT ignored, and Python keeps it
# so) and, given FSIZE, limits the size of the files it writes (a full disk), failing with EFBIG, not SIGXFSZ.
EXTRACT = """import os, resource, signal, sys
for name in os.environ.get("IGNORE", "").split():  # as nohup or a shell's background job starts a program
    signal.signal(getattr(signal, name), signal.SIG_IGN)
for name in os.environ.get("DEFAULT", "SIGINT SIGHUP").split():  # as a terminal starts it
    if name not in os.environ.get("IGNORE", ""):
        signal.signal(getattr(signal, name), signal.SIG_DFL if name != "SIGINT" else signal.default_int_handler)
if os.environ.get("FSIZE"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ["FSIZE"]),) * 2)
from se4lip_features.cli import extract_main
sys.exit(extract_main(sys.argv[1:]))
"""


def _extract(*argv, fsize="", ignore=""):
    env = dict(os.environ, OMP_NUM_THREADS="1", FSIZE=str(fsize), IGNORE=ignore)
    return subprocess.Popen([sys.executable, "-c", EXTRACT, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_mid_write_leaves_nothing_and_one_line(tmp_path, tiny_weights, sig):
    source = write_wav(tmp_path / "long.wav", 600.0)
    proc = _extract(source, "-o", tmp_path / "out.npy", "--weights", tiny_weights)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.npy.*.partial")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "extraction ended before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    assert err.strip().splitlines() == [f"se4lip-extract: stopped by {sig.name}; no partial output was kept"]
    assert files(tmp_path) == ["long.wav"]


def test_a_signal_ignored_at_start_stays_ignored(tmp_path, tiny_weights):
    """nohup se4lip-extract ... survives the hangup it was started to survive."""
    source = write_wav(tmp_path / "long.wav", 60.0)
    proc = _extract(source, "-o", tmp_path / "out.npy", "--weights", tiny_weights, ignore="SIGHUP")
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.npy.*.partial")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == "" and out.startswith(f"{tmp_path / 'out.npy'}: 1500 frames")
    assert files(tmp_path) == ["long.wav", "out.json", "out.npy"]


def test_two_writers_of_one_output_never_mix(tmp_path, tiny_weights, extractor):
    a, b = write_wav(tmp_path / "a.wav", 60.0), write_wav(tmp_path / "b.wav", 60.0, gain=0.5)
    out = tmp_path / "out.npy"
    for sources in ((a, b), (a, a)):  # different inputs, and the same input twice
        procs = [_extract(s, "-o", out, "--weights", tiny_weights, "--force") for s in sources]
        results = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        meta = json.loads(out.with_suffix(".json").read_text())
        source = {"a.wav": a, "b.wav": b}[meta["audio"]]
        assert meta["audio_sha256"] == sidecar.sha256_file(source)
        np.testing.assert_array_equal(np.load(out), extractor.extract(*soundfile.read(source, dtype="float32")))
        assert files(tmp_path) == ["a.wav", "b.wav", "out.json", "out.npy"]


def test_a_full_disk_keeps_the_old_pair_and_names_the_file(tmp_path, tiny_weights):
    out = tmp_path / "out.npy"
    assert extract_main([str(SPEECH), "-o", str(out), "--weights", str(tiny_weights)]) == 0  # 61 kB
    old = out.read_bytes(), out.with_suffix(".json").read_bytes()
    source = write_wav(tmp_path / "long.wav", 10.0)  # 512 kB of features

    proc = _extract(source, "-o", out, "--weights", tiny_weights, "--force", fsize=400_000)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [f"se4lip-extract: {out}: cannot write (File too large)"]
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == old
    assert files(tmp_path) == ["long.wav", "out.json", "out.npy"]


# -- training: non-finite losses, resuming -------------------------------------------------------------

def test_a_nan_loss_stops_training_with_the_step(grid_dataset, tmp_path, capfd, monkeypatch):
    from se4lip_features import model

    calls = []

    def nan_at_step_2(*args):
        calls.append(1)
        bce, nce = pair_losses(*args)
        return (bce * float("nan"), nce) if len(calls) == 2 else (bce, nce)

    pair_losses = model.pair_losses  # what SE4Lip.forward computes its losses with
    monkeypatch.setattr(model, "pair_losses", nan_at_step_2)
    run = tmp_path / "run"
    assert train_main([str(grid_dataset), "-o", str(run), "--steps", "4", *TINY_FLAGS,
                       "--front-end", "stft", "--speech-encoder", "gru"]) == 1
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        "se4lip-train: step 2: the loss is nan; training stopped (no checkpoint was written); lower --lr or raise "
        "--temperature")
    assert not run.exists()  # nothing of the run to keep: the folder it made is gone (no temporary either)


def test_resume_restores_the_design_stored_in_the_checkpoint(grid_dataset, tmp_path, capfd):
    run = tmp_path / "run"
    base = [str(grid_dataset), "-o", str(run), "--steps", "2", "--ckpt-every-s", "0"]
    assert train_main([*base, *TINY_FLAGS, "--front-end", "stft", "--speech-encoder", "gru", "--stop-at", "1"]) == 0
    # the defaults (Mel + CNN, 512-d) are not the run's design
    assert train_main([*base, *TINY_RECIPE, "--resume"]) == 0
    model, _ = weights.load(run / "final.safetensors")
    assert (model.config.front_end, model.config.speech_encoder, model.config.embed_dim) == ("stft", "gru", 32)
    assert not [p for p in run.iterdir() if p.name.endswith(".partial")]


# -- se4lip-patch -------------------------------------------------------------------------------------

def test_patch_keeps_a_symlinked_file_a_link(tmp_path, capsys):
    from adapter_helpers import copy_checkout

    root = copy_checkout("synctalk", tmp_path / "synctalk")
    rel = patch.RENDERERS["synctalk"].edits[0].path
    real = tmp_path / "elsewhere.py"
    shutil.move(str(root / rel), real)
    (root / rel).symlink_to(real)
    original = real.read_bytes()
    assert patch.main(["synctalk", str(root)]) == 0
    assert (root / rel).is_symlink() and real.read_bytes() != original
    assert patch.main(["synctalk", str(root), "--revert"]) == 0
    assert (root / rel).is_symlink() and os.readlink(root / rel) == str(real) and real.read_bytes() == original


def test_a_signal_while_patching_leaves_the_checkout_and_no_temporary(tmp_path, monkeypatch, capsys):
    """se4lip-patch stops like the other tools: one line, exit 128 + signal, nothing half written."""
    from adapter_helpers import copy_checkout, snapshot
    from se4lip_features.adapters import engine, patch

    copy_checkout("synctalk", tmp_path / "SyncTalk")
    before = snapshot(tmp_path / "SyncTalk")
    replace = engine.os.replace

    def interrupted(src, dst):  # SIGTERM arrives after the first file is replaced
        replace(src, dst)
        err = KeyboardInterrupt()
        err.signum = signal.SIGTERM
        raise err

    monkeypatch.setattr(engine.os, "replace", interrupted)
    assert patch.main(["synctalk", str(tmp_path / "SyncTalk")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "se4lip-patch: stopped by SIGTERM; no partial output was kept")
    assert snapshot(tmp_path / "SyncTalk") == before


def test_lmd_labels_two_runs_apart(tmp_path, tiny_weights):
    """Two runs' final.safetensors were one row 'se4lip:final' (the first run's numbers lost); each keeps its path."""
    from se4lip_features.analysis import probe

    specs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        specs.append(str(shutil.copy(tiny_weights, tmp_path / run / "final.safetensors")))
    labels = [probe.feature_extractor(spec)[0] for spec in specs + ["log-mel"]]
    assert labels == ["se4lip:final", "se4lip:final", "log-mel"]
    assert probe.unique_labels(specs + ["log-mel"], labels) == [f"se4lip:{specs[0]}", f"se4lip:{specs[1]}", "log-mel"]
    assert probe.unique_labels(specs, ["se4lip:final bf16"] * 2) == [f"se4lip:{s} bf16" for s in specs]


def test_resume_refuses_other_data_and_a_finished_schedule(grid_dataset, tmp_path, capfd):
    """--resume on other data continued silently, and --steps below the run's step printed 'step 32 of 10'."""
    run = tmp_path / "run"
    assert train_main([str(grid_dataset), "-o", str(run), "--steps", "3", "--stop-at", "2", *TINY_FLAGS]) == 0
    capfd.readouterr()
    before = files(run)
    assert train_main([str(grid_dataset), "-o", str(run), "--resume", "--steps", "1", *TINY_FLAGS]) == 1
    assert capfd.readouterr().err.strip() == (f"se4lip-train: {run}/ckpt.pt: the run is at step 2, past --steps 1; "
                                              "resume with --steps 2 or more")
    assert train_main([str(grid_dataset), "-o", str(run), "--resume", "--steps", "3", "--split-seed", "5",
                       *TINY_FLAGS]) == 1
    err = capfd.readouterr().err.strip()
    assert err.startswith(f"se4lip-train: {run}/split.json: the run held out other clips than these datasets do")
    assert files(run) == before


@needs_av
def test_eval_sync_reports_a_short_clip_and_keeps_the_good_one(tmp_path, tiny_weights, capfd):
    """A 0.04 s clip beside a good one ended in a traceback, the good clip's result lost (issue 21, M5, H3)."""
    pytest.importorskip("mediapipe")
    import av

    from se4lip_features.training import lips

    frames, _ = lips.read_video(GRID / f"{CLIPS[0]}.mp4")
    wav, sr = soundfile.read(SPEECH, dtype="int16")
    short = tmp_path / "short.mkv"
    with av.open(str(short), "w") as out:  # one frame and 40 ms of speech
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 360, 288, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=sr)
        sound.layout = "mono"
        for packet in video.encode(av.VideoFrame.from_ndarray(frames[20], format="rgb24")):
            out.mux(packet)
        frame = av.AudioFrame.from_ndarray(wav[None, : sr // 25], format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in (*sound.encode(frame), *sound.encode(), *video.encode()):
            out.mux(packet)
    out_json = tmp_path / "s.json"
    assert eval_main(["sync", str(GRID / f"{CLIPS[0]}.mp4"), str(short), "--weights", str(tiny_weights),
                      "-o", str(out_json)]) == 0
    err = capfd.readouterr().err
    assert "short: too short (1 frames: a search of +-4 frames needs 20 or more), left out" in err
    report = json.loads(out_json.read_text())
    assert report["clips"][CLIPS[0]]["verdict"] == "measured" and report["clips"]["short"]["verdict"] == "too short"
    assert (report["summary"]["n_clips"], report["summary"]["n_skipped"]) == (1, 1)


def test_revert_removes_only_the_files_the_patch_wrote(tmp_path, capfd):
    """--revert deleted every file under se4lip_adapters/, and emptied a symlinked folder's target (issue 21, M12)."""
    from adapter_helpers import copy_checkout, snapshot

    root = copy_checkout("synctalk", tmp_path / "synctalk")
    original = snapshot(root)
    assert patch.main(["synctalk", str(root)]) == 0
    folder = root / "se4lip_adapters"
    (folder / "my_notes.txt").write_text("mine")
    (folder / "nerf.py").write_text((folder / "nerf.py").read_text() + "# my change\n")
    assert patch.main(["synctalk", str(root), "--revert"]) == 0
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["my_notes.txt", "nerf.py"]  # the user's file and the edited one stay; ours (and MANIFEST) go
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("se4lip_adapters/")} == original

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "common.py").write_text("someone else's")
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere, target_is_directory=True)
    capfd.readouterr()
    for argv in (["synctalk", str(root)], ["synctalk", str(root), "--revert"]):
        assert patch.main(argv) == 1
        assert "se4lip_adapters: is a symbolic link" in capfd.readouterr().err
    assert (elsewhere / "common.py").read_text() == "someone else's"


class _ClosedPipe:
    """A stdout whose reader went away: every write raises BrokenPipeError, as under ``| head -1``."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise ValueError("no file")


def test_a_closed_stdout_ends_the_printing_not_the_work(tmp_path, tiny_weights, monkeypatch, capfd):
    """`se4lip-extract a b | head -1`: a BrokenPipeError traceback, half the batch not extracted (issue 21, M4)."""
    sources = [write_wav(tmp_path / f"{name}.wav", 1.0) for name in ("a", "b", "c")]
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert extract_main([*map(str, sources), "--weights", str(tiny_weights)]) == 0
    assert all((tmp_path / f"{name}_se4lip.npy").is_file() for name in ("a", "b", "c"))
    assert capfd.readouterr().err == ""


def test_a_full_stdout_in_a_real_process(tmp_path, tiny_weights):
    source = write_wav(tmp_path / "a.wav", 1.0)
    with open("/dev/full", "w") as full:
        code = "import sys; from se4lip_features.cli import extract_main; sys.exit(extract_main())"
        done = subprocess.run([sys.executable, "-c", code, str(source), "--weights", str(tiny_weights)], stdout=full,
                              stderr=subprocess.PIPE, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "a_se4lip.npy").is_file()


def test_two_extractions_into_one_output_never_both_succeed(tmp_path, tiny_weights):
    """`se4lip-extract a/x.wav -o out & se4lip-extract b/x.wav -o out`: both said they succeeded, the folder held
    one of them (issue 21, H8). The second now waits for the first, then refuses to overwrite its pair."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_wav(tmp_path / folder / "x.wav", 30.0, gain=0.5 if folder == "b" else 1.0)
    out = tmp_path / "out"
    out.mkdir()
    procs = [_extract(tmp_path / folder / "x.wav", "-o", out, "--weights", tiny_weights) for folder in ("a", "b")]
    results = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 1], results
    loser = results[[p.returncode for p in procs].index(1)][1]
    assert loser.strip().endswith(f"{out / 'x_se4lip.npy'}: exists (use --force to overwrite)"), loser
    winner = "ab"[[p.returncode for p in procs].index(0)]
    meta = json.loads((out / "x_se4lip.json").read_text())
    assert meta["audio_sha256"] == sidecar.sha256_file(tmp_path / winner / "x.wav")


@pytest.mark.parametrize("tool", ["prepare", "train", "finetune"])
def test_a_second_writer_of_a_folder_fails_at_once(tmp_path, tool, grid_dataset, tiny_weights, capfd):
    """Two se4lip-prepare (or train, finetune) into one -o both exited 0, the first one's output replaced or mixed
    (a held-out leak for training: split.json of one run, weights of the other)."""
    from se4lip_features import atomic

    out = tmp_path / ("out.safetensors" if tool == "finetune" else "out")
    argv = {"prepare": (prepare_main, [str(GRID), "-o", str(out)]),
            "train": (train_main, [str(grid_dataset), "-o", str(out), *TINY_FLAGS]),
            "finetune": (finetune_main, [str(SPEECH), "-o", str(out), "--init", str(tiny_weights)])}[tool]
    with atomic.exclusive(out):  # the first writer, still at work
        assert argv[0](argv[1]) == 1
    assert capfd.readouterr().err.strip() == (f"se4lip-{tool}: {out}: another se4lip tool is writing it now; wait "
                                              "for it to finish or choose another output")
    assert not out.exists()


def test_long_names_and_a_killed_writers_temporaries(tmp_path, tiny_weights):
    """A valid 243-character name was refused (its temporary's name was too long); a SIGKILLed writer's
    .partial files stayed for ever (issue 21)."""
    long_name = tmp_path / ("x" * 238 + ".npy")  # 242 characters: its sidecar .json is 243
    assert extract_main([str(SPEECH), "-o", str(long_name), "--weights", str(tiny_weights)]) == 0
    assert long_name.is_file() and long_name.with_suffix(".json").is_file()
    out = tmp_path / "out.npy"
    orphans = [tmp_path / ".out.npy.0123abcd.partial", tmp_path / ".out.json.89abcdef.partial"]
    for orphan in orphans:
        orphan.write_bytes(b"killed")
    (tmp_path / ".other.npy.0123abcd.partial").write_bytes(b"not ours to remove")
    assert extract_main([str(SPEECH), "-o", str(out), "--weights", str(tiny_weights)]) == 0
    assert not any(o.exists() for o in orphans) and (tmp_path / ".other.npy.0123abcd.partial").exists()


def test_a_diverged_checkpoint_is_not_resumed_with_a_wrong_hint(grid_dataset, tmp_path, capfd):
    """A NaN checkpoint got 'lower --lr' after its first step, naming a ckpt.pt that may not exist (issue 21)."""
    run = tmp_path / "run"
    assert train_main([str(grid_dataset), "-o", str(run), "--steps", "3", "--stop-at", "1", *TINY_FLAGS]) == 0
    state = torch.load(run / "ckpt.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].fill_(float("nan"))
    torch.save(state, run / "ckpt.pt")
    capfd.readouterr()
    assert train_main([str(grid_dataset), "-o", str(run), "--resume", "--steps", "3", *TINY_FLAGS]) == 1
    assert capfd.readouterr().err.strip() == (f"se4lip-train: {run}/ckpt.pt: tensor {name} holds NaN or infinite "
                                              "values; this run cannot be resumed: start a new one (lower --lr)")


def test_a_second_eval_of_one_output_fails_at_once(tmp_path, grid_dataset, tiny_weights, capfd):
    from se4lip_features import atomic

    out = tmp_path / "s.json"
    with atomic.exclusive(out):
        assert eval_main(["sync", str(grid_dataset), "--weights", str(tiny_weights), "-o", str(out)]) == 1
    with atomic.exclusive(tmp_path / "probe"):
        assert eval_main(["lmd", str(grid_dataset), "log-mel", "-o", str(tmp_path / "probe")]) == 1
    busy = "another se4lip tool is writing it now; wait for it to finish or choose another output"
    assert capfd.readouterr().err.splitlines() == [f"se4lip-eval: {out}: {busy}",
                                                   f"se4lip-eval lmd: {tmp_path / 'probe'}: {busy}"]
    assert not out.exists() and not (tmp_path / "probe").exists()
