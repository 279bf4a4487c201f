"""Per-video-frame SE4Lip features in the layouts the renderers read, and the .npy + sidecar files."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from . import __version__, audio, weights
from .weights import sha256_file

log = logging.getLogger(__name__)

# Layout name -> sub-steps per video frame, spaced 1 / (2 fps) apart and centred on the frame:
# ds like DeepSpeech's [N, 16, 29], hubert like HuBERT's [N, 2, 1024], ave like SyncTalk's [N, 1, 512].
LAYOUTS = {"ds": 16, "hubert": 2, "ave": 1}
DEFAULT_BATCH = 256  # speech windows per encoder call


class Extractor:
    """A trained speech encoder turning audio into per-frame features; made by :func:`se4lip_features.load`."""

    def __init__(self, model, info: dict, device: torch.device):
        self.model, self.info, self.device = model, info, device
        self.config = model.config
        self.dim = self.config.embed_dim
        # Embeddings are unit vectors; times sqrt(dim) gives each channel unit RMS, the scale of the
        # unnormalised features (DeepSpeech logits, HuBERT states) the renderers' AudioNet was tuned on.
        self.scale = math.sqrt(self.dim)

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def sha256(self) -> str:
        return self.info["sha256"]

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor, centres: torch.Tensor, batch_size: int = DEFAULT_BATCH,
              progress: bool = False) -> torch.Tensor:
        """Unit-norm speech embeddings of windows centred on given samples.

        Parameters
        ----------
        wav : float32 (n_samples,) at 16 kHz
        centres : int64 (n_windows,) sample indices (may lie outside the audio: silence is read there)

        Returns
        -------
        torch.Tensor float32 (n_windows, dim) on ``self.device``
        """
        from tqdm import tqdm

        wav = wav.to(self.device)
        out = []
        batches = range(0, len(centres), batch_size)
        for start in tqdm(batches, desc="extract", unit="batch", leave=False, disable=not progress):
            spec = audio.speech_windows(wav, centres[start: start + batch_size], self.config.n_stft_frames)
            out.append(self.model.encode_speech(spec))
        if not out:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat(out)

    def extract(self, wav: np.ndarray, sr: int, fps: float = 25.0, layout: str = "ds",
                batch_size: int = DEFAULT_BATCH, progress: bool = False, name: str = "audio") -> np.ndarray:
        """Features for every video frame of the audio.

        Row i is centred on t = i / fps; there are exactly round(duration * fps) rows. Each sub-step
        embedding is computed once, however many frames share it.

        Parameters
        ----------
        wav : (n_samples,) or (n_samples, channels), int or float PCM
        sr : sample rate, 8-96 kHz
        fps : video frame rate
        layout : "ds" -> (N, 16, dim), "hubert" -> (N, 2, dim), "ave" -> (N, 1, dim)

        Returns
        -------
        np.ndarray float32 (N, W, dim)
        """
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        if not 0 < fps < math.inf:
            raise ValueError(f"fps must be positive and finite, got {fps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        wav16 = audio.prepare_waveform(wav, sr, name=name)
        n = audio.frame_count(len(wav16), fps)
        if n < 1:
            raise audio.AudioError(f"{name}: {len(wav16) / audio.SAMPLE_RATE:.3f} s of audio is shorter than one "
                                   f"frame at {fps:g} fps")
        steps, index = substep_grid(n, fps, LAYOUTS[layout])
        centres = torch.from_numpy(np.round(steps * audio.SAMPLE_RATE).astype(np.int64))
        emb = self.embed(torch.from_numpy(wav16), centres, batch_size, progress) * self.scale
        return emb[torch.from_numpy(index).to(emb.device)].cpu().numpy().astype(np.float32)


def substep_grid(n_frames: int, fps: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Times of the distinct sub-steps, and which of them each frame uses.

    Sub-step k of frame i is centred at i / fps + (k - (width - 1) / 2) / (2 fps); neighbouring frames
    share all but two of them.

    Returns
    -------
    times : float64 (n_steps,) seconds
    index : int64 (n_frames, width) into ``times``
    """
    grid = 2 * np.arange(n_frames)[:, None] + np.arange(width)[None, :]  # half-frame units
    used, index = np.unique(grid, return_inverse=True)
    times = (used - (width - 1) / 2) / (2 * fps)
    return times, index.reshape(n_frames, width)


def load(name_or_path: str | Path | None = None, device: str | torch.device | None = None) -> Extractor:
    """Load SE4Lip weights for extraction.

    Parameters
    ----------
    name_or_path : a released name (see :func:`available_models`), a ``.safetensors`` path, or
        ``hf://owner/repo/file.safetensors[@revision]``; None for the default weights
    device : "cpu", "cuda", ...; None picks CUDA when available
    """
    device = _device(device)
    model, info = weights.load(name_or_path, device)
    return Extractor(model, info, device)


def _device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on; CUDA when available for None, a clear error for an unusable name."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {str(device)!r} ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available to this torch {torch.__version__}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


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
    missing = {"dim", "layout", "window", "fps", "n_frames", "weights", "weights_sha256"} - set(meta)
    if missing:
        raise ValueError(f"{path}: sidecar lacks {sorted(missing)}")
    return meta


def extract_file(audio_path: str | Path, out_path: str | Path, *, extractor: Extractor | None = None,
                 weights: str | None = None, device: str | None = None, fps: float = 25.0, layout: str = "ds",
                 batch_size: int = DEFAULT_BATCH, force: bool = False, progress: bool = False) -> dict:
    """Extract one audio (or video) file to ``out_path`` (.npy) and its sidecar, both written atomically.

    Returns the sidecar dict. Refuses to overwrite unless ``force``.
    """
    audio_path, out_path = Path(audio_path), Path(out_path)
    side = sidecar_path(out_path)
    if not force and (out_path.exists() or side.exists()):
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    extractor = extractor or load(weights, device)
    wav, sr = audio.load_audio(audio_path)
    feats = extractor.extract(wav, sr, fps=fps, layout=layout, batch_size=batch_size, progress=progress,
                              name=str(audio_path))
    meta = {
        "dim": int(feats.shape[2]), "layout": layout, "window": int(feats.shape[1]), "fps": float(fps),
        "n_frames": int(feats.shape[0]), "scale": "unit-norm embedding x sqrt(dim)",
        "weights": extractor.name, "weights_sha256": extractor.sha256,
        "audio": audio_path.name, "audio_sha256": sha256_file(audio_path), "version": __version__,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy = out_path.with_name(out_path.name + ".partial")
    tmp_side = side.with_name(side.name + ".partial")
    try:
        with open(tmp_npy, "wb") as f:
            np.save(f, feats)
        tmp_side.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp_npy, out_path)
        os.replace(tmp_side, side)
    finally:
        for tmp in (tmp_npy, tmp_side):
            tmp.unlink(missing_ok=True)
    return meta
