"""Prepared training data: aligned 16 kHz audio, lip crops and mouth landmarks, stored so training never decodes video.

A prepared dataset is a folder holding
    meta.json        crop size and scale, fps, landmark scheme, and one entry per clip (offsets, counts,
                     silent samples padded where the audio track ended before the last frame)
    lips.npy         uint8 (n_frames_total, H, W, 3) lip crops, memory-mapped when read
    audio.npy        float32 (n_samples_total,) 16 kHz mono
    landmarks.npy    float32 (n_frames_total, n_mouth + 2, 2) mouth points then the two outer eye corners, pixels
    valid.npy        bool (n_frames_total,) False for frames where no face was found (dropped from training)
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic, audio
from ..audio import SAMPLE_RATE
from . import lips

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_MISSING_FRAMES = 3  # missing renderer frames beyond which prepare warns (they stay invalid frames in place)


@dataclass
class Clip:
    """One utterance or video: frames [frame_start, frame_start + n_frames) and samples likewise."""

    id: str
    frame_start: int
    n_frames: int
    sample_start: int
    n_samples: int
    n_dropped: int
    n_padded: int = 0  # silent samples appended at the end because the audio track ended early


def _frame_sample(frame: int, fps: float) -> int:
    """The first 16 kHz sample of video frame ``frame``: the one rule that cuts audio and frames together."""
    return round(frame / fps * SAMPLE_RATE)


def _clip_arrays(wav: np.ndarray, frames: np.ndarray, landmarks: np.ndarray, scheme, height, width, scale, fps):
    """Crops, landmarks and validity of a video's frames, and exactly their span of audio.

    Frames the audio does not reach (by more than half a frame) are dropped; a shorter shortfall is padded
    with silence so that the audio is exactly the frames' span and never shifts the clips after it.

    Returns
    -------
    wav : float32 (n_samples,), n_samples = the first sample of frame n
    crops, landmarks, valid : per frame, n frames
    n_padded : int, silent samples appended to ``wav``
    """
    n = min(len(frames), audio.frame_count(len(wav), fps))
    frames, landmarks = frames[:n], landmarks[:n]
    boxes = lips.crop_boxes(landmarks, scheme, scale, height / width)
    crops = lips.cut_crops(frames, boxes, height, width)
    kept = landmarks[:, list(scheme.mouth) + list(scheme.eye_corners)].astype(np.float32)
    valid = np.isfinite(kept).all(axis=(1, 2))
    span = _frame_sample(n, fps)
    n_padded = max(0, span - len(wav))
    wav = np.pad(wav[:span], (0, n_padded))
    return wav, crops, kept, valid, n_padded


def _segment_frames(segment_s: float | None, fps: float) -> int:
    """Frames per clip when videos are cut for the train/validation split; None keeps videos whole."""
    return 2**62 if segment_s is None else max(1, round(segment_s * fps))


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` is a dataset written by se4lip-prepare (its meta.json is the marker), or empty."""
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        return True
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format" in meta and "clips" in meta and (folder / "lips.npy").is_file()


class _Writer:
    """Accumulates clips and writes the dataset folder at the end, atomically."""

    def __init__(self, out: Path, scheme, height, width, scale, fps):
        if out.exists() and not is_prepared(out):  # checked before any work: never replace what we did not write
            raise FileExistsError(f"{out}: exists and is not a dataset written by se4lip-prepare, so it is never "
                                  "replaced; remove it yourself or choose another output folder")
        self.out, self.scheme = out, scheme
        self.meta = {"format": FORMAT_VERSION, "fps": fps, "lip_height": height, "lip_width": width,
                     "lip_crop_scale": scale, "landmarks": scheme.name, "gap": list(scheme.gap), "clips": []}
        self.parts = {"audio": [], "lips": [], "landmarks": [], "valid": []}
        self.n_frames = self.n_samples = 0

    def add(self, clip_id, wav, crops, landmarks, valid, n_padded: int, segment_frames: int):
        """Add a video as clips of at most ``segment_frames`` frames (the units of the train/val split).

        ``wav`` is exactly the frames' span (:func:`_clip_arrays`), its last ``n_padded`` samples silence.
        """
        fps = self.meta["fps"]
        real = len(wav) - n_padded
        for k in range(0, len(crops), segment_frames):
            end = min(k + segment_frames, len(crops))
            a, b = _frame_sample(k, fps), _frame_sample(end, fps)
            seg_id = clip_id if end - k == len(crops) else f"{clip_id}@{k}"
            self.meta["clips"].append(Clip(seg_id, self.n_frames, end - k, self.n_samples, b - a,
                                           int((~valid[k:end]).sum()), b - max(a, min(b, real))).__dict__)
            for key, arr in zip(("audio", "lips", "landmarks", "valid"), (wav[a:b], crops[k:end],
                                                                          landmarks[k:end], valid[k:end])):
                self.parts[key].append(arr)
            self.n_frames += end - k
            self.n_samples += b - a

    def close(self) -> dict:
        if not self.meta["clips"]:
            raise ValueError("no usable clip: nothing to write")
        # The dataset's own files, replaced as one set (meta.json, the marker, last); anything else in the folder
        # (notes, runs) is not ours and stays.
        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        targets = [self.out / f"{key}.npy" for key in self.parts] + [self.out / "meta.json"]
        try:
            with atomic.replacing(*targets) as temps:
                for tmp, parts in zip(temps, self.parts.values()):
                    with open(tmp, "wb") as f:
                        np.save(f, np.concatenate(parts))
                temps[-1].write_text(json.dumps(self.meta, indent=1))
        except BaseException:
            if created:
                self.out.rmdir()
            raise
        return self.meta


