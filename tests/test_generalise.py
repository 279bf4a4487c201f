"""benchmarks/quality/generalise.py: sync and probe figures per held-out set, short clips included, on tiny data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

QUALITY = Path(__file__).resolve().parent.parent / "benchmarks" / "quality"


def _generalise():
    sys.path.insert(0, str(QUALITY))  # it imports its neighbour run.py, as it does when run as a script
    try:
        spec = importlib.util.spec_from_file_location("generalise", QUALITY / "generalise.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(QUALITY))
    return module


def test_generalise_reports_sync_and_probe_per_set(grid_dataset, tiny_weights, tmp_path, capsys):
    generalise = _generalise()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": ["bbaf2n@25", "bbaf3s@50"]}))
    argv = ["--weights", str(tiny_weights), "--set", f"whole={grid_dataset}:{split}", "--set", f"random={grid_dataset}",
            "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "out")]
    assert generalise.main(argv) == 1  # PreparedData.split(60) of 6 clips: one line, status 1
    assert "cannot hold out 60 of 6 clips" in capsys.readouterr().err
    assert generalise.main(argv[:4] + ["--steps", "2", "--seeds", "0", "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "generalise.json").read_text())
    s = res["sets"]["whole"]
    assert s["n_held_out"] == 2 and s["median_frames"] == 25  # 1 s clips: sync searches +-5 frames
    label = "se4lip:tiny"
    assert set(s["probe"]["features"]) == {"mean-shape", "log-mel", label}
    assert s["sync"][label]["summary"]["n_clips"] == 2 and "log-mel" not in s["sync"]
    table = (tmp_path / "out" / "generalise.md").read_text()
    assert f"| whole | {label} | 2 clips (25 frames) |" in table and "| whole | log-mel | 2 clips (25 frames) | – |" in table


def test_a_set_held_out_whole_gets_sync_only(grid_dataset, tiny_weights, tmp_path):
    generalise = _generalise()
    argv = ["--weights", str(tiny_weights), "--set", f"wild={grid_dataset}:all", "--steps", "2", "--seeds", "0",
            "--out", str(tmp_path / "out")]
    assert generalise.main(argv) == 0
    s = json.loads((tmp_path / "out" / "generalise.json").read_text())["sets"]["wild"]
    assert s["n_train"] == 0 and s["n_held_out"] == 6 and s["split"] == "every clip" and "probe" not in s
    assert s["sync"]["se4lip:tiny"]["summary"]["n_clips"] == 6
    table = (tmp_path / "out" / "generalise.md").read_text()
    assert "| wild | se4lip:tiny | 6 clips (25 frames) |" in table and "log-mel" not in table
