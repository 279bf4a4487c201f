"""Training: the loss goes down, resuming equals not stopping, DDP with 2 processes, fine-tuning, sync eval."""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, prepare_grid, renderer_folder

from se4lip_features import audio, evaluate, weights
from se4lip_features.model import LossConfig, ModelConfig, SE4Lip, SpeechEncoder, cosine_bce, pair_losses
from se4lip_features.training import data
from se4lip_features.training.data import PreparedData
from se4lip_features.training.train import TrainConfig, WindowSampler, _on_data, train

TINY_TRAIN = TrainConfig(steps=4, clips_per_batch=2, lip_span=4, speech_margin=3, warmup_steps=1, val_clips=2,
                   val_every=2, ckpt_every_s=0.0, bf16=False)


@pytest.fixture
def dataset(grid_dataset):
    return grid_dataset


def test_cosine_bce_is_eq6_on_rescaled_cosine():
    cos = torch.tensor([0.8, 0.0, -0.5])  # p = (1 + cos) / 2 = 0.9, 0.5, 0.25
    np.testing.assert_allclose(cosine_bce(cos, torch.ones(3)), -np.log([0.9, 0.5, 0.25]), rtol=1e-5)
    np.testing.assert_allclose(cosine_bce(cos, torch.zeros(3)), -np.log([0.1, 0.5, 0.75]), rtol=1e-5)
    assert torch.isfinite(cosine_bce(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]))).all()  # clamped


def test_pair_losses_ignore_near_offsets():
    offset = torch.tensor([[0, 1, 2]])
    same = torch.ones(1, 3, dtype=torch.bool)
    sim_a = torch.tensor([[0.9, 0.9, -0.9]])
    sim_b = torch.tensor([[0.9, -0.7, -0.9]])  # only the offset-1 pair differs: not a negative
    assert pair_losses(sim_a, offset, same, 2, 0.1)[0] == pair_losses(sim_b, offset, same, 2, 0.1)[0]
    # the softmax over offsets does see it: a closer wrong offset makes the choice harder
    assert pair_losses(sim_a, offset, same, 2, 0.1)[1] > pair_losses(sim_b, offset, same, 2, 0.1)[1]


def test_lip_windows_are_the_five_frames_around_their_centre(dataset):
    data = PreparedData(dataset)
    clip = data.clips[0]
    batch = WindowSampler([(data, clip)], TINY_TRAIN, TINY_MODEL).batch(np.random.default_rng(0))
    frames = np.asarray(data.clip_lips(clip), np.float32) / 255  # (n, H, W, 3)
    mirrored = 0
    for window, centre in zip(batch.lips.numpy(), batch.lip_frame):  # every clip of the batch is this one
        expected = frames[centre - 2: centre + 3].transpose(0, 3, 1, 2).reshape(15, 48, 96)  # oldest frame first
        if not np.array_equal(window, expected):
            np.testing.assert_array_equal(window, expected[:, :, ::-1])  # or mirrored left-right, nothing else
            mirrored += 1
    assert 0 < mirrored < len(batch.lips)  # mirroring is a coin flip per clip run: both occur in 8 windows


def test_sampler_pairs_lips_with_their_own_speech(dataset):
    data = PreparedData(dataset)
    sampler = WindowSampler([(data, c) for c in data.clips], TINY_TRAIN, TINY_MODEL)
    batch = sampler.batch(np.random.default_rng(0))
    assert batch.lips.shape == (8, 15, 48, 96)
    assert len(batch.speech_frame) == 2 * (4 + 2 * 3) and len(batch.wavs) == 2
    for b in range(2):  # each clip's speech windows span its lip windows +-3 frames
        assert batch.speech_frame[batch.speech_clip == b].min() == batch.lip_frame[batch.lip_clip == b].min() - 3
    (frames, which), twin = batch.speech(25.0, TINY_MODEL.n_stft_frames)
    assert which.shape == (20, 25) and frames.shape[1] == 257 and twin is None
    for b in range(2):  # a window reads its clip's log-STFT frames around its centre
        windows = audio.speech_windows(batch.wavs[b], torch.from_numpy(np.round(
            batch.speech_frame[batch.speech_clip == b] / 25.0 * 16000).astype(np.int64)), TINY_MODEL.n_stft_frames)
        torch.testing.assert_close(frames[which[batch.speech_clip == b]], windows)
    offset, same = batch.targets()
    assert offset.shape == same.shape == (8, 20) and same.sum() == 2 * 4 * 10
    assert (offset[same] == 0).sum() == 8  # each lip window has exactly one aligned speech window