def read_ids(path: Path) -> set[str]:
    """Clip ids from a file: a run's split.json ({"val": [ids]}), a JSON list, or text of one id a line.

    The one reader of held-out id files (se4lip-eval --ids, the probe's --split); errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text()
    if text.lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        ids = value.get("val") if isinstance(value, dict) else value
        if not isinstance(ids, list):
            raise ValueError(f"{path}: a JSON file needs a 'val' list of clip ids (as in a run's split.json), or "
                             "to be a list")
        ids = set(map(str, ids))
    else:
        ids = set(text.split())
    if not ids:
        raise ValueError(f"{path}: holds no clip ids")
    return ids


def clip_ids(videos: list[Path]) -> list[str]:
    """Each video's clip id: its name without the suffix, or where two videos share a name, its path relative to
    the videos' common folder ("a/x", "b/x"). The same file twice, or two ids alike, is a ValueError naming them."""
    real = [Path(os.path.realpath(v)) for v in videos]
    for i, r in enumerate(real):
        if r in real[:i]:
            raise ValueError(f"{videos[i]}: the same file as {videos[real.index(r)]}, given twice")
    given = [Path(os.path.abspath(v)) for v in videos]  # the names as given (a symlinked folder keeps its own)
    root = Path(os.path.commonpath([g.parent for g in given])) if given else Path()
    stems = [g.stem for g in given]
    ids = [g.relative_to(root).with_suffix("").as_posix() if stems.count(g.stem) > 1 else g.stem for g in given]
    for i, clip_id in enumerate(ids):
        if clip_id in ids[:i]:
            raise ValueError(f"{videos[i]} and {videos[ids.index(clip_id)]}: both would be clip {clip_id!r}; "
                             "rename one")
    return ids


def is_renderer_folder(path: Path) -> bool:
    """Whether ``path`` is a SyncTalk/TalkingGaussian-style data folder: ``aud.wav`` beside ``ori_imgs/``."""
    return (Path(path) / "aud.wav").is_file() and (Path(path) / "ori_imgs").is_dir()


def prepare_inputs(inputs: list[Path], out: Path, *, detector=None, progress: bool = True, **crops) -> dict:
    """Prepare what a user gives: one renderer data folder alone (:func:`prepare_renderer_folder`), or videos
    and folders of videos (:func:`prepare_videos`); ``crops`` are their fps, height, width, scale, segment_s."""
    inputs = [Path(p) for p in inputs]
    renderer = [p for p in inputs if is_renderer_folder(p)]
    if renderer:
        if len(inputs) > 1:
            raise ValueError("give one renderer data folder alone (its 68-point landmarks do not mix with videos)")
        return prepare_renderer_folder(renderer[0], out, **crops)
    return prepare_videos(audio.media_files(inputs, audio.VIDEO_SUFFIXES), out, detector=detector, progress=progress,
                          **crops)


def open_inputs(inputs: list[Path], work: Path, *, detector=None, progress: bool = True, **crops) -> PreparedData:
    """The dataset of what a user gives: a prepared dataset folder given alone, as it is; anything else prepared
    into ``work`` first (:func:`prepare_inputs`)."""
    inputs = [Path(p) for p in inputs]
    if len(inputs) == 1 and (inputs[0] / "meta.json").is_file():
        return PreparedData(inputs[0])
    prepare_inputs(inputs, work, detector=detector, progress=progress, **crops)
    return PreparedData(work)


