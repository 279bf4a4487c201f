"""Renderer-proxy landmark probe: how well a renderer's audio path can predict mouth landmarks from features.

The NeRF/3DGS renderers (SyncTalk, ER-NeRF, TalkingGaussian) turn per-frame features [N, W, D] into a
32-d code with AudioNet (four stride-2 convolutions over the W sub-steps, then FC 64 -> 64 -> 32) and
AudioAttNet (softmax attention over the 8 frames i-4..i+3, zero-padded at the sequence ends). This module
is our own implementation of that path, from the renderers' published descriptions of it, followed
by a small MLP head that predicts the frame's mouth landmarks. Training it on one speaker's utterances and
measuring it on held-out utterances ranks feature types by how much lip shape a renderer can get out of
them, in minutes on a CPU instead of days of renderer training on a GPU.

Targets and metrics
    The mouth points of every frame (40 mediapipe lip points on GRID) are normalised per frame: the mean
    mouth position is subtracted and they are divided by the outer-eye-corner distance, then expressed at a
    face scale of ``ref_eye_px`` pixels between the outer eye corners (100 px by default; GRID s1 videos
    have about 67 px). The head predicts the deviation from the training mean shape (its last layer starts
    at zero, so training starts from the mean-shape predictor). LMD is the mean Euclidean distance per
    landmark, in pixels at that scale, over all valid held-out frames; mouth-opening correlation is the
    Pearson r of predicted against true inner-lip gap (distance of the inner-lip midpoints) over all valid
    held-out frames. The mean-shape predictor is the floor (its r is undefined: its gap is constant).

Recipe (the same for every feature type)
    Features are standardised per channel with the training clips' statistics (an affine map the first
    convolution could absorb; it takes away the features' arbitrary scales). Adam, cosine-decayed learning
    rate, a fixed number of steps, each step on every frame of ``clips_per_batch`` random training clips
    (frames with no face are left out of the loss and the metrics); the seed sets the initialisation and the
    batch order, never the split. The split is by utterance: by default ``PreparedData.split(60, seed=0)``,
    the validation split of ``se4lip-train``'s defaults, so SE4Lip weights trained with them never saw the
    held-out clips; a ``split.json`` from a training run can be given instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import atomic, audio
from ..frames import LAYOUTS, substep_grid

log = logging.getLogger(__name__)

REF_EYE_PX = 100.0  # face scale of the metrics: pixels between the outer eye corners
ATT_BEFORE, ATT_AFTER = 4, 3  # the renderers' att=2 window: frames i-4 .. i+3
AUDIO_WIN = 16  # AudioNet reads the first 16 sub-steps of W
AUDIO_DIM = 32  # AudioNet's output size in the renderers
LEAK = 0.02  # LeakyReLU slope of the renderers' audio path


# ----------------------------------------------------------------------------------------------- targets

def normalise_mouth(landmarks: np.ndarray, ref_eye_px: float = REF_EYE_PX) -> np.ndarray:
    """Mouth points centred on their mean and scaled to ``ref_eye_px`` between the outer eye corners.

    Parameters
    ----------
    landmarks : float (n_frames, n_mouth + 2, 2) pixels: the mouth points, then the two outer eye corners

    Returns
    -------
    np.ndarray float32 (n_frames, n_mouth, 2), NaN where a frame has no face
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    mouth, eyes = landmarks[:, :-2], landmarks[:, -2:]
    eye_dist = np.linalg.norm(eyes[:, 0] - eyes[:, 1], axis=-1)  # (n_frames,)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (mouth - mouth.mean(axis=1, keepdims=True)) * (ref_eye_px / eye_dist)[:, None, None]
    return out.astype(np.float32)


def mouth_gap(points: np.ndarray, gap: tuple[int, int]) -> np.ndarray:
    """Inner-lip gap: distance between the upper and lower inner-lip midpoints. (n, n_mouth, 2) -> (n,)."""
    return np.linalg.norm(points[:, gap[0]] - points[:, gap[1]], axis=-1)


def landmark_distance(pred: np.ndarray, true: np.ndarray) -> float:
    """LMD: mean Euclidean distance per landmark over all frames and points. Both (n, n_points, 2)."""
    return float(np.linalg.norm(pred - true, axis=-1).mean())


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two (n,) series; None when either is constant (undefined)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den <= 1e-12 * max(len(a), 1):
        return None
    return float(a @ b / den)


