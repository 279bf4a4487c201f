"""Feature layouts, the video-frame grid (how many frames a waveform has, which speech windows each reads) and
the frame engine that turns a waveform's windows into frames as its audio arrives."""

from __future__ import annotations

import math

import numpy as np
import torch

from . import audio

# Layout name -> sub-steps per video frame, spaced 1 / (2 fps) apart and centred on the frame:
# ds like DeepSpeech's [N, 16, 29], hubert like HuBERT's [N, 2, 1024], ave like SyncTalk's [N, 1, 512].
LAYOUTS = {"ds": 16, "hubert": 2, "ave": 1}
DEFAULT_BATCH = 256  # speech windows per encoder call
MAX_FPS = 240.0  # video frame rates beyond any camera's: 1e5 fps would make a 9.8 GB file of 3 s of audio


def check_options(fps: float, layout: str, batch_size: int = 1) -> None:
    """Refuse an unknown layout, an fps outside (0, MAX_FPS], or a batch size below 1 (ValueError)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be positive and at most {MAX_FPS:g}, got {fps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def framed_waveform(wav: np.ndarray, sr: int, fps: float, name: str) -> tuple[np.ndarray, int]:
    """The checked 16 kHz mono waveform and its number of video frames, N = round(duration * fps) >= 1.

    Raises :class:`audio.AudioError` naming ``name`` for unusable audio or audio shorter than one frame.
    """
    wav16 = audio.prepare_waveform(wav, sr, name=name)
    n = audio.frame_count(len(wav16), fps)
    if n < 1:
        raise audio.AudioError(too_short_message(name, len(wav16), fps))
    return wav16, n


def too_short_message(name: str, n_samples: int, fps: float) -> str:
    """The error for audio shorter than one video frame."""
    return (f"{name}: {n_samples / audio.SAMPLE_RATE:.3f} s of audio is shorter than one frame at "
            f"{fps:g} fps")


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


class FrameStream:
    """Incremental extraction: 16 kHz samples in, each frame's features out once its last window is complete.

    Sub-step j lies at half-frame unit ``j * stride`` (stride 2 for one-sub-step layouts, whose sub-steps
    fall on frame times only, else 1), so frame i uses sub-steps ``[i * per_frame, i * per_frame + span)``.
    Between calls it holds only the samples that windows still to be encoded need, and the embeddings of
    the sub-steps that frames still to come share with emitted ones (14 for ds): memory does not grow
    with the length of the audio. Used by :meth:`Extractor.extract_blocks`; its subclass in stream.py,
    which encodes windows while their audio arrives, by :class:`se4lip_features.StreamingExtractor`.

    Parameters
    ----------
    embed : ``embed(wav, centres, batch_size)``: the features (n, dim) of the windows centred on samples
        ``centres`` (int64 tensor) of ``wav`` (float32 tensor), e.g. :meth:`Extractor.frame_stream`'s
    n_stft_frames, dim : STFT frames per window, features per sub-step
    fps, layout, batch_size : the frame grid and the most windows per ``embed`` call
    device : where ``embed``'s features are
    """

    def __init__(self, embed, n_stft_frames: int, dim: int, fps: float, layout: str,
                 batch_size: int = DEFAULT_BATCH, device=None):
        check_options(fps, layout, batch_size)
        self.embed, self.dim, self.device = embed, dim, torch.device(device or "cpu")
        self.fps, self.batch_size = float(fps), batch_size
        self.width = LAYOUTS[layout]
        self.stride = 1 if self.width > 1 else 2  # half-frame units between encoded sub-steps
        self.per_frame = 2 // self.stride  # new sub-steps per frame
        self.span = (self.width - 1) // self.stride + 1  # sub-steps a frame reads
        self.half = audio.window_samples(n_stft_frames) // 2
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far: the next sample pushed is sample 0 of a new stream."""
        self.samples = np.zeros(0, np.float32)  # audio from absolute sample `offset` on
        self.offset = 0
        self.n_samples = 0  # samples received
        self.n_frames = 0  # frames emitted
        self.emb = torch.zeros(0, self.dim, device=self.device)  # features of sub-steps emb_start...
        self.emb_start = 0

    def centres(self, steps: np.ndarray) -> np.ndarray:
        """Sample each sub-step's window is centred on: the arithmetic of :func:`substep_grid`, bit for bit."""
        times = (steps * self.stride - (self.width - 1) / 2) / (2 * self.fps)
        return np.round(times * audio.SAMPLE_RATE).astype(np.int64)

    def steps_centred_by(self, sample: int) -> int:
        """How many sub-steps are centred at or before ``sample`` (0 if none)."""
        guess = math.floor((sample / audio.SAMPLE_RATE * 2 * self.fps + (self.width - 1) / 2) / self.stride)
        if guess < -2:
            return 0
        candidates = np.arange(max(guess - 2, 0), guess + 3)  # rounding moves a centre by less than a step
        return int(candidates[0] + (self.centres(candidates) <= sample).sum())

    def lookahead_s(self) -> float:
        """Audio needed after a frame's instant i / fps before the frame can be emitted, in seconds."""
        return (self.centres(np.array([self.last_step(0)]))[0] + self.half) / audio.SAMPLE_RATE

    def push(self, wav16: np.ndarray, last: bool = False) -> np.ndarray:
        """Add samples; returns the frames completed by them, float32 (k, W, dim), k >= 0.

        With ``last``, the audio ends here: every remaining frame of the round(duration * fps) is returned,
        its windows reading silence beyond the end, and the stream starts over.
        """
        if len(wav16):
            self.samples = np.concatenate([self.samples, np.asarray(wav16, np.float32)])
            self.n_samples += len(wav16)
        end = audio.frame_count(self.n_samples, self.fps)  # frames that exist (more may come)
        if not last:
            pending = np.arange(self.n_frames, end)
            complete = self.centres(self.last_step(pending)) + self.half <= self.n_samples
            end = self.n_frames + int(complete.sum())  # centres grow with i: the complete ones come first
        self.encode(self.last_step(end - 1) + 1 if end > self.n_frames else 0, last)
        if end > self.n_frames:
            rows = self._frames(end)
        else:
            rows = np.zeros((0, self.width, self.dim), np.float32)
        if last:
            self.reset()
        return rows

    def last_step(self, frame):
        """The last sub-step frame(s) ``frame`` read."""
        return frame * self.per_frame + self.span - 1

    def encode(self, stop: int, last: bool) -> None:
        """Have the features of sub-steps up to ``stop`` in ``self.emb`` (their windows are complete)."""
        first = self.emb_start + len(self.emb)
        if stop > first:
            centres = self.centres(np.arange(first, stop)) - self.offset
            new = self.embed(torch.from_numpy(self.samples), torch.from_numpy(centres), self.batch_size)
            self.emb = torch.cat([self.emb, new])

    def _frames(self, end: int) -> np.ndarray:
        """Return frames [n_frames, end), whose sub-steps are in ``self.emb``; drop what is no longer needed."""
        index = (np.arange(self.n_frames, end)[:, None] * self.per_frame + np.arange(self.span)[None, :]
                 - self.emb_start)  # (k, W) rows of self.emb
        rows = self.emb[torch.from_numpy(index).to(self.emb.device)].cpu().numpy()
        self.n_frames = end
        keep = end * self.per_frame  # the first sub-step of the next frame
        self.emb, self.emb_start = self.emb[keep - self.emb_start:], keep
        # The next window to encode starts `half` before its centre; nothing before that is read again.
        # Samples before 0 read as silence only while the buffer starts at 0, so it is never cut below 0.
        start = self.centres(np.array([self.emb_start + len(self.emb)]))[0] - self.half
        cut = min(max(start, self.offset), self.n_samples) - self.offset
        if cut > 0:
            self.samples, self.offset = self.samples[cut:].copy(), self.offset + cut
        return rows