def prepare_videos(videos, out: Path, *, fps=25.0, height=48, width=96, scale=1.2, segment_s=10.0,
                   detector=None, progress=True) -> dict:
    """Prepare talking-head videos (any container and rate) with facial landmarks.

    Frames with no face are kept as invalid (never guessed) and counted per clip; a video with no face at
    all is skipped with a warning. Videos longer than ``segment_s`` become several clips (None: never cut).
    ``detector`` maps (n, H, W, 3) frames to (n, n_points, 2) landmarks (NaN without a face) and has a
    ``scheme`` and ``close()``; the default is mediapipe's face mesh.
    """
    from tqdm import tqdm

    scheme = detector.scheme if detector else lips.FaceMeshDetector.scheme
    videos = [Path(v) for v in videos]
    ids = clip_ids(videos)  # checked before any work
    writer = _Writer(Path(out), scheme, height, width, scale, fps)
    skipped = []  # one line per unusable video: reported once it is known whether any video was usable
    try:
        for path, clip_id in tqdm(list(zip(videos, ids)), desc="prepare", unit="video", disable=not progress):
            try:  # a video without audio, without frames or undecodable is skipped, not the whole run
                wav = audio.load_audio(path)
                frames, _ = lips.read_video(path, fps)
            except ValueError as err:  # audio.AudioError included
                reason = " ".join(str(err).split())
                skipped.append(f"{reason if str(path) in reason else f'{path}: {reason}'}, skipped")  # name the file
                continue
            detector = detector or lips.FaceMeshDetector()  # made once a video is usable: mediapipe is slow to start
            landmarks = detector(frames)
            if np.isnan(landmarks).all():
                skipped.append(f"{path}: no face found in any frame, skipped")
                continue
            writer.add(clip_id, *_clip_arrays(wav, frames, landmarks, detector.scheme, height, width, scale, fps),
                       segment_frames=_segment_frames(segment_s, fps))
    finally:
        if detector is not None:
            detector.close()
    if not writer.meta["clips"]:
        raise ValueError(f"no usable video, nothing written: {'; '.join(skipped)}")
    for line in skipped:
        log.warning("%s", line)
    return writer.close()


def prepare_renderer_folder(folder: Path, out: Path, *, fps=25.0, height=48, width=96, scale=1.2,
                            segment_s=10.0) -> dict:
    """Prepare a SyncTalk/TalkingGaussian data folder (``aud.wav``, ``ori_imgs/<i>.jpg`` + ``<i>.lms``).

    Uses the folder's own 68-point landmarks, so no face detector is needed. Frames whose ``.lms`` is
    missing are invalid. The video is cut into clips of ``segment_s`` seconds for the train/val split.
    """
    import av

    folder = Path(folder)
    writer = _Writer(Path(out), lips.IBUG68, height, width, scale, fps)
    wav = audio.load_audio(folder / "aud.wav")
    images = {}
    for img in (folder / "ori_imgs").glob("*.jpg"):
        if not img.stem.isdigit():
            raise ValueError(f"{img}: not a renderer frame (ori_imgs holds <index>.jpg, frame 0 first)")
        images[int(img.stem)] = img
    if not images:
        raise FileNotFoundError(f"{folder / 'ori_imgs'}: no <index>.jpg frames")
    # Frame i is ori_imgs/<i>.jpg at time i / fps: a missing one is an invalid frame in its place, never closed up.
    n = max(images) + 1
    missing = sorted(set(range(n)) - set(images))
    if len(missing) > MAX_MISSING_FRAMES:
        log.warning("%s: %d of %d frames missing (first: %s); they are kept as frames without a face",
                    folder / "ori_imgs", len(missing), n, ", ".join(f"{i}.jpg" for i in missing[:5]))
    frames, landmarks = [None] * n, np.full((n, 68, 2), np.nan, np.float32)
    for i, img in images.items():
        with av.open(str(img)) as container:
            frames[i] = next(container.decode(video=0)).to_ndarray(format="rgb24")
        landmarks[i] = _read_lms(img.with_suffix(".lms"))
    blank = np.zeros_like(frames[min(images)])
    frames = np.stack([blank if f is None else f for f in frames])
    writer.add(folder.name, *_clip_arrays(wav, frames, landmarks, lips.IBUG68, height, width, scale, fps),
               segment_frames=_segment_frames(segment_s, fps))
    return writer.close()


