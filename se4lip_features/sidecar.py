"""The JSON sidecar of a feature file, and the one reader that checks a feature file against it.

Standard library and numpy only (numpy and the version imported where they are used): ``se4lip-patch`` writes this same
file into a patched checkout, so a renderer's interpreter reads features without the package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SCALE = "unit-norm embedding x sqrt(dim)"  # how the features are scaled (Extractor.scale)
REQUIRED = ("dim", "layout", "window", "fps", "n_frames", "weights", "weights_sha256")  # what the adapters read


def describe(*, dim: int, layout: str, window: int, fps: float, n_frames: int, weights: str, weights_sha256: str,
             weights_source: str, precision: str, audio: str, audio_sha256: str) -> dict:
    """The sidecar of a feature file: its shape, the weights and audio it came from, and this package's version.

    ``weights_source`` is what finds those weights again (a released name, an ``hf://`` address or an absolute
    path), so features for test audio can be extracted with the weights of the training features.
    """
    from se4lip_features.version import (
        __version__,  # here, not at the top: this file also runs without the package
    )

    return {"dim": dim, "layout": layout, "window": window, "fps": float(fps), "n_frames": n_frames, "scale": SCALE,
            "weights": weights, "weights_sha256": weights_sha256, "weights_source": weights_source,
            "precision": precision, "audio": audio, "audio_sha256": audio_sha256, "version": __version__}


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks: the package's one file hash (weights checks, sidecars, and the
    adapters' stale-audio check in a patched checkout, which has this file but not the package)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(npy_path: str | Path) -> Path:
    """The JSON sidecar beside a feature file: ``aud_se4lip.npy`` -> ``aud_se4lip.json``."""
    return Path(npy_path).with_suffix(".json")


def read_sidecar(npy_path: str | Path) -> dict:
    """The sidecar of a feature file, checked for the keys the adapters rely on."""
    path = sidecar_path(npy_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no sidecar for {npy_path}; write both again with "
                                f"`se4lip-extract AUDIO -o {npy_path} --force`")
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
    features = np.load(npy_path, allow_pickle=False)
    expected = (int(meta["n_frames"]), int(meta["window"]), int(meta["dim"]))
    if features.shape != expected:
        raise ValueError(f"{npy_path}: array of shape {features.shape}, but its sidecar describes {expected} "
                         "(frames, window, dim); the two files do not belong together")
    if not np.issubdtype(features.dtype, np.floating) or not np.isfinite(features).all():
        raise ValueError(f"{npy_path}: features must be finite floats (dtype {features.dtype})")
    return features.astype(np.float32, copy=False), meta
