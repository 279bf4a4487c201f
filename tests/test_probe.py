"""Landmark probe: target normalisation, metrics by hand, the renderer audio path's shapes, determinism, outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from se4lip_features.analysis import baselines, probe
from se4lip_features.training.data import Clip, PreparedData


class FakeData:
    """The parts of PreparedData the probe reads, for hand-made landmarks."""

    def __init__(self, landmarks, lengths, valid=None, gap=(0, 1), fps=25.0):
        self.landmarks = np.asarray(landmarks, np.float32)
        self.valid = np.ones(len(self.landmarks), bool) if valid is None else np.asarray(valid)
        self.meta = {"gap": list(gap)}
        self.fps = fps
        starts = np.cumsum([0, *lengths[:-1]])
        self.clips = [Clip(f"c{i}", int(s), int(n), 0, 0, 0) for i, (s, n) in enumerate(zip(starts, lengths))]


def with_eyes(mouth, eye_dist):
    """(n, n_mouth, 2) mouth points plus outer eye corners ``eye_dist`` px apart -> (n, n_mouth + 2, 2)."""
    mouth = np.asarray(mouth, np.float32)
    eyes = np.broadcast_to(np.array([[0.0, -50.0], [eye_dist, -50.0]], np.float32), (len(mouth), 2, 2))
    return np.concatenate([mouth, eyes], axis=1)


def test_normalise_mouth_by_hand():
    mouth = np.array([[[10.0, 20.0], [14.0, 20.0], [12.0, 23.0]]])  # mean (12, 21)
    out = probe.normalise_mouth(with_eyes(mouth, 50.0), ref_eye_px=100.0)  # scale x2
    np.testing.assert_allclose(out[0], [[-4.0, -2.0], [4.0, -2.0], [0.0, 4.0]], atol=1e-6)
    # the same face twice as large, anywhere in the image, gives the same normalised points
    np.testing.assert_allclose(probe.normalise_mouth(with_eyes(mouth * 2 + 7, 100.0)), out, atol=1e-5)
    assert np.isnan(probe.normalise_mouth(np.full((1, 5, 2), np.nan))).all()


def test_mean_shape_lmd_by_hand():
    # two points per mouth; train frames: p1 at (0, 2) and (0, 4) -> mean shape p0 (0, 0), p1 (0, 3)
    points = np.array([[[0, 0], [0, 2]], [[0, 0], [0, 4]], [[3, 4], [0, 3]], [[0, 0], [0, 3]]], np.float32)
    targets = probe.Targets(points, np.array([True, True, True, False]), (0, 1), 100.0)
    train = [Clip("a", 0, 2, 0, 0, 0)]
    held = [Clip("b", 2, 2, 0, 0, 0)]  # its second frame has no face: not counted
    got = probe.mean_shape_score(targets, train, held)
    assert got["lmd"] == pytest.approx((5.0 + 0.0) / 2)  # distances 5 and 0 on the one valid frame
    assert got["n_frames"] == 1
    assert got["gap_r"] is None  # a constant prediction has no correlation


def test_metrics_by_hand():
    pred = np.zeros((2, 2, 2), np.float32)
    true = np.array([[[3, 4], [0, 0]], [[0, 0], [0, 1]]], np.float32)
    assert probe.landmark_distance(pred, true) == pytest.approx((5 + 0 + 0 + 1) / 4)
    np.testing.assert_allclose(probe.mouth_gap(true, (0, 1)), [5.0, 1.0])
    assert probe.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert probe.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert probe.pearson([1, 2, 3, 4], [1, -1, -1, 1]) == pytest.approx(0.0)
    assert probe.pearson([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.parametrize("width", [16, 8, 3, 2, 1])
def test_audio_net_reduces_any_window_to_one_step(width):
    net = probe.AudioNet(7)
    x = torch.randn(5, width, 7)
    assert net.conv(x.transpose(1, 2)).shape == (5, 64, 1)  # 16 -> 8 -> 4 -> 2 -> 1
    assert net(x).shape == (5, probe.AUDIO_DIM)


def test_audio_net_reads_the_first_16_sub_steps():
    net = probe.AudioNet(3)
    x = torch.randn(4, 20, 3)
    torch.testing.assert_close(net(x), net(x[:, :16]))


def test_shared_first_layer_equals_the_plain_path():
    torch.manual_seed(0)
    net = probe.AudioNet(6)
    table = torch.randn(40, 6)
    for width in (16, 2, 1):
        rows = torch.randint(0, 40, (9, width))
        torch.testing.assert_close(net.forward_shared(table, rows), net(table[rows]), atol=1e-5, rtol=1e-5)


def test_attention_returns_a_weighted_mean_of_the_window():
    att = probe.AudioAttNet()
    with torch.no_grad():  # scores ignored: the weights are softmax(0, 1, ..., 7) whatever the frames hold
        att.fc.weight.zero_()
        att.fc.bias.copy_(torch.arange(8.0))
    x = torch.randn(3, 8, probe.AUDIO_DIM)  # distinct frames: only these weights give this mean
    expected = (torch.softmax(torch.arange(8.0), 0)[None, :, None] * x).sum(dim=1)
    torch.testing.assert_close(att(x), expected)


def test_clip_windows_pad_outside_each_clip():
    win = probe.clip_windows([3, 2])  # 5 frames; row 5 is the padding frame
    pad = 5
    assert win.shape == (5, 8)
    assert win[0].tolist() == [pad] * 4 + [0, 1, 2, pad]  # frames -4..+3 of clip 0's first frame
    assert win[2].tolist() == [pad, pad, 0, 1, 2, pad, pad, pad]
    assert win[3].tolist() == [pad] * 4 + [3, 4, pad, pad]  # clip 1 never sees clip 0


def synthetic(n_clips=12, n_frames=30, seed=0):
    """Mouths that open and close; features that say how open (plus noise) or only noise."""
    rng = np.random.default_rng(seed)
    lengths = [n_frames] * n_clips
    opening = np.concatenate([2 + 2 * np.sin(np.arange(n_frames) / rng.uniform(1.5, 3) + rng.uniform(0, 6))
                              for _ in range(n_clips)])  # (n,) px
    base = np.array([[0.0, -1.0], [0.0, 1.0], [-3.0, 0.0], [3.0, 0.0]])
    mouth = np.repeat(base[None], len(opening), 0)
    mouth[:, 0, 1] -= opening / 2
    mouth[:, 1, 1] += opening / 2
    data = FakeData(with_eyes(mouth, 100.0), lengths)
    informative = np.stack([opening, rng.normal(size=len(opening))], axis=1).astype(np.float32)
    noise = rng.normal(size=(len(opening), 2)).astype(np.float32)
    return data, informative, noise


def bank_of(name, per_frame, width=2):
    """A FeatureBank whose every sub-step of frame i holds ``per_frame[i]``."""
    table = np.concatenate([per_frame, np.zeros((1, per_frame.shape[1]), np.float32)])
    rows = np.repeat(np.arange(len(per_frame))[:, None], width, axis=1)
    return probe.FeatureBank(name, table, rows, per_frame.shape[1], 0.0)


CFG = probe.ProbeConfig(steps=150, clips_per_batch=4, lr=3e-3)


def test_identical_features_give_identical_results():
    data, informative, _ = synthetic()
    targets = probe.Targets.from_data(data)
    train, held = data.clips[:9], data.clips[9:]
    a = probe.run_probe(bank_of("a", informative), targets, train, held, seeds=(0, 1), cfg=CFG)
    b = probe.run_probe(bank_of("b", informative.copy()), targets, train, held, seeds=(0, 1), cfg=CFG)
    assert a["lmd"]["per_seed"] == b["lmd"]["per_seed"]  # zero difference, to the last bit
    assert a["gap_r"]["per_seed"] == b["gap_r"]["per_seed"]
    assert a["lmd"]["per_seed"][0] != a["lmd"]["per_seed"][1]  # the seed does change the run


def test_probe_learns_from_informative_features_only():
    data, informative, noise = synthetic()
    targets = probe.Targets.from_data(data)
    train, held = data.clips[:9], data.clips[9:]
    floor = probe.mean_shape_score(targets, train, held)["lmd"]
    good = probe.run_probe(bank_of("good", informative), targets, train, held, seeds=(0,), cfg=CFG)
    bad = probe.run_probe(bank_of("noise", noise), targets, train, held, seeds=(0,), cfg=CFG)
    assert good["lmd"]["mean"] < 0.5 * floor
    assert good["gap_r"]["mean"] > 0.9
    assert bad["lmd"]["mean"] > 0.9 * floor


def test_feature_bank_stores_each_sub_step_once(grid_dataset):
    data = PreparedData(grid_dataset)
    ex = baselines.get("log-mel")
    bank = probe.FeatureBank.build("log-mel", ex, data)
    n_frames = sum(c.n_frames for c in data.clips)
    assert bank.rows.shape == (n_frames, 16)
    assert len(bank.table) == sum(2 * c.n_frames + 14 for c in data.clips) + 1  # + the zero padding row
    assert not bank.table[-1].any()
    clip = data.clips[2]
    want = ex.extract(data.clip_audio(clip), 16000, fps=data.fps)
    np.testing.assert_array_equal(bank.frame_features(np.arange(clip.frame_start, clip.frame_start + clip.n_frames)),
                                  want)


def test_probe_outputs_on_prepared_clips(grid_dataset, tmp_path):
    data = PreparedData(grid_dataset)
    train, held = probe.split_clips(data, n_val=2, seed=0)
    assert {c.id for c in held} == {c.id for c in data.split(2, 0)[1]}
    targets = probe.Targets.from_data(data)
    assert not targets.valid[[10, 11]].any()  # the frames without a face
    banks = [probe.FeatureBank.build(n, baselines.get(n), data) for n in ("log-mel", "mfcc")]
    result = probe.probe_all(banks, targets, train, held, seeds=(0, 1), cfg=probe.ProbeConfig(steps=5))
    result.update(dataset="grid", fps=data.fps)
    paths = probe.write_outputs(result, tmp_path)
    assert {p.name for p in paths} == {"probe.json", "probe.md", "probe.png", "probe_mean-shape.json",
                                       "probe_log-mel.json", "probe_mfcc.json"}
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert list(saved["features"]) == ["mean-shape", "log-mel", "mfcc"]
    assert saved["features"]["mean-shape"]["lmd"]["mean"] == pytest.approx(
        probe.mean_shape_score(targets, train, held)["lmd"])
    assert len(saved["features"]["log-mel"]["lmd"]["per_seed"]) == 2
    assert saved["split"]["held_out"] == [c.id for c in held]
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| log-mel | 80 |" in (tmp_path / "probe.md").read_text()


def test_split_file(grid_dataset, tmp_path):
    data = PreparedData(grid_dataset)
    ids = [data.clips[1].id, data.clips[4].id]
    (tmp_path / "split.json").write_text(json.dumps({"val": ids}))
    train, held = probe.split_clips(data, split_file=tmp_path / "split.json")
    assert [c.id for c in held] == ids and len(train) == len(data.clips) - 2
    (tmp_path / "bad.json").write_text(json.dumps({"val": ["nope"]}))
    with pytest.raises(ValueError, match="1 held-out ids are not in"):
        probe.split_clips(data, split_file=tmp_path / "bad.json")


def test_cli_refuses_to_overwrite(grid_dataset, tmp_path, capsys):
    from se4lip_features.cli import eval_main

    (tmp_path / "probe.json").write_text("{}")
    assert eval_main(["lmd", str(grid_dataset), "stft", "-o", str(tmp_path), "--val-clips", "2", "--steps", "2"]) == 1
    assert capsys.readouterr().err == f"se4lip-eval lmd: {tmp_path / 'probe.json'}: exists (use -f to overwrite)\n"
    assert eval_main(["lmd", str(grid_dataset), "stft", "-o", str(tmp_path), "--val-clips", "2", "--steps", "2",
                      "--seeds", "0", "-f"]) == 0
    assert "stft" in json.loads((tmp_path / "probe.json").read_text())["features"]


def test_offset_check_finds_a_known_shift():
    """benchmarks/quality/offsets.py: a mouth opening predicted 3 frames late reads as the audio 3 frames late."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "quality" / "offsets.py"
    spec = importlib.util.spec_from_file_location("offsets", path)
    offsets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offsets)
    rng = np.random.default_rng(0)
    true = np.convolve(rng.normal(size=90), np.ones(4) / 4, mode="same")  # a smooth, non-periodic gap curve
    for shift in (-4, 0, 3):
        pred = np.roll(true, shift)  # pred[i] = true[i - shift]
        valid = np.ones(90, bool)
        valid[:5] = valid[-5:] = False  # the wrapped ends are not used
        found, corr = offsets.best_shift(pred, true, valid, max_shift=6)
        assert found == shift and len(corr) == 13 and max(corr) > 0.99