def _fixed_batches_loss(model, data, cfg):
    """Mean loss over 4 fixed batches, BatchNorm on batch statistics (running ones lag after 40 steps)."""
    sampler = WindowSampler([(data, c) for c in data.clips], cfg, model.config)
    losses = []
    for seed in range(4):
        batch = sampler.batch(np.random.default_rng(100 + seed))
        with torch.no_grad():
            speech, _ = batch.speech(data.fps, model.config.n_stft_frames)
            losses.append(float(model.train()(speech, batch.lips, batch.targets(), cfg.loss).total))
    return np.mean(losses)


def test_training_lowers_the_loss(dataset, tmp_path):
    cfg = dataclasses.replace(TINY_TRAIN, steps=40, lr=3e-4, lip_span=6, warmup_steps=5, val_every=40)
    data = PreparedData(dataset)
    history = train(dataset, tmp_path / "run", cfg, TINY_MODEL, progress=False)
    model, info = weights.load(tmp_path / "run" / "final.safetensors")
    torch.manual_seed(cfg.seed)  # train() builds its model right after seeding: the same initial weights
    start = weights.SE4Lip(TINY_MODEL)
    start.load_state_dict({**start.state_dict(), "speech.spec_mean": model.speech.spec_mean,
                           "speech.spec_std": model.speech.spec_std})
    before, after = _fixed_batches_loss(start, data, cfg), _fixed_batches_loss(model, data, cfg)
    assert after < 0.9 * before, (before, after)  # measured: 5.42 -> 4.37
    assert len(history["loss"]) == 40 and history["val_step"] == [40]
    assert TrainConfig.from_dict(json.loads(info["train_config"])) == cfg  # the recipe, loss included
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000
    assert set(json.loads((tmp_path / "run" / "split.json").read_text())["val"]) <= {c.id for c in data.clips}


