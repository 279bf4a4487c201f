"""Evaluation: SyncNet-style audio-visual offset and confidence of each clip, and their summary over a set."""

from __future__ import annotations

import numpy as np
import torch

from . import atomic, audio

MAX_SHIFT = 15  # frames tried on each side, as SyncNet does, in clips of at least 3 s (75 frames at 25 fps)


@torch.inference_mode()
def lip_embeddings(model, lips: np.ndarray, centres: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """Unit-norm lip embeddings of the 5-frame windows centred on ``centres``: (n, dim)."""
    half = model.config.window_frames // 2
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(centres), batch_size):
        idx = centres[start: start + batch_size, None] + np.arange(-half, half + 1)[None, :]  # (b, 5)
        win = torch.from_numpy(np.asarray(lips[idx.ravel()])).reshape(len(idx), -1, *lips.shape[1:])
        win = win.permute(0, 1, 4, 2, 3).flatten(1, 2).float().div(255.0)  # (b, 15, H, W), oldest frame first
        out.append(model.encode_lips(win.to(device)))
    return torch.cat(out)


@torch.inference_mode()
def speech_embeddings(model, wav: np.ndarray, frames: np.ndarray, fps: float, batch_size: int = 256,
                      embed=None) -> torch.Tensor:
    """Unit-norm speech embeddings of the windows centred on the given (possibly out-of-range) frames.

    ``embed(wav, centres)`` computes them from the waveform and the windows' centre samples, e.g.
    :meth:`se4lip_features.Extractor.embed` with its precision; by default the model's ``encode_speech``.
    """
    device = next(model.parameters()).device
    wav = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(device)
    centres = torch.from_numpy(np.round(np.asarray(frames) / fps * audio.SAMPLE_RATE).astype(np.int64))
    if embed is not None:
        return embed(wav, centres, batch_size)
    out = [model.encode_speech(audio.speech_windows(wav, centres[s: s + batch_size], model.config.n_stft_frames))
           for s in range(0, len(centres), batch_size)]
    return torch.cat(out)


def clip_sync(model, wav: np.ndarray, lips: np.ndarray, valid: np.ndarray, fps: float,
              max_shift: int | None = None, embed=None) -> dict:
    """Audio-visual offset of one clip, SyncNet-style.

    Every valid lip window i is compared with the speech window at frame i + s for s in
    [-max_shift, max_shift]; the distance is the Euclidean distance of the unit embeddings. The clip's
    offset is the shift of least mean distance (positive: the audio matching frame i comes s frames
    later), its confidence the median minus the minimum of the mean distances.

    Parameters
    ----------
    wav : float32 (n_samples,) at 16 kHz, starting with frame 0
    lips : uint8 (n_frames, H, W, 3) lip crops; valid : bool (n_frames,)
    max_shift : frames tried on each side; default :data:`MAX_SHIFT`, at most a fifth of the clip, so that in
        short clips (30 frames: +-6) most lip windows meet real audio at every shift
    embed : how speech windows are encoded (see :func:`speech_embeddings`); default the model's own

    Returns
    -------
    dict with offset, confidence, distances (per shift), frame_exact and frame_within1 (fractions of lip
    windows whose own best shift is 0, or within 1 frame), n_windows
    """
    half = model.config.window_frames // 2
    ok = np.convolve(valid.astype(int), np.ones(2 * half + 1, int), mode="same") == 2 * half + 1
    ok[:half] = ok[len(ok) - half:] = False
    centres = np.flatnonzero(ok)
    if len(centres) == 0:
        raise ValueError("no valid 5-frame lip window in the clip")
    if max_shift is None:
        max_shift = min(MAX_SHIFT, len(lips) // 5)
    shifts = np.arange(-max_shift, max_shift + 1)
    first = centres[0] - max_shift
    a = speech_embeddings(model, wav, np.arange(first, centres[-1] + max_shift + 1), fps, embed=embed)
    v = lip_embeddings(model, lips, centres)
    idx = torch.from_numpy(centres[:, None] + shifts[None, :] - first)  # (n, n_shifts) rows of a
    dist = (v[:, None, :] - a[idx]).norm(dim=-1).cpu().numpy()  # (n, n_shifts)
    mean = dist.mean(axis=0)
    best = int(np.argmin(mean))
    own = shifts[np.argmin(dist, axis=1)]
    return {
        "offset": int(shifts[best]),
        "confidence": float(np.median(mean) - mean[best]),
        "distances": [round(float(d), 5) for d in mean],
        "frame_exact": float(np.mean(own == 0)),
        "frame_within1": float(np.mean(np.abs(own) <= 1)),
        "n_windows": len(centres),
    }


def sync_summary(results: list[dict]) -> dict:
    """Set-level figures: accuracy (|offset| <= 1 frame), exact accuracy, mean offset and confidence."""
    offsets = np.array([r["offset"] for r in results])
    return {
        "n_clips": len(results),
        "accuracy": float(np.mean(np.abs(offsets) <= 1)),
        "exact_accuracy": float(np.mean(offsets == 0)),
        "mean_offset": float(offsets.mean()),
        "mean_confidence": float(np.mean([r["confidence"] for r in results])),
        "frame_exact": float(np.mean([r["frame_exact"] for r in results])),
        "frame_within1": float(np.mean([r["frame_within1"] for r in results])),
    }


def plot_sync(results: dict, folder) -> None:
    """One PNG per clip: mean distance against audio shift, the chosen offset marked."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for clip_id, r in results.items():
        shifts = np.arange(len(r["distances"])) - len(r["distances"]) // 2
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(shifts, r["distances"], "o-", ms=3)
        ax.axvline(r["offset"], color="C3", ls="--", label=f"offset {r['offset']:+d}, conf {r['confidence']:.2f}")
        ax.set(xlabel="audio shift (frames)", ylabel="mean distance", title=clip_id)
        ax.legend()
        fig.tight_layout()
        atomic.save_figure(fig, folder / f"{clip_id.replace('/', '_')}.png", dpi=90)
        plt.close(fig)