def _read_lms(path: Path) -> np.ndarray:
    """68 landmarks (x, y) of a renderer frame's ``.lms``; NaN (no face) when it is missing or not 68 points."""
    if not path.exists():
        return np.full((68, 2), np.nan, np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "input contained no data": said below
            points = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as err:
        log.warning("%s: not a landmark file (%s); the frame counts as without a face", path, err)
        return np.full((68, 2), np.nan, np.float32)
    if not points.size:
        log.warning("%s: is empty; the frame counts as without a face", path)
        return np.full((68, 2), np.nan, np.float32)
    if points.shape[0] != 68 or points.shape[1] < 2:
        log.warning("%s: %d points of %d values, not 68 (x, y); the frame counts as without a face", path,
                    points.shape[0], points.shape[1] if points.ndim == 2 else 0)
        return np.full((68, 2), np.nan, np.float32)
    return points[:, :2]


class PreparedData:
    """Read-only view of a prepared dataset; big arrays are memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root}: not a prepared dataset (no meta.json); run se4lip-prepare")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{self.root}: dataset format {self.meta.get('format')}, expected {FORMAT_VERSION}")
        self.clips = [Clip(**c) for c in self.meta["clips"]]
        self.fps = float(self.meta["fps"])
        self.audio = np.load(self.root / "audio.npy", mmap_mode="r")
        self.lips = np.load(self.root / "lips.npy", mmap_mode="r")
        self.landmarks = np.load(self.root / "landmarks.npy", mmap_mode="r")
        self.valid = np.load(self.root / "valid.npy")
        self._check()

    def _check(self):
        """Every clip's frames and audio lie where meta.json says, back to back, filling the arrays exactly.

        Catches datasets whose audio drifted from their lips (se4lip-prepare before 0.3 let a clip with a short
        audio track shift every later clip's audio).
        """
        n_frames, n_samples = len(self.valid), len(self.audio)
        if not len(self.lips) == len(self.landmarks) == n_frames:
            raise ValueError(f"{self.root}: lips.npy, landmarks.npy and valid.npy hold {len(self.lips)}, "
                             f"{len(self.landmarks)} and {n_frames} frames; prepare the dataset again")
        frame = sample = 0
        for clip in self.clips:
            span = f"{clip.n_frames} frames from {clip.frame_start}, {clip.n_samples} samples from {clip.sample_start}"
            if clip.frame_start != frame or clip.sample_start != sample:
                problem = f"does not follow the clip before it ({span})"
            elif clip.frame_start + clip.n_frames > n_frames or clip.sample_start + clip.n_samples > n_samples:
                problem = f"runs past the arrays' {n_frames} frames and {n_samples} samples ({span})"
            else:
                frame, sample = frame + clip.n_frames, sample + clip.n_samples
                continue
            raise ValueError(f"{self.root}: clip {clip.id} {problem}: audio and lips disagree; prepare the dataset "
                             "again with se4lip-prepare")
        if (frame, sample) != (n_frames, n_samples):
            raise ValueError(f"{self.root}: meta.json's clips hold {frame} frames and {sample} samples, the arrays "
                             f"{n_frames} and {n_samples}: audio and lips disagree; prepare the dataset again "
                             "with se4lip-prepare")

    def clip_audio(self, clip: Clip) -> np.ndarray:
        return np.array(self.audio[clip.sample_start: clip.sample_start + clip.n_samples])  # a writable copy

    def clip_lips(self, clip: Clip) -> np.ndarray:
        return self.lips[clip.frame_start: clip.frame_start + clip.n_frames]

    def clip_valid(self, clip: Clip) -> np.ndarray:
        return self.valid[clip.frame_start: clip.frame_start + clip.n_frames]

    def select(self, ids: set[str], source: str) -> list[Clip]:
        """The clips named by ``ids`` (from ``source``, named in errors), in dataset order: every id must be one."""
        clips = [c for c in self.clips if c.id in ids]
        if not clips:
            raise ValueError(f"{source}: none of its {len(ids)} ids is a clip of {self.root} ({len(self.clips)} clips)")
        unknown = sorted(ids - {c.id for c in clips})
        if unknown:
            raise ValueError(f"{source}: {len(unknown)} of its {len(ids)} ids are not clips of {self.root} "
                             f"(e.g. {unknown[0]}); give only the dataset's clips")
        return clips

    def split(self, n_val: int, seed: int = 0) -> tuple[list[Clip], list[Clip]]:
        """Train/validation split by clip (utterance), never by frame; the same for a given seed."""
        if not 0 < n_val < len(self.clips):
            raise ValueError(f"{self.root}: cannot hold out {n_val} of {len(self.clips)} clips for validation")
        held = set(np.random.default_rng(seed).permutation(len(self.clips))[:n_val].tolist())
        return ([c for i, c in enumerate(self.clips) if i not in held],
                [c for i, c in enumerate(self.clips) if i in held])
