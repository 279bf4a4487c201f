"""Level and noise robustness: how far features move when the same speech is quieter or noisy, and sync there."""

from __future__ import annotations

import numpy as np

from .. import audio, evaluate

GAINS_DB = (-40, -30, -20, -10, 0)
SNRS_DB = (20,)


def with_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``wav`` plus white noise ``snr_db`` below the clip's RMS (as training's noise augmentation measures it)."""
    rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2) + 1e-12)
    return (wav + rng.standard_normal(len(wav)) * rms * 10 ** (-snr_db / 20)).astype(np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each feature vector of ``a`` with the same one of ``b``: (N, W, dim) x2 -> (N * W,)."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def level_noise(extractor, data, clips, gains_db=GAINS_DB, snrs_db=SNRS_DB, sync_gain_db: float | None = -30.0,
                layout: str = "ds", seed: int = 0, progress: bool = False) -> dict:
    """Cosine of each condition's features to the nominal-level features of the same clips, and sync.

    Every clip's audio is extracted as it is (nominal), at each gain in ``gains_db`` and with white noise at
    each SNR in ``snrs_db``; per clip, the mean cosine over all its feature vectors (frames x sub-steps)
    to the nominal features. ``sync_gain_db``: the clips' sync (:func:`evaluate.clip_sync` with the weights'
    own lip encoder) at nominal level and at that gain.

    Returns
    -------
    dict: ``conditions`` {name: {"kind", "db", "mean_cosine", "min_cosine", "per_clip"}} (names "gain -30 dB",
    "snr 20 dB"), and ``sync`` {"nominal": summary, "gain -30 dB": summary} (evaluate.sync_summary)
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    conditions = [("gain", g) for g in gains_db] + [("snr", s) for s in snrs_db]
    per_clip = {f"{kind} {db:g} dB": [] for kind, db in conditions}
    sync = {"nominal": {}, f"gain {sync_gain_db:g} dB": {}} if sync_gain_db is not None else {}
    for clip in tqdm(clips, desc="robustness", unit="clip", disable=not progress):
        wav = data.clip_audio(clip)
        nominal = extractor.extract(wav, audio.SAMPLE_RATE, data.fps, layout)
        for kind, db in conditions:
            x = wav * np.float32(10 ** (db / 20)) if kind == "gain" else with_noise(wav, db, rng)
            features = extractor.extract(x, audio.SAMPLE_RATE, data.fps, layout)
            per_clip[f"{kind} {db:g} dB"].append(float(_cosines(features, nominal).mean()))
        if sync_gain_db is not None:
            quieter = wav * np.float32(10 ** (sync_gain_db / 20))
            for name, x in (("nominal", wav), (f"gain {sync_gain_db:g} dB", quieter)):
                sync[name][clip.id] = (x, data.clip_lips(clip), data.clip_valid(clip))
    return {
        "conditions": {name: {"kind": kind, "db": db, "mean_cosine": float(np.mean(per_clip[name])),
                              "min_cosine": float(np.min(per_clip[name])), "per_clip": per_clip[name]}
                       for (kind, db), name in zip(conditions, per_clip)},
        "sync": {name: evaluate.sync_set(extractor.model, ((k, *v) for k, v in items.items()), data.fps,
                                         embed=extractor.embed)["summary"] for name, items in sync.items()},
        "n_clips": len(clips), "layout": layout, "seed": seed,
    }
