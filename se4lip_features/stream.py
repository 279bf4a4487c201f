"""Streaming extraction: push audio as it arrives, get each video frame's features as soon as they are final."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import audio
from .extract import Extractor
from .frames import DEFAULT_BATCH, LAYOUTS, FrameStream


class ProgressiveFrames(FrameStream):
    """:class:`FrameStream` whose windows are encoded while their audio arrives, not once it is all there.

    A 200 ms window is 25 STFT frames 8 ms apart; the GRU reads them in order, so each window's GRU is
    advanced over the frames that are complete at every push. At 25 fps about eleven windows are under
    way at once: a 40 ms push advances each by about five steps (the speech encoder's own step-wise
    inference, :meth:`SpeechEncoder.advance`, from the state each window reached), instead of the 25 steps
    of two whole windows, and when a frame's last window completes only its last steps remain to be
    computed. The embeddings equal those of whole windows to float rounding.

    It runs in fp32 whatever the extractor's ``precision``: with a dozen rows per matmul, oneDNN's bf16
    path (which converts the weights at every call) is no faster than fp32 here.
    """

    def __init__(self, extractor: Extractor, fps: float, layout: str, batch_size: int = DEFAULT_BATCH):
        self.speech = extractor.speech  # the encoder extraction runs (for the GRU, the model's own)
        self.n_stft, self.scale, cfg = extractor.config.n_stft_frames, extractor.scale, extractor.config
        self.gru_shape = (cfg.gru_layers, cfg.gru_hidden)
        super().__init__(None, self.n_stft, extractor.dim, fps, layout, batch_size, extractor.device)

    def reset(self) -> None:
        super().reset()
        self.h = torch.zeros(self.gru_shape[0], 0, self.gru_shape[1], device=self.device)
        self.done = np.zeros(0, np.int64)  # STFT frames read so far by each window under way

    def encode(self, stop: int, last: bool) -> None:
        """Advance every started window over its complete STFT frames; windows that finish join ``self.emb``.

        Windows under way are the sub-steps [emb_start + len(emb), + len(done)); with ``last`` the audio has
        ended, so every window up to ``stop`` can be finished (reading silence beyond the end).
        """
        first = self.emb_start + len(self.emb)
        if last:
            n_started = max(stop - first, len(self.done))
        else:  # windows whose first STFT frame is complete
            n_started = max(self.steps_centred_by(self.n_samples - audio.N_FFT + self.half) - first, len(self.done))
        if n_started > len(self.done):
            extra = n_started - len(self.done)
            self.done = np.concatenate([self.done, np.zeros(extra, np.int64)])
            self.h = torch.cat([self.h, self.h.new_zeros(self.h.shape[0], extra, self.h.shape[2])], dim=1)
        if not len(self.done):
            return
        starts = self.centres(np.arange(first, first + len(self.done))) - self.half  # first sample of each window
        if last:
            ready = np.full(len(self.done), self.n_stft)
        else:
            ready = np.clip((self.n_samples - starts - audio.N_FFT) // audio.HOP_LENGTH + 1, 0, self.n_stft)
        with torch.inference_mode():  # fp32 whatever the extractor's precision (see the class docstring)
            todo = np.flatnonzero(ready > self.done)
            for b in range(0, len(todo), self.batch_size):
                rows = todo[b: b + self.batch_size]
                self._advance(rows, starts[rows], self.done[rows], ready[rows] - self.done[rows])
                self.done[rows] = ready[rows]
            finished = int(np.argmin(np.append(self.done, 0) == self.n_stft))  # windows finish in order
            if finished:
                emb = F.normalize(self.speech.finish(self.h[:, :finished]), dim=-1) * self.scale
                self.emb = torch.cat([self.emb, emb])
                self.h, self.done = self.h[:, finished:], self.done[finished:]

    def _advance(self, rows: np.ndarray, starts: np.ndarray, done: np.ndarray, new: np.ndarray) -> None:
        """Advance the GRU states of windows ``rows`` over their next ``new`` STFT frames (from frame ``done`` on).

        Windows with as many new frames run as one batch. Windows 2 / (2 fps) apart share their STFT frames
        when that is a whole number of hops (25 fps: 5 hops): each distinct frame is computed once.
        """
        device = self.h.device
        for n in np.unique(new):
            group = new == n
            frame_starts = starts[group][:, None] + (done[group][:, None] + np.arange(n)) * audio.HOP_LENGTH
            distinct, which = np.unique(frame_starts - self.offset, return_inverse=True)
            frames = audio.log_stft_frames(torch.from_numpy(self.samples).to(device), torch.from_numpy(distinct))
            x = self.speech.inputs(frames)[torch.from_numpy(which.reshape(-1)).to(device)]
            index = torch.from_numpy(rows[group]).to(device)
            self.h[:, index] = self.speech.advance(x.view(len(index), n, -1), self.h[:, index].contiguous())


class StreamingExtractor:
    """Features of live audio, frame by frame, equal to offline extraction of the whole stream.

    Frame i is returned by the :meth:`push` that completes the window of its last sub-step, which is
    centred ``(W - 1) / (4 fps)`` after the frame's instant i / fps and reaches half a window (112 ms)
    beyond it; :attr:`latency_s` is that wait. :meth:`flush` ends the stream: the last frames read
    silence beyond it, as offline extraction does, and there are round(duration * fps) frames in all.

    >>> stream = StreamingExtractor(se4lip_features.load(), fps=25, layout="ave")
    >>> for chunk in microphone():                  # any sizes, int or float PCM
    ...     render(stream.push(chunk))              # (k, 1, 512), k >= 0 frames
    >>> render(stream.flush())

    Parameters
    ----------
    extractor : from :func:`se4lip_features.load`. A GRU encoder streams in fp32 whatever its ``precision``
        (a push advances a dozen windows at a time, where bf16 is no faster); a CNN encoder encodes each
        window once complete, with the extractor's ``precision``
    fps, layout : as for :meth:`Extractor.extract`
    sr : rate of the pushed audio; other rates than 16 kHz go through soxr's streaming resampler (the
        offline one, sample for sample), whose filter delays the output by a few ms more
    batch_size : most windows per encoder call, when a push completes many
    """

    def __init__(self, extractor: Extractor, fps: float = 25.0, layout: str = "ds", sr: int = audio.SAMPLE_RATE,
                 batch_size: int = DEFAULT_BATCH):
        if not audio.MIN_SAMPLE_RATE <= sr <= audio.MAX_SAMPLE_RATE:
            raise ValueError(f"sample rate {sr} Hz is outside {audio.MIN_SAMPLE_RATE}-{audio.MAX_SAMPLE_RATE} Hz")
        # GRU windows are advanced as their audio arrives; the ablation's CNN encodes each window once complete
        if extractor.config.speech_encoder == "gru":
            self._frames = ProgressiveFrames(extractor, fps, layout, batch_size)  # checks fps, layout, batch_size
        else:
            self._frames = extractor.frame_stream(fps, layout, batch_size)
        self.extractor, self.fps, self.layout, self.sr = extractor, float(fps), layout, int(sr)
        self.width, self.dim = LAYOUTS[layout], extractor.dim
        self._resampler = None
        self.reset()

    @property
    def latency_s(self) -> float:
        """Seconds of audio needed after frame i's instant i / fps before frame i can be returned."""
        return self._frames.lookahead_s()

    @property
    def n_frames(self) -> int:
        """Frames returned so far in this stream."""
        return self._frames.n_frames

    def reset(self) -> None:
        """Drop the current stream; the next push starts a new one at t = 0."""
        self._frames.reset()
        if self.sr != audio.SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.sr, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._n_pushed = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add audio; returns the frames it completes.

        Parameters
        ----------
        chunk : (n,) or (n, channels), int or float PCM at ``sr``; n >= 0

        Returns
        -------
        np.ndarray float32 (k, W, dim), k >= 0
        """
        return self._frames.push(self._prepare(chunk))

    def flush(self) -> np.ndarray:
        """End the stream: returns its remaining frames, float32 (k, W, dim), and starts a new stream."""
        tail = np.zeros(0, np.float32)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(tail, last=True).astype(np.float32)
        rows = self._frames.push(tail, last=True)
        self.reset()
        return rows

    def _prepare(self, chunk: np.ndarray) -> np.ndarray:
        """Checked mono float32 at 16 kHz, converted like :func:`audio.prepare_waveform`."""
        wav = audio.to_mono(chunk, name=f"stream: chunk at sample {self._n_pushed}")
        self._n_pushed += len(wav)
        if self._resampler is not None:
            wav = self._resampler.resample_chunk(wav)
        return np.ascontiguousarray(wav, dtype=np.float32)