# ------------------------------------------------------------------------------------------------ model

class AudioNet(nn.Module):
    """The renderers' per-frame audio encoder: [B, W, D] -> [B, 32].

    Four Conv1d(k=3, s=2, p=1) with LeakyReLU over the first 16 sub-steps (16 -> 8 -> 4 -> 2 -> 1; any W
    from 1 to 16 ends at length 1), channels D -> 32 -> 32 -> 64 -> 64, then FC 64 -> 64 -> 32.
    """

    def __init__(self, dim_in: int, dim_out: int = AUDIO_DIM, win: int = AUDIO_WIN):
        super().__init__()
        self.win = win
        chans = [dim_in, 32, 32, 64, 64]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(LEAK)]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(LEAK), nn.Linear(64, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, W, D) features -> (batch, dim_out)."""
        return self._rest(self.conv[0](x[:, : self.win].transpose(1, 2)), x.shape[1])

    def forward_shared(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The same as ``forward(table[rows])``, computing the first convolution once per distinct sub-step.

        Neighbouring frames share 14 of their 16 sub-steps, so the first layer's three taps are applied to
        each distinct sub-step once, then summed per frame and output position (with the zero padding of
        the frame's own edges): about 4x less work and 7x less memory than on the expanded [B, 16, D].

        Parameters
        ----------
        table : (m, D) distinct sub-step features
        rows : int64 (batch, W) rows of ``table`` for each frame's sub-steps

        Returns
        -------
        torch.Tensor (batch, dim_out)
        """
        conv = self.conv[0]
        rows = rows[:, : self.win]
        length = rows.shape[1]
        taps = torch.einsum("md,odk->mko", table, conv.weight)  # (m, 3, 32): each tap on each sub-step
        n_out = (length - 1) // 2 + 1
        pos = 2 * torch.arange(n_out)[:, None] - 1 + torch.arange(3)[None, :]  # (n_out, 3) input positions
        inside = ((pos >= 0) & (pos < length)).to(table.dtype)[..., None]  # zero padding of the frame
        picked = taps[rows[:, pos.clamp(0, length - 1)], torch.arange(3)[None, :]]  # (batch, n_out, 3, 32)
        y = (picked * inside).sum(dim=2).transpose(1, 2) + conv.bias[:, None]  # (batch, 32, n_out)
        return self._rest(y, length)

    def _rest(self, y: torch.Tensor, width: int) -> torch.Tensor:
        """Everything after the first convolution's linear part: (batch, 32, n_out) -> (batch, dim_out)."""
        y = self.conv[1:](y)  # (batch, 64, 1)
        if y.shape[-1] != 1:
            raise ValueError(f"AudioNet reduces W <= {self.win} to one step; got {y.shape[-1]} from W={width}")
        return self.fc(y[..., 0])


