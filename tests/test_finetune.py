"""se4lip-finetune: the end of the timeline held out, steps from the video's length, early stopping, the report."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from conftest import GRID, ReplayDetector, needs_av, renderer_folder


def tiny(**finetune):
    """A FinetuneConfig of tiny batches, validated every step."""
    from se4lip_features.training.finetune import RECIPE, FinetuneConfig

    recipe = dataclasses.replace(RECIPE, val_every=1, clips_per_batch=2, lip_span=4, speech_margin=3, warmup_steps=1,
                                 bf16=False)
    return FinetuneConfig(**{"segment_s": 0.6, "patience": 1, **finetune}, train=recipe)


def test_steps_rule_and_config_checks():
    from se4lip_features.training.finetune import RECIPE, FinetuneConfig, steps_for

    assert [steps_for(s) for s in (10, 84, 168, 3600)] == [100, 140, 280, 1000]
    with pytest.raises(ValueError, match="holdout"):
        FinetuneConfig(holdout=1.0)
    assert FinetuneConfig().recipe(10) == dataclasses.replace(RECIPE, steps=10, warmup_steps=10)  # warm-up <= run
    assert FinetuneConfig().recipe(300).warmup_steps == 20 and FinetuneConfig().train is RECIPE


def test_fit_keeps_the_best_state_when_it_is_not_the_first(grid_dataset, monkeypatch):
    import torch
    from test_train import TINY_MODEL, TINY_TRAIN

    from se4lip_features.training import train
    from se4lip_features.training.data import PreparedData

    data = PreparedData(grid_dataset)
    items = [(data, c) for c in data.clips]
    scores = iter([0.2, 0.3, 0.9, 0.5, 0.4, 0.1])  # before, then steps 1-5: the best is step 2
    seen = {}

    def scripted(model, val_items):
        step = len(seen)
        seen[step] = copy.deepcopy(model.state_dict())
        return {"accuracy": next(scores), "mean_confidence": 0.0, "exact_accuracy": 0.0}

    monkeypatch.setattr(train, "validate", scripted)
    torch.manual_seed(0)
    model = train.SE4Lip(TINY_MODEL)
    cfg = dataclasses.replace(TINY_TRAIN, steps=6, val_every=1, lr=1e-3)
    history = train.fit(model, items, items[:1], cfg, progress=False, patience=2)
    assert history["best_step"] == 2 and history["step"][-1] == 4  # two validations without a better one
    assert history["before"]["accuracy"] == 0.2 and history["val_acc"] == [0.3, 0.9, 0.5, 0.4]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, seen[2][key], rtol=0, atol=0, msg=key)  # step 2's state, not the last
    assert any(not torch.equal(v, seen[4][k]) for k, v in model.state_dict().items() if v.is_floating_point())


def test_fit_refuses_segments_too_short_for_a_lip_run(grid_dataset):
    from test_train import TINY_MODEL, TINY_TRAIN

    from se4lip_features.training import train
    from se4lip_features.training.data import PreparedData

    data = PreparedData(grid_dataset)
    items = [(data, c) for c in data.clips]
    longest = max(c.n_frames for c in data.clips)
    with pytest.raises(ValueError, match="no clip has a run of valid, voiced lip windows"):
        train.fit(train.SE4Lip(TINY_MODEL), items, items, dataclasses.replace(TINY_TRAIN, lip_span=longest),
                  progress=False)


@needs_av
def test_finetune_a_video_holds_out_its_end_and_keeps_the_best(tmp_path, tiny_weights):
    from se4lip_features import sidecar, weights
    from se4lip_features.training.data import PreparedData
    from se4lip_features.training.finetune import finetune, report_path, tail_split
    from se4lip_features.training.train import validate

    out = tmp_path / "me.safetensors"
    work = tmp_path / "work"
    cfg = tiny(steps=3, segment_s=0.8, holdout=0.5)
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
    # patience 1: the run ends at the first validation after the best that does not beat it
    st = report["steps"]
    assert st["run"] == min(3, st["best"] + 1) and st["best"] in (0, *report["validation"]["step"])
    info = weights.load(out)[1]
    assert info["init_sha256"] == sidecar.sha256_file(tiny_weights)
    assert info["best_step"] == str(report["steps"]["best"])
    scored = [(data, c) for c in held[:1]]  # the figures are the held-out sync of the weights before and after
    assert report["before"] == validate(weights.load(tiny_weights)[0], scored)
    assert report["after"] == validate(weights.load(out)[0], scored)
    assert not (work / "run").exists()  # nothing written to be thrown away: no run folder, no checkpoint


@needs_av
def test_finetune_command_on_a_renderer_folder(tmp_path, tiny_weights, capsys):
    from se4lip_features import cli
    from se4lip_features.training import finetune

    folder = tmp_path / "May"
    renderer_folder(folder, missing_lms=(), n_frames=75)
    out = tmp_path / "may.safetensors"
    argv = [str(folder), "-o", str(out), "--init", str(tiny_weights), "--steps", "2", "--segment", "0.8",
            "--holdout", "0.5", "--eval-every", "1", "--no-bf16"]
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
