"""The JSON sidecar of a feature file: what a reader needs to know about the features instead of hard-coding it."""

from __future__ import annotations

import json
from pathlib import Path

from . import __version__

SCALE = "unit-norm embedding x sqrt(dim)"  # how the features are scaled (Extractor.scale)
REQUIRED = ("dim", "layout", "window", "fps", "n_frames", "weights", "weights_sha256")  # what the adapters read


def describe(*, dim: int, layout: str, window: int, fps: float, n_frames: int, weights: str, weights_sha256: str,
             precision: str, audio: str, audio_sha256: str) -> dict:
    """The sidecar of a feature file: its shape, the weights and audio it came from, and this package's version."""
    return {"dim": dim, "layout": layout, "window": window, "fps": float(fps), "n_frames": n_frames, "scale": SCALE,
            "weights": weights, "weights_sha256": weights_sha256, "precision": precision, "audio": audio,
            "audio_sha256": audio_sha256, "version": __version__}


def sidecar_path(npy_path: str | Path) -> Path:
    """The JSON sidecar beside a feature file: ``aud_se4lip.npy`` -> ``aud_se4lip.json``."""
    return Path(npy_path).with_suffix(".json")


def read_sidecar(npy_path: str | Path) -> dict:
    """The sidecar of a feature file, checked for the keys the adapters rely on."""
    path = sidecar_path(npy_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no sidecar for {npy_path}; write features with se4lip-extract")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    missing = set(REQUIRED) - set(meta)
    if missing:
        raise ValueError(f"{path}: sidecar lacks {sorted(missing)}")
    return meta


def read_features(npy_path: str | Path) -> tuple:
    """A feature file written by ``se4lip-extract`` and its sidecar, checked against each other.

    Returns
    -------
    features : np.ndarray float32 (n_frames, window, dim)
    meta : dict, the sidecar
    """
    import numpy as np

    meta = read_sidecar(npy_path)
    features = np.load(npy_path)
    expected = (meta["n_frames"], meta["window"], meta["dim"])
    if features.shape != expected:
        raise ValueError(f"{npy_path}: holds an array of shape {features.shape}, its sidecar describes {expected}")
    return features, meta
