"""Video frames at a fixed rate, facial landmarks, and stable mouth-centred lip crops."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LandmarkScheme:
    """Where the lips and the outer eye corners are in one landmark layout."""

    name: str
    mouth: tuple  # indices of the mouth points kept for training and evaluation
    eye_corners: tuple  # (right outer corner, left outer corner): the crop's scale reference
    gap: tuple  # (upper, lower) inner-lip midpoints, positions within ``mouth``: the mouth opening


# mediapipe face mesh (468 points): the 40 points of FACEMESH_LIPS; 13/14 are the inner-lip midpoints.
_MP_MOUTH = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191,
             267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415)
MEDIAPIPE = LandmarkScheme("mediapipe468", _MP_MOUTH, (33, 263), (_MP_MOUTH.index(13), _MP_MOUTH.index(14)))
# iBUG 68 points (the renderers' *.lms files): 48-67 are the lips; 62/66 the inner-lip midpoints.
IBUG68 = LandmarkScheme("ibug68", tuple(range(48, 68)), (36, 45), (62 - 48, 66 - 48))


def read_video(path: str | Path, fps: float = 25.0) -> tuple[np.ndarray, float]:
    """Decode a video as RGB frames resampled to ``fps`` by nearest earlier frame.

    Returns
    -------
    frames : np.ndarray, uint8, shape (n_frames, height, width, 3); frame i shows time i / fps
    duration : float, seconds of video
    """
    import av

    from ..audio import ffmpeg_reason

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: has no video stream (lips need a video)")
            stream = container.streams.video[0]
            decoded, times = [], []
            for frame in container.decode(stream):
                decoded.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time))
    except av.error.FFmpegError as err:  # one line naming the file, as the audio's errors do
        raise ValueError(f"{path}: cannot decode video ({ffmpeg_reason(err)})") from err
    if not decoded:
        raise ValueError(f"{path}: video stream holds no frames")
    times = np.asarray(times) - times[0]
    step = np.median(np.diff(times)) if len(times) > 1 else 1.0 / fps
    duration = times[-1] + step
    n_out = int(np.floor(duration * fps + 0.5))
    # Frame shown at t is the last one that started at or before t (half a millisecond of slack for rounding).
    pick = np.searchsorted(times, np.arange(n_out) / fps + 5e-4, side="right") - 1
    return np.stack([decoded[i] for i in np.clip(pick, 0, len(decoded) - 1)]), float(duration)


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null for the block: what native code (mediapipe's C++) prints there is dropped;
    errors still reach Python as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceMeshDetector:
    """mediapipe face mesh (the ``landmarks`` extra), tracking one face through consecutive frames."""

    scheme = MEDIAPIPE

    def __init__(self):
        try:
            import mediapipe as mp
        except ImportError as err:
            raise ImportError(
                "face landmarks need mediapipe: pip install 'se4lip-features[landmarks]' "
                "(or give a renderer data folder that already has *.lms landmarks)"
            ) from err
        with _native_stderr_silenced():  # TFLite's and absl's start-up notes (5 lines on every run)
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.5
            )

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB -> (n, 468, 2) float32 pixel coordinates; NaN where no face was found."""
        n, h, w, _ = frames.shape
        out = np.full((n, 468, 2), np.nan, dtype=np.float32)
        for i, frame in enumerate(frames):
            with _native_stderr_silenced():  # the rest of those notes come at the first frames (with a face)
                result = self._mesh.process(frame)
            if result.multi_face_landmarks:
                pts = result.multi_face_landmarks[0].landmark
                out[i] = [(p.x * w, p.y * h) for p in pts[:468]]
        return out

    def close(self):
        self._mesh.close()


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along axis 0 of (n, d) over the finite rows; windows shrink at the edges."""
    valid = np.isfinite(x).all(axis=-1)
    filled = np.where(valid[:, None], x, 0.0)
    csum = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(filled, axis=0)])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    t = np.arange(len(x))
    lo, hi = np.clip(t - width // 2, 0, len(x)), np.clip(t + width // 2 + 1, 0, len(x))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (csum[hi] - csum[lo]) / (ccount[hi] - ccount[lo])[:, None]


def crop_boxes(landmarks: np.ndarray, scheme: LandmarkScheme, scale: float, aspect: float) -> np.ndarray:
    """Stable mouth-centred boxes from per-frame landmarks.

    The centre is the mean of the mouth points smoothed over 5 frames; the width is ``scale`` times the
    outer-eye-corner distance, which does not change when the mouth opens, smoothed over 25 frames.

    Parameters
    ----------
    landmarks : (n, n_points, 2) pixel coordinates, NaN rows where no face was found
    aspect : crop height / width

    Returns
    -------
    (n, 4) float boxes (centre_x, centre_y, width, height); NaN where no face was found
    """
    centre = landmarks[:, list(scheme.mouth)].mean(axis=1)  # (n, 2)
    eyes = landmarks[:, list(scheme.eye_corners)]
    width = scale * np.linalg.norm(eyes[:, 0] - eyes[:, 1], axis=-1, keepdims=True)  # (n, 1)
    centre = _moving_average(centre, 5)
    width = _moving_average(width, 25)
    found = np.isfinite(landmarks[:, list(scheme.mouth) + list(scheme.eye_corners)]).all(axis=(1, 2))
    boxes = np.concatenate([centre, width, width * aspect], axis=1)
    boxes[~found] = np.nan
    return boxes


def cut_crops(frames: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear crops of the boxes, resized to ``height`` x ``width``; edges replicate the border.

    Parameters
    ----------
    frames : (n, H, W, 3) uint8
    boxes : (n, 4) from :func:`crop_boxes`; rows with NaN give black crops

    Returns
    -------
    (n, height, width, 3) uint8
    """
    n, h, w, _ = frames.shape
    out = np.zeros((n, height, width, 3), dtype=np.uint8)
    ok = np.isfinite(boxes).all(axis=1)
    if not ok.any():
        return out
    b = torch.from_numpy(boxes[ok]).float()
    img = torch.from_numpy(frames[ok]).permute(0, 3, 1, 2).float()  # (m, 3, H, W)
    ys = (torch.arange(height) + 0.5) / height - 0.5  # fractions of the box, centred
    xs = (torch.arange(width) + 0.5) / width - 0.5
    px = b[:, 0, None] + xs[None] * b[:, 2, None]  # (m, width) pixel x
    py = b[:, 1, None] + ys[None] * b[:, 3, None]  # (m, height) pixel y
    gx = (px + 0.5) / w * 2 - 1  # grid_sample's align_corners=False convention
    gy = (py + 0.5) / h * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (m, height, width, 2)
    crops = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out[ok] = crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