def test_resume_equals_uninterrupted(dataset, tmp_path):
    train(dataset, tmp_path / "a", TINY_TRAIN, TINY_MODEL, progress=False)
    train(dataset, tmp_path / "b", TINY_TRAIN, TINY_MODEL, stop_at=2, progress=False)
    assert not (tmp_path / "b" / "final.safetensors").exists()
    first = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert first["step"] == 2 and first["history"]["wall_s"] > 0
    train(dataset, tmp_path / "b", TINY_TRAIN, TINY_MODEL, resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["history"]["loss"] == b["history"]["loss"]
    assert b["history"]["wall_s"] > first["history"]["wall_s"]  # training time adds up over the slices
    _, info = weights.load(tmp_path / "b" / "final.safetensors")
    assert float(info["train_wall_s"]) == round(b["history"]["wall_s"])
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_fine_tuning_starts_from_given_weights(dataset, tmp_path):
    train(dataset, tmp_path / "base", TINY_TRAIN, TINY_MODEL, progress=False)
    base = tmp_path / "base" / "final.safetensors"
    cfg = dataclasses.replace(TINY_TRAIN, steps=1, lr=1e-12, warmup_steps=1)
    train(dataset, tmp_path / "tuned", cfg, ModelConfig(), init=str(base), progress=False)  # config comes from init
    tuned, _ = weights.load(tmp_path / "tuned" / "final.safetensors")
    start, _ = weights.load(base)
    assert tuned.config == TINY_MODEL
    torch.testing.assert_close(tuned.speech.gru.weight_hh_l0, start.speech.gru.weight_hh_l0, atol=1e-6, rtol=0)


def test_fine_tuning_learns_the_data_s_crop_scale_and_refuses_another_frame_rate(dataset, tmp_path, caplog):
    train(dataset, tmp_path / "base", TINY_TRAIN, TINY_MODEL, progress=False)
    base = str(tmp_path / "base" / "final.safetensors")
    one = dataclasses.replace(TINY_TRAIN, steps=1, warmup_steps=1)
    prepare_grid(tmp_path / "wide", scale=1.6, segment_s=1.0)
    train(tmp_path / "wide", tmp_path / "tuned", one, init=base, progress=False)
    tuned, _ = weights.load(tmp_path / "tuned" / "final.safetensors")
    assert tuned.config == dataclasses.replace(TINY_MODEL, lip_crop_scale=1.6)  # was 1.2: the file said so
    assert "scale 1.6, the starting weights' are 1.2" in caplog.text
    meta = {**json.loads((tmp_path / "wide" / "meta.json").read_text()), "fps": 30.0}  # as se4lip-prepare --fps 30
    with pytest.raises(ValueError, match=r"fast: fps 30.0 differs from the starting weights' 25.0; prepare the data "
                                         r"again with --fps 25 --crop 48 96"):
        _on_data(tuned.config, types.SimpleNamespace(meta=meta), Path("fast"))


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on Windows is not supported by torchrun")
def test_distributed_two_processes(dataset, tmp_path):
    script = (
        "import sys, dataclasses; from se4lip_features.training.train import train, TrainConfig; "
        "from se4lip_features.model import ModelConfig; "
        f"train(sys.argv[1], sys.argv[2], TrainConfig.from_dict({dataclasses.asdict(TINY_TRAIN)!r}), "
        f"ModelConfig(**{TINY_MODEL.to_dict()!r}), device='cpu', progress=False)"
    )
    (tmp_path / "job.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "job.py"), str(dataset), str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=False)
    assert state["step"] == 4 and len(state["rng"]) == 2 and state["rng"][0] != state["rng"][1]
    assert not any(k.startswith("module.") for k in state["model"])
    model, _ = weights.load(tmp_path / "ddp" / "final.safetensors")
    assert model.config == TINY_MODEL


class FrameIdentity(torch.nn.Module):
    """Embeddings that are one-hot codes of the frame index: they can only match at the true shift."""

    config = ModelConfig(embed_dim=64)

    def __init__(self, shift, silent=False):
        super().__init__()
        self.shift, self.silent, self.p = shift, silent, torch.nn.Parameter(torch.zeros(1))
        self.speech = types.SimpleNamespace(embed=self.embed)  # the speech encoder, as evaluate calls it

    def encode_lips(self, lips):  # the window's centre frame (channel 6 = its red) holds its index
        return torch.nn.functional.one_hot(lips[:, 6, 0, 0].mul(255).round().long(), 64).float()

    def embed(self, wav, centres, batch_size):  # the centre's frame index, shifted
        if self.silent:  # every speech window alike, as of silent audio
            return torch.nn.functional.one_hot(torch.zeros(len(centres), dtype=torch.long), 64).float()
        frame = torch.div(centres, 640, rounding_mode="floor").clamp(min=0)
        return torch.nn.functional.one_hot((frame + self.shift) % 64, 64).float()


def numbered_lips(n):
    lips = np.zeros((n, 48, 96, 3), np.uint8)
    lips[:, 0, 0, 0] = np.arange(n)
    return lips


def test_sync_verdicts_short_silent_and_faceless_clips():
    """A 9-frame clip was searched over +-1 frames only, so any audio (silence too) scored 'in sync' (issue 21, H3)."""
    clips = [("short", FrameIdentity(3), 19), ("silent", FrameIdentity(0, silent=True), 40),
             ("faceless", FrameIdentity(0), 40), ("good", FrameIdentity(0), 40), ("off", FrameIdentity(3), 40)]
    results = {}
    for name, model, n in clips:
        valid = np.zeros(n, bool) if name == "faceless" else np.ones(n, bool)
        results[name] = evaluate.clip_sync(model, np.zeros(n * 640, np.float32), numbered_lips(n), valid, 25.0)
    assert results["short"] == {"verdict": "too short", "reason": "19 frames: a search of +-4 frames needs 20 or more"}
    assert results["silent"]["verdict"] == "no sync" and results["silent"]["offset"] is None
    assert results["silent"]["confidence"] == 0.0
    assert results["faceless"] == {"verdict": "no lip window", "reason": "no 5 consecutive frames with a face"}
    assert (results["good"]["verdict"], results["good"]["offset"], results["off"]["offset"]) == ("measured", 0, -3)
    summary = evaluate.sync_summary(list(results.values()))
    assert (summary["n_clips"], summary["n_skipped"]) == (3, 2)  # silent, good, off are judged
    assert summary["accuracy"] == pytest.approx(1 / 3) and summary["mean_offset"] == -1.5
    judged = results["good"]["confidence"] + results["off"]["confidence"]  # + silent's 0
    assert summary["mean_confidence"] == pytest.approx(judged / 3)
    assert evaluate.sync_summary([results["short"]])["accuracy"] is None


def test_sync_set_needs_unique_ids():
    clip = (np.zeros(40 * 640, np.float32), numbered_lips(40), np.ones(40, bool))
    out = evaluate.sync_set(FrameIdentity(0), [("a/x", *clip), ("b/x", *clip)], 25.0)
    assert list(out["clips"]) == ["a/x", "b/x"] and out["summary"]["n_clips"] == 2
    with pytest.raises(ValueError, match="clip id 'a/x' given twice"):
        evaluate.sync_set(FrameIdentity(0), [("a/x", *clip), ("a/x", *clip)], 25.0)


def test_clip_sync_finds_a_known_shift():
    """Embeddings that are one-hot codes of the frame index can only match at the true shift."""
    n = 25
    lips = numbered_lips(n)
    for shift in (0, 3, -2):
        r = evaluate.clip_sync(FrameIdentity(shift), np.zeros(n * 640, np.float32), lips, np.ones(n, bool), 25.0)
        assert r["offset"] == -shift and r["confidence"] > 0 and r["n_windows"] == n - 4
        assert r["frame_exact"] == (1.0 if shift == 0 else 0.0)
        assert len(r["distances"]) == 11  # +-5 frames: at most a fifth of the 25-frame clip
    wide = evaluate.clip_sync(FrameIdentity(3), np.zeros(n * 640, np.float32), lips, np.ones(n, bool), 25.0,
                              max_shift=15)
    assert wide["offset"] == -3 and len(wide["distances"]) == 31
    summary = evaluate.sync_summary([{"offset": o, "confidence": 1.0, "frame_exact": 0.5, "frame_within1": 1.0}
                                     for o in (0, 1, -1, 4)])
    assert summary["accuracy"] == 0.75 and summary["exact_accuracy"] == 0.25 and summary["mean_offset"] == 1.0


def test_prepare_train_eval_commands(dataset, tmp_path, capsys):
    from se4lip_features.cli import eval_main, prepare_main, train_main

    renderer_folder(tmp_path / "May")
    assert prepare_main([str(tmp_path / "May"), "-o", str(tmp_path / "prep"), "--segment", "0.4"]) == 0
    assert "2 clips, 20 frames, 1 without a face" in capsys.readouterr().out
    assert prepare_main([str(tmp_path / "May"), "-o", str(tmp_path / "prep")]) == 1
    assert "exists (use --force" in capsys.readouterr().err

    run = tmp_path / "run"
    flags = ["--steps", "2", "--clips-per-batch", "2", "--lip-span", "4", "--speech-margin", "3", "--val-clips", "2",
             "--val-every", "2", "--no-bf16", "--gru-hidden", "16", "--gru-layers", "2", "--embed-dim", "32",
             "--front-end", "stft", "--speech-encoder", "gru"]
    assert train_main([str(dataset), "-o", str(run), *flags, "--stop-at", "1"]) == 0
    assert "step 1 of 2" in capsys.readouterr().out and not (run / "final.safetensors").exists()
    assert train_main([str(dataset), "-o", str(run), *flags]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert train_main([str(dataset), "-o", str(run), *flags, "--resume"]) == 0
    assert f"weights in {run / 'final.safetensors'}" in capsys.readouterr().out

    out = tmp_path / "sync.json"
    assert eval_main(["sync", str(dataset), "--weights", str(run / "final.safetensors"), "--ids",
                      str(run / "split.json"), "-o", str(out), "--plot", str(tmp_path / "plots")]) == 0
    report = json.loads(out.read_text())
    val = json.loads((run / "split.json").read_text())["val"]
    assert sorted(report["clips"]) == sorted(val) and report["summary"]["n_clips"] == 2
    assert set(report["summary"]) >= {"accuracy", "exact_accuracy", "mean_offset", "frame_exact", "frame_within1"}
    assert len(report["clips"][val[0]]["distances"]) == 11  # +-5 frames in these 1 s clips
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{v}.png" for v in val)
    assert eval_main(["sync", str(tmp_path / "nothing.mp4"), "--weights", str(run / "final.safetensors")]) == 1
    assert "nothing.mp4: no such file or folder" in capsys.readouterr().err


def test_eval_sync_on_a_video(tmp_path, capsys, tiny_weights):
    pytest.importorskip("mediapipe")
    from conftest import GRID

    from se4lip_features.cli import eval_main

    assert eval_main(["sync", str(GRID / "bbaf2n.mp4"), "--weights", str(tiny_weights)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["clips"]) == ["bbaf2n"] and report["clips"]["bbaf2n"]["n_windows"] == 71


def test_eval_lmd_is_the_landmark_probe(capsys):
    from se4lip_features.cli import eval_main

    with pytest.raises(SystemExit) as exit_info:
        eval_main(["lmd", "--help"])
    assert exit_info.value.code == 0 and "usage: se4lip-eval lmd" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(torch.backends.mkldnn, "matmul"), reason="no oneDNN matmul hint before torch 2.9")
def test_eval_sync_runs_the_fast_path_when_asked(dataset, tmp_path, tiny_weights, monkeypatch):
    from se4lip_features.cli import eval_main

    seen = []
    real = SpeechEncoder.encode

    def recording(self, x):  # the speech windows of every clip go through the extractor's precision
        seen.append(torch.backends.mkldnn.matmul.fp32_precision)
        return real(self, x)

    monkeypatch.setattr(SpeechEncoder, "encode", recording)
    calls = {}
    for precision in ("bf16", "fp32"):
        out = tmp_path / f"{precision}.json"
        assert eval_main(["sync", str(dataset), "--weights", str(tiny_weights), "--precision", precision,
                          "-o", str(out)]) == 0
        assert json.loads(out.read_text())["precision"] == precision
        calls[precision], seen[:] = list(seen), []
    n = len(PreparedData(dataset).clips)
    assert calls["bf16"] == ["bf16"] * n and "bf16" not in calls["fp32"] and len(calls["fp32"]) == n  # a batch per clip
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"  # restored


def test_training_on_several_datasets_holds_out_each(dataset, tmp_path):
    prepare_grid(tmp_path / "short", segment_s=0.6)  # 15-frame clips, ids bbaf2n@0, ...
    (tmp_path / "short" / "meta.json").write_text((tmp_path / "short" / "meta.json").read_text().replace("@", "#"))
    cfg = TrainConfig(**{**TINY_TRAIN.__dict__, "val_clips": 2, "gain_db": 40.0, "noise_p": 0.5})
    train([dataset, tmp_path / "short"], tmp_path / "run", cfg, TINY_MODEL, progress=False)
    val = json.loads((tmp_path / "run" / "split.json").read_text())["val"]
    first, second = (data.PreparedData(d).split(2, seed=cfg.split_seed)[1] for d in (dataset, tmp_path / "short"))
    assert val == [c.id for c in first + second] and sum("#" in v for v in val) == 2
    _, info = weights.load(tmp_path / "run" / "final.safetensors")
    assert info["data"] == f"{dataset}, {tmp_path / 'short'}"


def test_the_training_seed_leaves_the_held_out_clips_alone(tmp_path):
    prepare_grid(tmp_path / "short", segment_s=0.6)  # 15-frame clips, 2 held out
    runs = {}
    for seed, split_seed in ((0, 0), (1, 0), (0, 3)):
        cfg = dataclasses.replace(TINY_TRAIN, steps=2, val_every=2, seed=seed, split_seed=split_seed)
        train(tmp_path / "short", tmp_path / f"run{seed}{split_seed}", cfg, TINY_MODEL, progress=False)
        model, info = weights.load(tmp_path / f"run{seed}{split_seed}" / "final.safetensors")
        runs[seed, split_seed] = (json.loads((tmp_path / f"run{seed}{split_seed}" / "split.json").read_text())["val"],
                                  model.speech.state_dict(), TrainConfig.from_dict(json.loads(info["train_config"])))
    assert runs[0, 0][0] == runs[1, 0][0] != runs[0, 3][0]  # another seed, the same held-out clips
    assert any(not torch.equal(a, runs[1, 0][1][k]) for k, a in runs[0, 0][1].items())  # ... and another training
    assert runs[0, 3][2].split_seed == 3 and runs[1, 0][2].seed == 1
    old = {k: v for k, v in dataclasses.asdict(runs[1, 0][2]).items() if k != "split_seed"}
    assert TrainConfig.from_dict(old).split_seed == 1  # a config from before split_seed drew its split with seed


def test_consistency_pairs_each_speech_window_with_a_noisy_twin(dataset, tmp_path):
    data = PreparedData(dataset)
    items = [(data, c) for c in data.clips]
    assert WindowSampler(items, TINY_TRAIN, TINY_MODEL).batch(np.random.default_rng(0)).twins is None  # off: no cost
    cfg = dataclasses.replace(TINY_TRAIN, loss=LossConfig(consistency=1.0))
    batch = WindowSampler(items, cfg, TINY_MODEL).batch(np.random.default_rng(0))
    spec, twin = batch.speech(data.fps, TINY_MODEL.n_stft_frames)
    assert spec[0].shape == twin.shape and not torch.equal(spec[0], twin)
    model = SE4Lip(TINY_MODEL).train()
    args = (batch.lips, batch.targets(), cfg.loss)
    losses = model(spec, *args, twin=twin)
    consistency = losses.consistency
    assert 0 < consistency < 2
    torch.testing.assert_close(losses.total, losses.bce + losses.nce + consistency)  # weights 1, 1 and 1
    consistency.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.speech.parameters())
    assert all(p.grad is None for p in model.lips.parameters())  # it only concerns the speech encoder
    same = model.eval()(spec, *args, twin=spec[0])  # identical twins: nothing to pull together
    assert same.consistency.abs() < 1e-6 and model(spec, *args).consistency == 0
    history = train(dataset, tmp_path / "run", dataclasses.replace(cfg, steps=2), TINY_MODEL, progress=False)
    assert len(history["consistency"]) == 2 and all(0 < c < 2 for c in history["consistency"])


def test_level_norm_makes_the_speech_encoder_gain_invariant():
    cfg = ModelConfig(embed_dim=32, front_end="stft", speech_encoder="cnn", level_norm=True)
    model = SE4Lip(cfg).eval()
    with torch.no_grad():
        model.speech.spec_mean.normal_()
        model.speech.spec_std.uniform_(0.5, 2.0)
        spec = torch.randn(4, cfg.n_stft_frames, 257)
        a, b = model.encode_speech(spec), model.encode_speech(spec + 3.0)  # log|X| + 3: 26 dB louder
        plain = SE4Lip(dataclasses.replace(cfg, level_norm=False)).eval()
        plain.load_state_dict(model.state_dict())
        assert (a - b).abs().max() < 1e-5
        assert (plain.encode_speech(spec) - plain.encode_speech(spec + 3.0)).abs().max() > 0.01
    with pytest.raises(ValueError, match="level_norm needs speech_encoder='cnn'"):
        ModelConfig(front_end="stft", speech_encoder="gru", level_norm=True)


def test_a_run_without_a_terminal_logs_a_line_per_checkpoint(dataset, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="se4lip_features.training.train"):
        train(dataset, tmp_path / "run", dataclasses.replace(TINY_TRAIN, steps=2, val_every=10), TINY_MODEL,
              progress=False)
    lines = [m for m in caplog.messages if "checkpoint written" in m]
    assert [line.split(",")[0] for line in lines] == ["step 1 of 2", "step 2 of 2"]