class AudioAttNet(nn.Module):
    """Softmax attention over the 8-frame window: [B, 8, 32] -> [B, 32].

    A stack of Conv1d(k=3, p=1) over the window narrows the channels 32 -> 16 -> 8 -> 4 -> 2 -> 1, giving
    one score per frame; a linear map over the 8 scores and a softmax give the weights of the frames.
    """

    def __init__(self, dim: int = AUDIO_DIM, seq_len: int = ATT_BEFORE + ATT_AFTER + 1):
        super().__init__()
        chans = [dim, 16, 8, 4, 2, 1]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(c_in, c_out, 3, padding=1), nn.LeakyReLU(LEAK)]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(seq_len, seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq_len, dim) -> (batch, dim): the attention-weighted sum over the window."""
        scores = self.conv(x.transpose(1, 2))[:, 0]  # (batch, seq_len)
        weights = torch.softmax(self.fc(scores), dim=1)
        return (weights[:, :, None] * x).sum(dim=1)


class LandmarkProbe(nn.Module):
    """AudioNet + AudioAttNet + MLP head predicting a frame's mouth points (deviation from the mean shape)."""

    def __init__(self, dim_in: int, n_points: int, hidden: int = 128):
        super().__init__()
        self.audio_net = AudioNet(dim_in)
        self.att_net = AudioAttNet()
        self.head = nn.Sequential(nn.Linear(AUDIO_DIM, hidden), nn.LeakyReLU(LEAK), nn.Linear(hidden, 2 * n_points))
        nn.init.zeros_(self.head[-1].weight)  # start from the mean-shape predictor
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, feats: torch.Tensor, window: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions for frames whose windows index the per-frame codes.

        Parameters
        ----------
        feats : (n_frames + 1, W, D), the last frame all zeros (the padding frame); or, with ``rows``,
            (m, D) distinct sub-steps that ``rows`` (n_frames + 1, W) index
        window : int64 (n_out, 8) frames i-4 .. i+3 of each output (the padding frame outside a clip)

        Returns
        -------
        torch.Tensor (n_out, 2 * n_points)
        """
        if rows is None:
            codes = self.audio_net(feats)  # (n_frames + 1, 32): each frame encoded once, shared by 8 windows
        else:
            codes = self.audio_net.forward_shared(feats, rows)
        return self.head(self.att_net(codes[window]))


def clip_windows(lengths: list[int]) -> np.ndarray:
    """Window rows for consecutive clips of the given lengths: int64 (sum(lengths), 8).

    Frame j of a clip gets rows j-4 .. j+3 of that clip (offset by the clip's start); rows outside the clip
    point to ``sum(lengths)``, the padding row.
    """
    total = int(sum(lengths))
    out, start = [], 0
    offsets = np.arange(-ATT_BEFORE, ATT_AFTER + 1)
    for n in lengths:
        local = np.arange(n)[:, None] + offsets[None, :]
        out.append(np.where((local >= 0) & (local < n), start + local, total))
        start += n
    return np.concatenate(out) if out else np.zeros((0, len(offsets)), np.int64)


# ------------------------------------------------------------------------------------------------- data

class FeatureBank:
    """One feature type's features for every frame of a dataset, kept in memory once.

    Neighbouring frames share all but two sub-steps, so each distinct sub-step is stored once: ``table``
    (n_substeps + 1, D), whose last row is zeros (the padding frame), and ``rows`` (n_frames_total, W),
    the table rows of each dataset frame's sub-steps.
    """

    def __init__(self, name: str, table: np.ndarray, rows: np.ndarray, dim: int, extract_s: float):
        self.name, self.table, self.rows, self.dim, self.extract_s = name, table, rows, dim, extract_s

    @classmethod
    def build(cls, name: str, extractor, data, layout: str = "ds", progress: bool = False) -> FeatureBank:
        """Extract every clip of ``data`` with ``extractor`` (anything with SE4Lip's ``extract`` contract).

        A clip whose feature rows and frames differ in number (audio and video rounding) repeats its last
        row, as the renderers do.
        """
        from tqdm import tqdm

        width = LAYOUTS[layout]
        t0 = time.perf_counter()
        tables, rows, n_rows = [], np.zeros((len(data.landmarks), width), np.int64), 0
        for clip in tqdm(data.clips, desc=f"features {name}", unit="clip", disable=not progress):
            feats = extractor.extract(data.clip_audio(clip), audio.SAMPLE_RATE, fps=data.fps, layout=layout)
            _, index = substep_grid(len(feats), data.fps, width)  # (N, W) into the clip's distinct sub-steps
            table = np.zeros((int(index.max()) + 1, feats.shape[2]), np.float32)
            table[index] = feats
            if not np.array_equal(table[index], feats):  # not one value per instant: keep every frame's own
                table, index = feats.reshape(-1, feats.shape[2]), np.arange(feats[:, :, 0].size).reshape(index.shape)
            if abs(len(feats) - clip.n_frames) > 1:
                log.warning("%s: %d feature rows for %d video frames", clip.id, len(feats), clip.n_frames)
            take = np.minimum(np.arange(clip.n_frames), len(feats) - 1)
            rows[clip.frame_start: clip.frame_start + clip.n_frames] = n_rows + index[take]
            tables.append(table)
            n_rows += len(table)
        dim = tables[0].shape[1]
        full = np.concatenate(tables + [np.zeros((1, dim), np.float32)])
        return cls(name, full, rows, dim, time.perf_counter() - t0)

    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        """Features of dataset frames: float32 (n, W, D)."""
        return self.table[self.rows[frames]]

    def standardised(self, train_frames: np.ndarray) -> torch.Tensor:
        """The table standardised per channel with the training frames' sub-steps; padding stays zero."""
        used = self.table[np.unique(self.rows[train_frames])]
        mean = used.mean(axis=0)
        std = np.maximum(used.std(axis=0), 1e-5)
        out = (self.table - mean) / std
        out[-1] = 0.0
        return torch.from_numpy(out.astype(np.float32))


@dataclass
class Targets:
    """Normalised mouth points of every dataset frame, and which frames have them."""

    points: np.ndarray  # float32 (n_frames_total, n_mouth, 2), NaN without a face
    valid: np.ndarray  # bool (n_frames_total,)
    gap: tuple[int, int]  # inner-lip midpoints within the mouth points
    ref_eye_px: float

    @classmethod
    def from_data(cls, data, ref_eye_px: float = REF_EYE_PX) -> Targets:
        points = normalise_mouth(np.asarray(data.landmarks), ref_eye_px)
        valid = np.asarray(data.valid, bool) & np.isfinite(points).all(axis=(1, 2))
        return cls(points, valid, tuple(int(g) for g in data.meta["gap"]), float(ref_eye_px))


def clip_frames(clips) -> np.ndarray:
    """Dataset frame indices of the clips, clip after clip: int64 (n,)."""
    return np.concatenate([np.arange(c.frame_start, c.frame_start + c.n_frames) for c in clips])


def split_clips(data, n_val: int = 60, seed: int = 0, split_file: str | Path | None = None):
    """Train / held-out clips by utterance: ``data.split(n_val, seed)``, or the ``val`` ids of a split.json."""
    if split_file is None:
        return data.split(n_val, seed)
    from ..training.data import read_ids

    ids = read_ids(split_file)
    unknown = ids - {c.id for c in data.clips}
    if unknown:
        raise ValueError(f"{split_file}: {len(unknown)} held-out ids are not in {data.root}, e.g. {min(unknown)}")
    return [c for c in data.clips if c.id not in ids], [c for c in data.clips if c.id in ids]


# --------------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class ProbeConfig:
    """The recipe, identical for every feature type."""

    steps: int = 3000
    clips_per_batch: int = 8  # every frame of 8 clips per step (600 frames on GRID)
    lr: float = 2e-3  # Adam, cosine-decayed to 0
    hidden: int = 128  # the head's hidden size
    ref_eye_px: float = REF_EYE_PX
    standardise: bool = True


def _batch(clips, targets: Targets, mean_shape: np.ndarray):
    frames = clip_frames(clips)
    window = torch.from_numpy(clip_windows([c.n_frames for c in clips]))
    valid = targets.valid[frames]
    resid = np.nan_to_num(targets.points[frames] - mean_shape).reshape(len(frames), -1)
    return frames, window, torch.from_numpy(valid), torch.from_numpy(resid.astype(np.float32))


def _forward(model: LandmarkProbe, table: torch.Tensor, rows: np.ndarray, frames: np.ndarray,
             window: torch.Tensor) -> torch.Tensor:
    feat_rows = np.concatenate([rows[frames], np.full((1, rows.shape[1]), len(table) - 1)])  # + padding frame
    used, local = np.unique(feat_rows, return_inverse=True)  # the batch's distinct sub-steps
    return model(table[torch.from_numpy(used)], window, torch.from_numpy(local.reshape(feat_rows.shape)))


def train_probe(bank: FeatureBank, targets: Targets, train_clips, seed: int, cfg: ProbeConfig = ProbeConfig()):
    """Train the probe on the training clips.

    Returns
    -------
    model : LandmarkProbe in eval mode
    table : torch.Tensor, the (standardised) feature table it was trained on
    mean_shape : float32 (n_mouth, 2), the training mean shape
    """
    train_frames = clip_frames(train_clips)
    mean_shape = mean_mouth_shape(targets, train_frames)
    table = bank.standardised(train_frames) if cfg.standardise else torch.from_numpy(bank.table)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LandmarkProbe(bank.dim, targets.points.shape[1], cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_batch = min(cfg.clips_per_batch, len(train_clips))
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        pick = rng.choice(len(train_clips), per_batch, replace=False)
        frames, window, valid, resid = _batch([train_clips[i] for i in pick], targets, mean_shape)
        if not valid.any():
            continue
        pred = _forward(model, table, bank.rows, frames, window)
        loss = ((pred - resid) ** 2)[valid].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.steps - 1:
            log.debug("%s seed %d step %d loss %.4f", bank.name, seed, step, loss.item())
    return model.eval(), table, mean_shape


def mean_mouth_shape(targets: Targets, frames: np.ndarray) -> np.ndarray:
    """Mean normalised mouth shape over the valid frames among ``frames``: float32 (n_mouth, 2)."""
    keep = frames[targets.valid[frames]]
    if len(keep) == 0:
        raise ValueError("no frame with a face among the training clips")
    return targets.points[keep].mean(axis=0).astype(np.float32)


@torch.inference_mode()
def predict(model: LandmarkProbe, table: torch.Tensor, rows: np.ndarray, clips, targets: Targets,
            mean_shape: np.ndarray, clips_per_batch: int = 32) -> np.ndarray:
    """Predicted normalised mouth points of every frame of the clips: float32 (n, n_mouth, 2)."""
    out = []
    for start in range(0, len(clips), clips_per_batch):
        part = clips[start: start + clips_per_batch]
        frames, window, _, _ = _batch(part, targets, mean_shape)
        out.append(_forward(model, table, rows, frames, window).numpy().reshape(len(frames), -1, 2) + mean_shape)
    return np.concatenate(out)


def score(pred: np.ndarray, frames: np.ndarray, targets: Targets) -> dict:
    """LMD and mouth-opening correlation of predictions for dataset frames (only valid frames count)."""
    ok = targets.valid[frames]
    true = targets.points[frames][ok]
    return {"lmd": landmark_distance(pred[ok], true),
            "gap_r": pearson(mouth_gap(pred[ok], targets.gap), mouth_gap(true, targets.gap)),
            "n_frames": int(ok.sum())}


def mean_shape_score(targets: Targets, train_clips, held_clips) -> dict:
    """The floor: every held-out frame predicted as the training mean shape."""
    frames = clip_frames(held_clips)
    shape = mean_mouth_shape(targets, clip_frames(train_clips))
    return score(np.broadcast_to(shape, (len(frames), *shape.shape)), frames, targets)


def _spread(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "per_seed": values}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "per_seed": values}


def example_clip(targets: Targets, held_clips):
    """The clip plotted: of the held-out clips with a face in every frame (all of them if none has), the one
    whose true mouth opening varies the median amount (a typical clip, not the one with a detector glitch)."""
    def frames_of(c):
        return clip_frames([c])

    full = [c for c in held_clips if targets.valid[frames_of(c)].all()] or list(held_clips)

    def variation(c):
        f = frames_of(c)
        f = f[targets.valid[f]]
        return float(np.std(mouth_gap(targets.points[f], targets.gap))) if len(f) else -1.0

    ranked = sorted(full, key=variation)
    return ranked[len(ranked) // 2]


def run_probe(bank: FeatureBank, targets: Targets, train_clips, held_clips, seeds=(0, 1),
              cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Train and score the probe once per seed on one feature type.

    Returns
    -------
    dict with ``lmd`` and ``gap_r`` ({mean, std (ddof=1, over seeds), per_seed}), ``dim``, ``extract_s``,
    ``probe_s`` (seconds per seed), and ``example`` (the plotted clip's true and predicted gap, seed 0)
    """
    held_frames = clip_frames(held_clips)
    ex = example_clip(targets, held_clips)
    ex_start = sum(c.n_frames for c in held_clips[: held_clips.index(ex)])  # its first row in the predictions
    per_seed, times, example = [], [], None
    for seed in seeds:
        t0 = time.perf_counter()
        model, table, mean_shape = train_probe(bank, targets, train_clips, seed, cfg)
        pred = predict(model, table, bank.rows, held_clips, targets, mean_shape)
        times.append(time.perf_counter() - t0)
        per_seed.append(score(pred, held_frames, targets))
        log.info("%s seed %d: LMD %.4f px, gap r %s (%.0f s)", bank.name, seed, per_seed[-1]["lmd"],
                 per_seed[-1]["gap_r"], times[-1])
        if example is None:
            ex_pred = pred[ex_start: ex_start + ex.n_frames]
            example = {"clip": ex.id, "pred_gap": mouth_gap(ex_pred, targets.gap).round(4).tolist()}
    return {"dim": int(bank.dim), "lmd": _spread([s["lmd"] for s in per_seed]),
            "gap_r": _spread([s["gap_r"] for s in per_seed]), "n_frames": per_seed[0]["n_frames"],
            "extract_s": round(bank.extract_s, 2), "probe_s": [round(t, 2) for t in times], "example": example}


def probe_all(banks, targets: Targets, train_clips, held_clips, seeds=(0, 1), cfg: ProbeConfig = ProbeConfig()):
    """The mean-shape floor and every feature bank; ``banks`` may be a generator (one bank in memory at a time).

    Returns
    -------
    dict: split, config and ``features`` {name: result of :func:`run_probe`, plus "mean-shape"}
    """
    ex = example_clip(targets, held_clips)
    ex_frames = clip_frames([ex])
    floor = mean_shape_score(targets, train_clips, held_clips)
    shape = mean_mouth_shape(targets, clip_frames(train_clips))
    out = {
        "config": dataclasses.asdict(cfg), "seeds": list(seeds), "ref_eye_px": targets.ref_eye_px,
        "split": {"n_train": len(train_clips), "n_held_out": len(held_clips),
                  "held_out": [c.id for c in held_clips]},
        "example": {"clip": ex.id, "true_gap": np.where(targets.valid[ex_frames],
                                                        mouth_gap(targets.points[ex_frames], targets.gap),
                                                        np.nan).round(4).tolist(),
                    "mean_shape_gap": round(float(mouth_gap(shape[None], targets.gap)[0]), 4)},
        "features": {"mean-shape": {"dim": 0, "lmd": _spread([floor["lmd"]] * len(seeds)),
                                    "gap_r": _spread([None] * len(seeds)), "n_frames": floor["n_frames"],
                                    "extract_s": 0.0, "probe_s": [0.0] * len(seeds)}},
    }
    for bank in banks:
        out["features"][bank.name] = run_probe(bank, targets, train_clips, held_clips, seeds, cfg)
    return out


# ------------------------------------------------------------------------------------------------ output

def format_stat(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(result: dict) -> str:
    """The probe's table: one row per feature type."""
    lines = ["| features | D | LMD (px) ↓ | mouth-opening r ↑ | extract (s) | probe (s/seed) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["features"].items():
        probe_s = np.mean(r["probe_s"]) if r["probe_s"] else 0.0
        lines.append(f"| {name} | {r['dim'] or '–'} | {format_stat(r['lmd'])} | {format_stat(r['gap_r'])} | "
                     f"{r['extract_s']:.0f} | {probe_s:.0f} |")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> None:
    """Bar charts of LMD and mouth-opening r (error bars: seed std, dots: seeds) and one clip's lip gap."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or state

    feats = result["features"]
    names = list(feats)
    floor = feats["mean-shape"]["lmd"]["mean"] if "mean-shape" in feats else None
    lmd_title = f"LMD (px at {result['ref_eye_px']:g} px eye distance) ↓"
    if floor is not None:
        lmd_title += f"\nmean-shape floor {floor:.3f} (not drawn)"
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, key, label in ((axes[0], "lmd", lmd_title), (axes[1], "gap_r", "mouth-opening correlation r ↑")):
        for i, name in enumerate(names):
            s = feats[name][key]
            if s["mean"] is None or name == "mean-shape":
                continue
            ax.bar(i, s["mean"], yerr=s["std"], color=f"C{i}", capsize=4, alpha=0.8)
            seeds = [v for v in s["per_seed"] if v is not None]
            ax.plot([i] * len(seeds), seeds, "k.", ms=4)
        vals = [v for n in names if n != "mean-shape" for v in feats[n][key]["per_seed"] if v is not None]
        if vals:
            lo, hi = min(vals), max(vals)
            ax.set_ylim(max(0.0, lo - 0.3 * (hi - lo + 1e-3)), hi + 0.3 * (hi - lo + 1e-3))
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(label, fontsize=10)
    ex = result["example"]
    t = np.arange(len(ex["true_gap"])) / result.get("fps", 25.0)
    axes[2].plot(t, np.array(ex["true_gap"], float), "k-", lw=2, label="true")
    axes[2].axhline(ex["mean_shape_gap"], color="C0", ls="--", lw=1, label="mean-shape")
    for i, name in enumerate(names):
        if feats[name].get("example"):
            axes[2].plot(t, feats[name]["example"]["pred_gap"], color=f"C{i}", lw=1, label=name)
    axes[2].set(xlabel="time (s)", ylabel="inner-lip gap (px)",
                title=f"held-out clip {ex['clip']} (seed {result['seeds'][0]})")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path)


def slug(name: str) -> str:
    """A file-name-safe form of a feature type's name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_outputs(result: dict, out_dir: str | Path) -> list[Path]:
    """probe.json (all), probe_<feature>.json (one per feature type), probe.md and probe.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "probe.json", out_dir / "probe.md", out_dir / "probe.png"]
    atomic.write_text(written[0], json.dumps(result, indent=1) + "\n")
    for name, r in result["features"].items():
        path = out_dir / f"probe_{slug(name)}.json"
        atomic.write_text(path, json.dumps({k: v for k, v in result.items() if k not in ("features", "example")}
                                           | {"feature": name, "result": r}, indent=1) + "\n")
        written.append(path)
    header = (f"Renderer-proxy landmark probe on {result.get('dataset', '?')}: {result['split']['n_train']} training "
              f"and {result['split']['n_held_out']} held-out utterances, seeds {result['seeds']}, "
              f"{result['config']['steps']} steps; LMD in px at {result['ref_eye_px']:g} px between the outer eye "
              "corners; ± is the standard deviation over seeds.\n\n")
    atomic.write_text(written[1], header + markdown_table(result) + "\n")
    plot(result, written[2])
    return written


# ------------------------------------------------------------------------------------------ feature types

def unique_labels(specs: list[str], labels: list[str]) -> list[str]:
    """``labels`` made unique: a label shared by several specs (two runs' ``final.safetensors``) gets each
    spec's path, as given, in its place (``se4lip:runs/a/final.safetensors``); a spec given twice is refused."""
    if len(set(specs)) < len(specs):
        twice = next(spec for spec in specs if specs.count(spec) > 1)
        raise ValueError(f"{twice}: given twice")
    out = []
    for spec, label in zip(specs, labels):
        if labels.count(label) > 1:
            kind, rest = label.split(":", 1)
            label = " ".join([f"{kind}:{spec}", *rest.split(" ", 1)[1:]])  # a precision (" bf16") is kept
        out.append(label)
    return out


def feature_extractor(spec: str, device: str = "cpu", precision: str = "fp32"):
    """A feature extractor from a spec: a baseline name (``log-mel``, ``mfcc``, ``stft``, ``whisper-tiny.en``),
    SE4Lip weights (``.safetensors``, or a registry name), or a training checkpoint ``ckpt.pt`` of ``se4lip-train``.
    SE4Lip runs at ``precision`` (see :data:`se4lip_features.extract.PRECISIONS`); bf16 is in its label.

    Returns
    -------
    (label, extractor) ; the extractor has ``extract(wav, sr, fps, layout)`` and ``dim``
    """
    from .. import extract
    from . import baselines

    if spec in baselines.BASELINES:
        return spec, baselines.get(spec)
    path = Path(spec)
    if path.suffix == ".pt":
        from ..model import ModelConfig, SE4Lip
        from ..training.train import load_checkpoint
        from ..weights import non_finite, sha256_file

        ckpt = load_checkpoint(path, "cpu")
        bad = non_finite(ckpt["model"])
        if bad:
            raise ValueError(f"{path}: tensor {bad} holds NaN or infinite values; these weights cannot be used")
        model = SE4Lip(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        label = f"se4lip:{path.parent.name}/{path.stem}@{ckpt.get('step', '?')}"
        info = {"name": label, "sha256": sha256_file(path), "path": str(path)}
        ex = extract.Extractor(model.to(device).eval(), info, torch.device(device), precision)
    else:
        ex = extract.load(spec, device=device, precision=precision)
    return f"se4lip:{ex.name}" + ("" if precision == "fp32" else f" {precision}"), ex
