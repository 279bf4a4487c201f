"""se4lip-finetune: the end of the timeline held out, steps from the video's length, early stopping, the report."""

from __future__ import annotations

import functools
import json

import pytest
from conftest import GRID, ReplayDetector, needs_av, renderer_folder

TINY = {"segment_s": 0.6, "eval_every": 1, "patience": 1, "clips_per_batch": 2, "lip_span": 4,
        "speech_margin": 3, "warmup_steps": 1, "bf16": False}


def test_steps_rule_and_config_checks():
    from se4lip_features.training.finetune import FinetuneConfig, steps_for

    assert [steps_for(s) for s in (10, 84, 168, 3600)] == [100, 140, 280, 1000]
    with pytest.raises(ValueError, match="holdout"):
        FinetuneConfig(holdout=1.0)


@needs_av
def test_finetune_a_video_holds_out_its_end_and_keeps_the_best(tmp_path, tiny_weights):
    from se4lip_features import weights
    from se4lip_features.training.data import PreparedData
    from se4lip_features.training.finetune import FinetuneConfig, finetune, report_path, tail_split

    out = tmp_path / "me.safetensors"
    work = tmp_path / "work"
    cfg = FinetuneConfig(steps=3, **{**TINY, "segment_s": 0.8}, holdout=0.5)
    report = finetune(GRID / "bbaf2n.mp4", out, cfg, init=str(tiny_weights), work=work, detector=ReplayDetector(),
                      progress=False)
    data = PreparedData(work / "data")
    assert [c.id for c in data.clips] == ["bbaf2n@0", "bbaf2n@20", "bbaf2n@40", "bbaf2n@60"]
    train_clips, held = tail_split(data, 0.5)  # 75 frames: the last half starts at frame 37.5
    assert [c.id for c in held] == ["bbaf2n@40", "bbaf2n@60"] and len(train_clips) == 2
    # the last segment (15 frames) is too short for a sync verdict: left out of every validation, not a failure
    assert report["split"]["held_out_segments"] == 1 and report["split"]["held_out_unscorable"] == 1
    assert json.loads(report_path(out).read_text()) == report
    assert report["steps"]["planned"] == 3 and report["validation"]["step"][0] == 1
    # patience 1: stops at the first evaluation that does not beat the best so far
    assert report["steps"]["run"] <= 3 and report["steps"]["best"] in (0, *report["validation"]["step"])
    info = weights.load(out)[1]
    assert info["init_sha256"] == weights.sha256_file(tiny_weights)
    assert info["best_step"] == str(report["steps"]["best"])
    for key in ("accuracy", "exact_accuracy", "mean_confidence", "frame_within1"):
        assert 0 <= report["before"][key] <= 1 or key == "mean_confidence"
    if report["steps"]["best"] == 0:  # nothing beat the start: the start is written back
        assert report["after"]["accuracy"] == report["before"]["accuracy"]


@needs_av
def test_finetune_command_on_a_renderer_folder(tmp_path, tiny_weights, capsys, monkeypatch):
    from se4lip_features import cli
    from se4lip_features.training import finetune

    folder = tmp_path / "May"
    renderer_folder(folder, missing_lms=(), n_frames=75)
    out = tmp_path / "may.safetensors"
    argv = [str(folder), "-o", str(out), "--init", str(tiny_weights), "--steps", "2", "--segment", "0.8",
            "--holdout", "0.5", "--eval-every", "1", "--no-bf16"]
    big = functools.partial(finetune.FinetuneConfig, lip_span=20)  # lip windows that no 20-frame segment holds
    monkeypatch.setattr(finetune, "FinetuneConfig", big)
    assert cli.finetune_main(argv) == 1
    assert capsys.readouterr().err.startswith("se4lip-finetune: no clip has a run")
    assert not out.exists()
    monkeypatch.undo()
    assert cli.finetune_main(argv) == 0
    printed = capsys.readouterr().out
    assert "held out 1 segments (1 s, last 50% of the timeline, 0.8 s segments)" in printed
    assert "sync accuracy (|offset| <= 1)" in printed and "frame-level within 1" in printed
    report = json.loads(finetune.report_path(out).read_text())
    assert report["split"]["train_segments"] == 2 and report["before"]["n_clips"] == 1
    assert cli.finetune_main(argv) == 1 and "exists (use --force" in capsys.readouterr().err


def test_finetune_command_checks_arguments_first(tmp_path, tiny_weights, capsys):
    from se4lip_features import cli

    (tmp_path / "taken.safetensors").write_bytes(b"x")
    cases = [([str(tmp_path), "-o", str(tmp_path / "x.npy")], "name a .safetensors file"),
             ([str(tmp_path), "-o", str(tmp_path / "taken.safetensors")], "exists (use --force"),
             ([str(tmp_path / "nothing"), "-o", str(tmp_path / "a.safetensors")], "no such file or folder"),
             ([str(tmp_path), "-o", str(tmp_path / "a.safetensors"), "--init", "no-such-weights"], "no-such-weights")]
    for argv, message in cases:
        assert cli.finetune_main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):  # a usage error (status 2), before anything else: tests/test_reliability.py
        cli.finetune_main([str(tmp_path), "-o", str(tmp_path / "a.safetensors"), "--holdout", "1.5"])


def test_console_script_and_old_environments(tmp_path, capfd, monkeypatch):
    import shutil
    import subprocess

    import torch

    from se4lip_features import cli

    script = shutil.which("se4lip-finetune")
    assert script, "se4lip-finetune is not on PATH: pip install -e ."
    done = subprocess.run([script, str(tmp_path), "-o", str(tmp_path / "x.pt")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"se4lip-finetune: -o {tmp_path / 'x.pt'}: name a .safetensors file\n"
    monkeypatch.setattr(torch, "__version__", "1.12.1")  # a renderer's environment
    assert cli.finetune_main(["--help"]) == 1
    assert capfd.readouterr().err.startswith("se4lip-finetune: needs Python >= 3.9 and torch >= 1.13")
