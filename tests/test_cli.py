"""se4lip-extract through extract_main([...]), and once through the installed console script."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from conftest import SPEECH, TINY_MODEL, needs_av

import se4lip_features
from se4lip_features import sidecar, weights
from se4lip_features.cli import eval_main, extract_main, prepare_main, train_main

PROG = "se4lip-extract"


@pytest.fixture
def cli(capfd, tiny_weights):
    """Run se4lip-extract with the tiny weights; returns (status, stdout lines, stderr lines).

    capfd captures file descriptors, so a decoder writing to the terminal by itself would show here too.
    """
    def run(*argv, weights_arg=True):
        status = extract_main([*map(str, argv), *(["--weights", str(tiny_weights)] if weights_arg else [])])
        out, err = capfd.readouterr()
        return status, out.splitlines(), err.splitlines()

    return run


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_one_file_beside_its_input(cli, tmp_path, extractor, speech, tiny_weights):
    shutil.copy(SPEECH, tmp_path / "aud.wav")
    status, out, err = cli(tmp_path / "aud.wav")
    assert (status, err) == (0, [])
    assert out == [f"{tmp_path / 'aud_se4lip.npy'}: 30 frames x 16 x {TINY_MODEL.embed_dim}"]
    assert files(tmp_path) == ["aud.wav", "aud_se4lip.json", "aud_se4lip.npy"]
    assert np.load(tmp_path / "aud_se4lip.npy").tobytes() == extractor.extract(*speech).tobytes()
    side = json.loads((tmp_path / "aud_se4lip.json").read_text())
    assert (side["dim"], side["layout"], side["window"], side["fps"], side["n_frames"]) == (32, "ds", 16, 25.0, 30)
    assert side["weights"] == "tiny" and side["weights_sha256"] == sidecar.sha256_file(tiny_weights)
    assert side["audio_sha256"] == sidecar.sha256_file(SPEECH)


def test_output_file_and_options(cli, tmp_path, extractor, speech):
    status, _, err = cli(SPEECH, "-o", tmp_path / "feats.npy", "--fps", "30", "--layout", "ave", "--batch-size", "7",
                         "--device", "cpu")
    assert (status, err) == (0, [])
    assert files(tmp_path) == ["feats.json", "feats.npy"]
    feats = np.load(tmp_path / "feats.npy")
    assert feats.shape == (36, 1, TINY_MODEL.embed_dim) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, extractor.extract(*speech, fps=30, layout="ave"), atol=1e-5)
    side = json.loads((tmp_path / "feats.json").read_text())
    assert (side["layout"], side["window"], side["fps"], side["n_frames"]) == ("ave", 1, 30.0, 36)


def test_output_folder_for_one_file(cli, tmp_path):
    status, _, err = cli(SPEECH, "-o", tmp_path / "out")
    assert (status, err) == (0, [])
    assert files(tmp_path) == ["out/speech_se4lip.json", "out/speech_se4lip.npy"]


def test_several_files_beside_each_or_into_a_folder(cli, tmp_path, speech):
    soundfile.write(tmp_path / "a.wav", *speech)
    soundfile.write(tmp_path / "b.flac", speech[0][:8000], speech[1])
    status, out, err = cli(tmp_path / "a.wav", tmp_path / "b.flac")
    assert (status, err) == (0, [])
    assert len(out) == 2
    assert files(tmp_path) == ["a.wav", "a_se4lip.json", "a_se4lip.npy", "b.flac", "b_se4lip.json", "b_se4lip.npy"]
    assert np.load(tmp_path / "b_se4lip.npy").shape == (13, 16, TINY_MODEL.embed_dim)  # 0.5 s at 25 fps: 12.5 -> 13

    status, _, err = cli(tmp_path / "a.wav", tmp_path / "b.flac", "-o", tmp_path / "out")
    assert (status, err) == (0, [])
    assert files(tmp_path / "out") == ["a_se4lip.json", "a_se4lip.npy", "b_se4lip.json", "b_se4lip.npy"]


def test_folder_means_every_audio_and_video_file_in_it(cli, tmp_path, speech):
    folder = tmp_path / "clips"
    folder.mkdir()
    soundfile.write(folder / "a.wav", *speech)
    soundfile.write(folder / "B.FLAC", *speech)
    (folder / "notes.txt").write_text("not audio")
    (folder / ".hidden.wav").write_bytes(b"AppleDouble")
    (folder / "sub").mkdir()
    soundfile.write(folder / "sub" / "deeper.wav", *speech)  # folders are not searched recursively
    status, _, err = cli(folder, "-o", tmp_path / "out")
    assert (status, err) == (0, [])
    assert files(tmp_path / "out") == ["B_se4lip.json", "B_se4lip.npy", "a_se4lip.json", "a_se4lip.npy"]
    status, _, err = cli(folder)
    assert (status, err) == (0, [])
    assert {"a_se4lip.npy", "B_se4lip.npy"} <= set(files(folder))


def test_existing_output_is_never_overwritten_without_force(cli, tmp_path):
    target = tmp_path / "aud_se4lip.npy"
    assert cli(SPEECH, "-o", target)[0] == 0
    before = target.read_bytes(), (tmp_path / "aud_se4lip.json").read_bytes()
    status, out, err = cli(SPEECH, "-o", target, "--layout", "ave")
    assert (status, out) == (1, [])
    assert err == [f"{PROG}: {target}: exists (use --force to overwrite)"]
    assert (target.read_bytes(), (tmp_path / "aud_se4lip.json").read_bytes()) == before
    status, _, err = cli(SPEECH, "-o", target, "--layout", "ave", "--force")
    assert (status, err) == (0, [])
    assert np.load(target).shape == (30, 1, TINY_MODEL.embed_dim)
    assert json.loads((tmp_path / "aud_se4lip.json").read_text())["layout"] == "ave"


def write_bad_input(folder, kind):
    """One unusable input of each kind; returns (path to pass, expected problem after '<path>: ')."""
    path = folder / f"{kind}.wav"
    if kind == "missing":
        return path, "no such file or folder"
    if kind == "empty":
        path.touch()
        return path, "file is empty"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
        return path, r"not a readable audio file \(Format not recognised\)"
    if kind == "truncated":
        path.write_bytes(SPEECH.read_bytes()[:30])  # the header stops before the data chunk
        return path, r"not a readable audio file \(Error in WAV file\. No 'data' chunk marker\)"
    if kind == "corrupt_mp3":
        path = folder / "corrupt.mp3"
        path.write_bytes(np.random.default_rng(0).bytes(4000))
        # FFmpeg 6 (in PyAV 12, the last PyAV for Python 3.8) gives up on this mp3 with EINVAL
        return path, r"cannot decode audio \((Invalid data found when processing input|Invalid argument)\)"
    if kind == "too_short":
        soundfile.write(path, np.full(300, 0.1, np.float32), 16000)
        return path, r"0\.019 s of audio is shorter than one frame at 25 fps"
    if kind in ("nan", "inf"):
        wav = np.full(16000, 0.1, np.float32)
        wav[8000] = np.nan if kind == "nan" else np.inf
        soundfile.write(path, wav, 16000, subtype="FLOAT")
        return path, "contains NaN or infinite samples"
    if kind == "no_samples":
        soundfile.write(path, np.zeros(0, np.float32), 16000)
        return path, "holds no samples"
    if kind == "folder_without_audio":
        path = folder / "nothing_here"
        path.mkdir()
        (path / "readme.txt").write_text("no audio")
        return path, r"folder holds no audio or video files \(looked for .*\.wav.*\)"
    raise ValueError(kind)


BAD_INPUTS = ["missing", "empty", "corrupt", "truncated", pytest.param("corrupt_mp3", marks=needs_av), "too_short",
              "nan", "inf", "no_samples", "folder_without_audio"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_exit_1_and_no_output(cli, tmp_path, kind):
    path, problem = write_bad_input(tmp_path, kind)
    before = files(tmp_path)
    status, out, err = cli(path)
    assert (status, out) == (1, [])
    assert len(err) == 1 and re.fullmatch(rf"{PROG}: {re.escape(str(path))}: {problem}", err[0]), err
    assert files(tmp_path) == before  # nothing written, not even a .partial


def test_video_without_pyav_is_one_line_exit_1(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as on Python 3.7
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 1000)
    status, out, err = cli(video)
    assert (status, out) == (1, [])
    assert err == [f"{PROG}: {video}: cannot decode audio: this needs PyAV, which is not installed (pip install av)"]
    assert files(tmp_path) == ["clip.mp4"]


def test_silence_is_valid_input(cli, tmp_path):
    soundfile.write(tmp_path / "quiet.wav", np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    status, _, err = cli(tmp_path / "quiet.wav")
    assert (status, err) == (0, [])
    assert np.isfinite(np.load(tmp_path / "quiet_se4lip.npy")).all()


def test_a_batch_goes_on_after_a_failure(cli, tmp_path, speech):
    soundfile.write(tmp_path / "a.wav", *speech)
    soundfile.write(tmp_path / "c.wav", *speech)
    bad, _ = write_bad_input(tmp_path, "corrupt")
    missing, _ = write_bad_input(tmp_path, "missing")
    status, out, err = cli(tmp_path / "a.wav", bad, missing, tmp_path / "c.wav")
    assert status == 1 and len(out) == 2
    assert err == [f"{PROG}: {missing}: no such file or folder",
                   f"{PROG}: {bad}: not a readable audio file (Format not recognised)"]
    assert (tmp_path / "a_se4lip.npy").exists() and (tmp_path / "c_se4lip.npy").exists()
    assert not (tmp_path / "corrupt_se4lip.npy").exists() and not (tmp_path / "corrupt_se4lip.json").exists()


def test_no_weights_bundled_yet(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "REGISTRY", {})  # as in every release before the trained weights
    status, out, err = cli(SPEECH, "-o", tmp_path / "f.npy", weights_arg=False)
    assert (status, out) == (1, [])
    assert len(err) == 1 and err[0].startswith(f"{PROG}: no bundled weights exist yet: the default "
                                               f"{weights.DEFAULT_NAME} is not released")
    assert "--weights" in err[0] and files(tmp_path) == []


def test_weights_that_cannot_be_used(cli, tmp_path):
    status, _, err = cli(SPEECH, "-o", tmp_path / "f.npy", "--weights", tmp_path / "nope.safetensors",
                         weights_arg=False)
    assert status == 1 and err == [f"{PROG}: {tmp_path / 'nope.safetensors'}: no such weights file"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    status, _, err = cli(SPEECH, "-o", tmp_path / "f.npy", "--weights", tmp_path / "bad.safetensors",
                         weights_arg=False)
    assert status == 1 and len(err) == 1
    assert err[0].startswith(f"{PROG}: {tmp_path / 'bad.safetensors'}: not a readable safetensors file")
    assert files(tmp_path) == ["bad.safetensors"]


def test_output_paths_that_cannot_work(cli, tmp_path, speech):
    soundfile.write(tmp_path / "a.wav", *speech)
    status, _, err = cli(SPEECH, tmp_path / "a.wav", "-o", tmp_path / "both.npy")
    problem = "several inputs need a folder to write into, not a .npy file"
    assert status == 1 and err == [f"{PROG}: -o {tmp_path / 'both.npy'}: {problem}"]
    (tmp_path / "out.txt").write_text("a file")
    status, _, err = cli(SPEECH, "-o", tmp_path / "out.txt")
    problem = "exists and is not a folder; name a .npy file or a folder"
    assert status == 1 and err == [f"{PROG}: -o {tmp_path / 'out.txt'}: {problem}"]
    (tmp_path / "d").mkdir()
    shutil.copy(SPEECH, tmp_path / "d" / "a.wav")
    status, out, err = cli(tmp_path / "a.wav", tmp_path / "d" / "a.wav", "-o", tmp_path / "out")
    assert status == 1 and len(out) == 1  # the first a.wav is extracted, the second would overwrite it
    problem = (f"its output {tmp_path / 'out' / 'a_se4lip.npy'} would also be written from {tmp_path / 'a.wav'}; "
               "rename one or extract them separately")
    assert err == [f"{PROG}: {tmp_path / 'd' / 'a.wav'}: {problem}"]


def test_a_file_named_twice_is_extracted_once(cli, tmp_path, speech):
    soundfile.write(tmp_path / "a.wav", *speech)
    status, out, err = cli(tmp_path / "a.wav", tmp_path, tmp_path / "." / "a.wav")
    assert (status, err, len(out)) == (0, [], 1)


@pytest.mark.parametrize("argv, problem", [
    (["--fps", "0"], "argument --fps: must be positive and at most 240, got 0"),
    (["--fps", "inf"], "argument --fps: must be positive and at most 240, got inf"),
    (["--fps", "1e5"], "argument --fps: must be positive and at most 240, got 1e5"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--layout", "wav2vec"], "argument --layout: invalid choice: 'wav2vec'"),
])
def test_bad_arguments_exit_2(capfd, argv, problem):
    with pytest.raises(SystemExit) as exit_:
        extract_main([str(SPEECH), *argv])
    assert exit_.value.code == 2
    assert problem in capfd.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_requested_without_cuda(cli, tmp_path):
    status, _, err = cli(SPEECH, "-o", tmp_path / "f.npy", "--device", "cuda")
    assert status == 1 and err == [f"{PROG}: device 'cuda': CUDA is not available to this torch {torch.__version__}"]


def test_progress_bars_only_on_a_terminal(cli, tmp_path, speech, monkeypatch):
    for name in "ab":
        soundfile.write(tmp_path / f"{name}.wav", *speech)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    status, _, err = cli(tmp_path / "a.wav", tmp_path / "b.wav")
    assert status == 0 and f"{PROG}: 100%" in "\n".join(err) and "2/2" in "\n".join(err)


def test_console_script(tmp_path, tiny_weights, extractor, speech):
    script = shutil.which(PROG)
    assert script, f"{PROG} is not on PATH: pip install -e ."
    done = subprocess.run([script, str(SPEECH), "-o", str(tmp_path / "aud_se4lip.npy"), "--weights",
                           str(tiny_weights)], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{tmp_path / 'aud_se4lip.npy'}: 30 frames x 16 x {TINY_MODEL.embed_dim}\n"
    assert np.load(tmp_path / "aud_se4lip.npy").tobytes() == extractor.extract(*speech).tobytes()
    assert json.loads((tmp_path / "aud_se4lip.json").read_text())["n_frames"] == 30


@pytest.mark.parametrize("main, prog", [(prepare_main, "se4lip-prepare"), (train_main, "se4lip-train"),
                                        (eval_main, "se4lip-eval")])
def test_training_tools_say_in_one_line_what_an_old_environment_lacks(main, prog, capfd, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.12.1")  # a renderer's environment (on Python 3.7/3.8, as it is)
    assert main(["--help"]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert re.fullmatch(rf"{prog}: needs Python >= 3\.9 and torch >= 1\.13 \(this is Python 3\.\d+\.\d+\S* with "
                        r"torch 1\.12\.1\); se4lip-extract and the renderer adapters work here\n", err), err


def test_patcher_and_tool_runner_start_without_torch(tmp_path):
    # se4lip-patch is a text patcher: it starts where torch is broken or absent (the package's API loads on use)
    code = ("import sys, se4lip_features.adapters.patch, se4lip_features.tool; "
            "assert 'torch' not in sys.modules, 'torch imported'; import se4lip_features as s; s.load; "
            "assert 'torch' in sys.modules; assert set(s.__all__) <= set(dir(s)); print(s.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)  # the installed package (the checkout's own folder has no adapters/ inside)
    assert (done.returncode, done.stderr, done.stdout.strip()) == (0, "", se4lip_features.__version__)


def test_every_eval_subcommand_is_a_subparser(capsys):
    from se4lip_features.cli import eval_parser

    args = eval_parser().parse_args(["lmd", "data", "log-mel", "whisper-tiny.en", "-o", "probe", "--seeds", "3"])
    assert (args.command, args.features, args.seeds) == ("lmd", ["log-mel", "whisper-tiny.en"], [3])
    with pytest.raises(SystemExit):
        eval_parser().parse_args(["lmd", "--help"])
    assert "usage: se4lip-eval lmd" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # lmd's options are not sync's
        eval_parser().parse_args(["sync", "a.mp4", "--seeds", "3"])


def test_tool_logging_carries_the_package_notes_not_other_libraries(capfd):
    import logging

    from se4lip_features.tool import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        setup_logging("se4lip-prepare")
        logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
        logging.getLogger("se4lip_features.training.data").info("a note of ours")
        logging.getLogger("matplotlib").warning("a warning of theirs")
    finally:
        root.handlers, root.level = saved
    assert capfd.readouterr().err.splitlines() == ["se4lip-prepare: a note of ours",
                                                   "se4lip-prepare: a warning of theirs"]
