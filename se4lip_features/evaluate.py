"""Evaluation: SyncNet-style audio-visual offset and confidence of each clip, and their summary over a set."""

from __future__ import annotations

import numpy as np
import torch

from . import atomic, audio

MAX_SHIFT = 15  # frames tried on each side, as SyncNet does, in clips of at least 3 s (75 frames at 25 fps)
MIN_SHIFT = 4  # the least search that makes a verdict: +-4 frames (160 ms at 25 fps), clips of 20 frames or more
FLAT = 1e-6  # a distance curve varying by less than this is flat: audio that matches no shift (silence)


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

    ``embed(wav, centres, batch_size)`` computes them from the waveform and the windows' centre samples, e.g.
    :meth:`se4lip_features.Extractor.embed` with its precision; by default the model's
    :meth:`SpeechEncoder.embed <se4lip_features.model.SpeechEncoder.embed>`.
    """
    device = next(model.parameters()).device
    wav = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(device)
    centres = torch.from_numpy(np.round(np.asarray(frames) / fps * audio.SAMPLE_RATE).astype(np.int64))
    return (embed or model.speech.embed)(wav, centres, batch_size)


def lip_windows(valid: np.ndarray, half: int) -> np.ndarray:
    """bool (n_frames,): the frames centring a lip window whose 2 * half + 1 frames all have a face."""
    ok = np.convolve(valid.astype(int), np.ones(2 * half + 1, int), mode="same") == 2 * half + 1
    ok[:half] = ok[len(ok) - half:] = False  # windows need their full frames
    return ok


def clip_sync(model, wav: np.ndarray, lips: np.ndarray, valid: np.ndarray, fps: float,
              max_shift: int | None = None, embed=None) -> dict:
    """Audio-visual offset of one clip, SyncNet-style, or the reason there is none.

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
    dict with ``verdict``: "measured" (offset, confidence, distances per shift, frame_exact and frame_within1,
    the fractions of lip windows whose own best shift is 0 or within 1 frame, n_windows); "no sync" (a flat
    distance curve, as of silent audio: offset None, confidence 0); or, with a ``reason``, "too short" (the
    search could not span +-:data:`MIN_SHIFT` frames) or "no lip window" (no 5 consecutive frames with a face)
    """
    half = model.config.window_frames // 2
    if max_shift is None:
        max_shift = min(MAX_SHIFT, len(lips) // 5)
    if max_shift < MIN_SHIFT:
        return {"verdict": "too short", "reason": f"{len(lips)} frames: a search of +-{MIN_SHIFT} frames needs "
                                                  f"{5 * MIN_SHIFT} or more"}
    centres = np.flatnonzero(lip_windows(valid, half))
    if len(centres) == 0:
        return {"verdict": "no lip window", "reason": f"no {2 * half + 1} consecutive frames with a face"}
    shifts = np.arange(-max_shift, max_shift + 1)
    first = centres[0] - max_shift
    a = speech_embeddings(model, wav, np.arange(first, centres[-1] + max_shift + 1), fps, embed=embed)
    v = lip_embeddings(model, lips, centres)
    idx = torch.from_numpy(centres[:, None] + shifts[None, :] - first)  # (n, n_shifts) rows of a
    dist = (v[:, None, :] - a[idx]).norm(dim=-1).cpu().numpy()  # (n, n_shifts)
    mean = dist.mean(axis=0)
    distances = [round(float(d), 5) for d in mean]
    if np.ptp(mean) < FLAT:
        return {"verdict": "no sync", "offset": None, "confidence": 0.0, "distances": distances,
                "frame_exact": 0.0, "frame_within1": 0.0, "n_windows": len(centres)}
    best = int(np.argmin(mean))
    own = shifts[np.argmin(dist, axis=1)]
    return {
        "verdict": "measured",
        "offset": int(shifts[best]),
        "confidence": float(np.median(mean) - mean[best]),
        "distances": distances,
        "frame_exact": float(np.mean(own == 0)),
        "frame_within1": float(np.mean(np.abs(own) <= 1)),
        "n_windows": len(centres),
    }


def sync_set(model, clips, fps: float, embed=None, progress: bool = False) -> dict:
    """The sync of a set of clips: each clip's :func:`clip_sync` and the set's :func:`sync_summary`.

    The one way every tool measures sync (se4lip-eval sync, training's validation, fine-tuning's early
    stopping, the robustness and quality benchmarks).

    Parameters
    ----------
    clips : iterable of (id, wav, lips, valid), e.g. :func:`dataset_clips`; ids must be unique
    embed : how speech windows are encoded (see :func:`speech_embeddings`)

    Returns
    -------
    {"clips": {id: clip_sync result}, "summary": sync_summary of them}
    """
    from tqdm import tqdm

    results = {}
    for clip_id, wav, lips, valid in tqdm(clips, desc="sync", unit="clip", disable=not progress):
        if clip_id in results:
            raise ValueError(f"clip id {clip_id!r} given twice")
        results[clip_id] = clip_sync(model, wav, lips, valid, fps, embed=embed)
    return {"clips": results, "summary": sync_summary(list(results.values()))}


def dataset_clips(data, clips=None):
    """(id, audio, lips, valid) of a prepared dataset's clips (all of them by default), for :func:`sync_set`."""
    for clip in data.clips if clips is None else clips:
        yield clip.id, data.clip_audio(clip), data.clip_lips(clip), data.clip_valid(clip)


def sync_summary(results: list[dict]) -> dict:
    """Set-level figures over the clips with a verdict: accuracy (|offset| <= 1 frame), exact accuracy, mean
    offset and confidence. "no sync" clips count as out of sync (confidence 0); clips too short or without a
    lip window are left out and counted in ``n_skipped``. Figures of a set with no verdict are None."""
    judged = [r for r in results if r.get("verdict", "measured") in ("measured", "no sync")]
    offsets = np.array([r["offset"] for r in judged if r["offset"] is not None])
    n = len(judged)

    def mean(values):
        return float(np.mean(values)) if n else None

    return {
        "n_clips": n,
        "n_skipped": len(results) - n,
        "accuracy": mean([r["offset"] is not None and abs(r["offset"]) <= 1 for r in judged]),
        "exact_accuracy": mean([r["offset"] == 0 for r in judged]),
        "mean_offset": float(offsets.mean()) if len(offsets) else None,
        "mean_confidence": mean([r["confidence"] for r in judged]),
        "frame_exact": mean([r["frame_exact"] for r in judged]),
        "frame_within1": mean([r["frame_within1"] for r in judged]),
    }


def plot_sync(results: dict, folder) -> None:
    """One PNG per clip: mean distance against audio shift, the chosen offset marked."""
    from pathlib import Path

    from matplotlib.figure import Figure  # no pyplot: no global backend or state

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for clip_id, r in results.items():
        if "distances" not in r:  # too short, or no lip window: nothing to draw
            continue
        shifts = np.arange(len(r["distances"])) - len(r["distances"]) // 2
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        ax.plot(shifts, r["distances"], "o-", ms=3)
        if r["offset"] is not None:
            ax.axvline(r["offset"], color="C3", ls="--", label=f"offset {r['offset']:+d}, conf {r['confidence']:.2f}")
            ax.legend()
        ax.set(xlabel="audio shift (frames)", ylabel="mean distance", title=f"{clip_id} ({r['verdict']})")
        fig.tight_layout()
        atomic.save_figure(fig, folder / f"{clip_id.replace('/', '_')}.png", dpi=90)
