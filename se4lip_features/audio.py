"""Audio front end: load any audio or video file, resample to 16 kHz mono, and cut log-STFT speech windows."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, the rate every model input is resampled to
N_FFT = 512  # 32 ms at 16 kHz
WIN_LENGTH = 512  # 32 ms Hann window
HOP_LENGTH = 128  # 8 ms at 16 kHz: 125 STFT frames per second
N_FREQ = N_FFT // 2 + 1  # 257 linear-frequency bins, 0-8 kHz
LOG_EPS = 1e-5  # floor of the magnitude before the log
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 96000  # input rates we accept
QUIET_PEAK_DB = -20.0  # dBFS: below this peak level the features drift from those of the same speech at full level
TRUNCATED_SLACK_S = 0.1  # audio this much shorter than its header states is reported as truncated
BLOCK_SECONDS = 30.0  # audio per block when files are read and long extractions run: memory is bounded by it
# Wav2Lip / SyncTalk-AVE's mel bands: the log-mel baseline and the ablation's mel front end
MEL_BANDS = 80
MEL_FMIN, MEL_FMAX = 55.0, 7600.0  # Hz

assert WIN_LENGTH <= N_FFT and N_FFT % HOP_LENGTH == 0, "STFT constants are inconsistent"

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg"})  # .mpg: GRID's own
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".m4a"})
# Decoded by FFmpeg (PyAV) rather than libsndfile: containers libsndfile cannot open, and mp3, whose
# libsndfile decoder (mpg123) writes warnings straight to the process's stderr on a damaged file.
_FFMPEG_FIRST = VIDEO_SUFFIXES | {".m4a", ".mp3"}


class AudioError(ValueError):
    """Input audio that cannot be used; the message names the file and the problem."""


def load_audio(path: str | Path) -> np.ndarray:
    """An audio file, or the audio track of a video, as checked 16 kHz mono float32 (n_samples,).

    The concatenated blocks of :class:`AudioFile`: reading a file whole or block by block gives the same
    samples and the same errors.
    """
    with AudioFile(path) as source:
        wav = np.concatenate(list(source))
    source.warn_if_unreliable()
    return wav


class AudioFile:
    """A file's audio as consecutive checked blocks of 16 kHz mono float32, read and resampled incrementally.

    Problems with the file (missing, empty, unreadable, no audio stream, rate outside 8-96 kHz) raise
    :class:`AudioError` when it is opened; problems with its samples (NaN, none at all) while it is read.
    soxr's streaming resampler gives the bytes of its one-shot one (:func:`prepare_waveform`).

    Attributes
    ----------
    sr : the file's own sample rate
    duration_s : its duration as the container states it (None when unknown)
    n_samples : 16 kHz samples read so far
    """

    def __init__(self, path: str | Path, block_s: float | None = None):
        self.path = path = Path(path)
        if not path.exists():
            raise AudioError(f"{path}: no such file")
        if path.is_dir():
            raise AudioError(f"{path}: is a directory, not an audio file")
        if not path.is_file():  # a FIFO, /dev/zero: no length to check, no end to reach
            raise AudioError(f"{path}: not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(f"{path}: file is empty")
        if path.suffix.lower() in _FFMPEG_FIRST:
            self._open_av()
        else:
            self._open_soundfile()
        if not MIN_SAMPLE_RATE <= self.sr <= MAX_SAMPLE_RATE:
            self.close()
            raise AudioError(f"{path}: sample rate {self.sr} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
        self.block = max(1, round((block_s or BLOCK_SECONDS) * self.sr))  # native samples per block
        self.n_samples = 0
        self.peak = 0.0  # largest absolute sample read so far

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_soundfile(self) -> None:
        import soundfile

        try:
            self.file = soundfile.SoundFile(str(self.path))
        except (soundfile.SoundFileError, RuntimeError) as err:  # libsndfile cannot read it; FFmpeg may
            try:
                return self._open_av()
            except AudioError:
                raise AudioError(f"{self.path}: not a readable audio file ({_sndfile_reason(err)})") from err
        self.kind, self.sr = "soundfile", int(self.file.samplerate)
        self.duration_s = self.file.frames / self.sr if self.file.frames > 0 else None
        if self.file.format == "WAV":  # libsndfile clips the stated length to the data there: read the header
            self.duration_s = _wav_stated_seconds(self.path) or self.duration_s
        # An Ogg header states no length; a cut file ends inside its last page.
        self.cut_page = self.file.format == "OGG" and _ogg_ends_inside_a_page(self.path)
        self.empty_message = "holds no samples"

    def _open_av(self) -> None:
        av = _import_av(self.path)
        try:
            self.file = av.open(str(self.path))
        except av.error.FFmpegError as err:
            raise AudioError(f"{self.path}: cannot decode audio ({ffmpeg_reason(err)})") from err
        if not self.file.streams.audio:
            self.file.close()
            raise AudioError(f"{self.path}: has no audio stream")
        stream = self.file.streams.audio[0]
        self.kind, self.sr = "av", int(stream.rate)
        self.duration_s = (float(stream.duration * stream.time_base) if stream.duration
                           else self.file.duration / 1e6 if self.file.duration else None)
        self.empty_message = "audio stream holds no samples"
        # A video's audio is placed on the video's clock: sample 0 is the instant of the first video frame.
        self.video_start_s = _first_video_time(self.path, av) if self.file.streams.video else None
        self.lead_s = 0.0  # silence before the audio's first sample (negative: audio cut before the video)

    def close(self) -> None:
        self.file.close()

    def _native_blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks of about ``self.block`` samples at the file's own rate."""
        if self.kind == "soundfile":
            import soundfile

            try:
                while True:
                    data = self.file.read(self.block, dtype="float32", always_2d=True)  # (n, channels)
                    if not len(data):
                        return
                    yield data.mean(axis=1).astype(np.float32)
            except (soundfile.SoundFileError, RuntimeError) as err:
                raise AudioError(f"{self.path}: not a readable audio file ({_sndfile_reason(err)})") from err
        av = _import_av(self.path)

        parts, held, skip = [], 0, None
        try:
            for frame in self.file.decode(self.file.streams.audio[0]):
                pcm = frame.to_ndarray()  # planar (channels, n) or packed (1, n * channels)
                if not frame.format.is_planar:
                    pcm = pcm.reshape(-1, len(frame.layout.channels)).T
                mono = _to_float(pcm).mean(axis=0)
                if skip is None:  # the first frame: samples to drop (> 0) or silence to put first (< 0)
                    skip = self._skip_to_video_clock(frame.time)
                    if skip < 0:
                        mono, skip = np.concatenate([np.zeros(-skip, np.float32), mono]), 0
                if skip > 0:
                    cut = min(skip, len(mono))
                    mono, skip = mono[cut:], skip - cut
                parts.append(mono)
                held += len(mono)
                if held >= self.block:
                    yield np.concatenate(parts).astype(np.float32)
                    parts, held = [], 0
        except av.error.FFmpegError as err:
            raise AudioError(f"{self.path}: cannot decode audio ({ffmpeg_reason(err)})") from err
        if parts:
            yield np.concatenate(parts).astype(np.float32)

    def _skip_to_video_clock(self, first_time: float | None) -> int:
        """Native samples to drop (> 0) or silence to put first (< 0) so that sample 0 is the first video frame.

        The streams' own start times place them on one clock (an audio track may start 0.4 s after the video,
        in sync in every player); without a video stream, or without times, the audio starts at sample 0.
        """
        if self.video_start_s is None or first_time is None:
            return 0
        self.lead_s = float(first_time) - self.video_start_s
        if self.lead_s and self.duration_s is not None:
            stream = self.file.streams.audio[0]  # only the audio stream's own length moves with it
            self.duration_s = float(stream.duration * stream.time_base) + self.lead_s if stream.duration else None
        return -round(self.lead_s * self.sr)

    def __iter__(self) -> Iterator[np.ndarray]:
        """The 16 kHz blocks, in order; the file is closed at the end (read it once)."""
        import soxr

        resampler = None
        if self.sr != SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.sr, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        seen, held = 0, None  # one block is held back, so the resampler's tail joins the last one
        try:
            for block in self._native_blocks():
                if not np.isfinite(block).all():
                    raise AudioError(f"{self.path}: contains NaN or infinite samples")
                seen += len(block)
                self.peak = max(self.peak, float(np.abs(block).max(initial=0.0)))
                if held is not None:
                    yield held
                held = block if resampler is None else resampler.resample_chunk(block)
                self.n_samples += len(held)
            if not seen:
                raise AudioError(f"{self.path}: {self.empty_message}")
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                self.n_samples += len(tail)
                held = np.concatenate([held, tail])
            yield np.ascontiguousarray(held, dtype=np.float32)
        finally:
            self.close()


    def unreliable(self) -> list[str]:
        """After reading: one line per reason not to trust features of this audio (truncated, too quiet)."""
        problems = []
        if getattr(self, "cut_page", False):
            problems.append(f"{self.path}: truncated: the file ends inside an Ogg page")
        read_s = self.n_samples / SAMPLE_RATE
        if self.duration_s is not None and read_s < self.duration_s - TRUNCATED_SLACK_S:
            problems.append(f"{self.path}: truncated: its header states {self.duration_s:.2f} s, its data holds "
                            f"{read_s:.2f} s")
        peak_db = 20 * math.log10(max(self.peak, 1e-10))
        if peak_db < QUIET_PEAK_DB:
            problems.append(f"{self.path}: very quiet (peak {peak_db:.0f} dBFS, below {QUIET_PEAK_DB:.0f}): the "
                            "features are unreliable; normalise the audio")
        return problems

    def warn_if_unreliable(self) -> None:
        """Log :meth:`unreliable`'s lines as warnings."""
        for line in self.unreliable():
            log.warning("%s", line)


def _wav_stated_seconds(path: Path) -> float | None:
    """The duration a RIFF WAVE header states (its data chunk's size), or None where it states none."""
    import struct

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, rate, frame_bytes = 12, 0, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos: pos + 4], struct.unpack("<I", head[pos + 4: pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            rate = struct.unpack("<I", head[pos + 12: pos + 16])[0]
            frame_bytes = struct.unpack("<H", head[pos + 20: pos + 22])[0]  # block align: bytes per frame
        elif chunk == b"data":
            unknown = size in (0, 0xFFFFFFFF)  # streamed WAVs leave the size unset
            return None if unknown or not rate or not frame_bytes else size / frame_bytes / rate
        pos += 8 + size + (size & 1)
    return None


def _ogg_ends_inside_a_page(path: Path) -> bool:
    """Whether an Ogg file's last page is cut short: the page lengths its headers state run past its end."""
    size, pos = path.stat().st_size, 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            header = f.read(27)  # "OggS", version, flags, granule, serial, sequence, CRC, number of segments
            if len(header) < 27:
                return True  # cut inside a page header
            if header[:4] != b"OggS":
                return False  # not a page: nothing to say about the rest
            table = f.read(header[26])
            if len(table) < header[26]:
                return True
            pos += 27 + len(table) + sum(table)
    return pos > size


def _first_video_time(path: Path, av) -> float | None:
    """Time of the first decoded frame of a file's first video stream (the clock lips.read_video counts from)."""
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                return None if frame.time is None else float(frame.time)
    except av.error.FFmpegError:
        return None  # an undecodable video: lips.read_video names the problem
    return None


def _import_av(path: Path):
    """PyAV, which decodes video and the formats libsndfile cannot; if it is missing, an AudioError naming the file.

    It is not a dependency on Python 3.7, which it has no wheel for: audio files are read by soundfile there.
    """
    try:
        import av
    except ImportError as err:
        raise AudioError(f"{path}: cannot decode audio: this needs PyAV, which is not installed (pip install av)") \
            from err
    return av


def _sndfile_reason(err: Exception) -> str:
    """libsndfile's reason for an error, without the path it repeats."""
    return (getattr(err, "error_string", None) or str(err)).rstrip(".")


def ffmpeg_reason(err: Exception) -> str:
    """FFmpeg's reason for an error, without the path it repeats."""
    return getattr(err, "strerror", None) or str(err)


def _to_float(pcm: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1), scaled like libsndfile (int16 / 32768); unsigned PCM is offset."""
    if np.issubdtype(pcm.dtype, np.unsignedinteger):  # 8-bit WAV and FFmpeg's u8: silence is 128
        full_scale = float(np.iinfo(pcm.dtype).max // 2 + 1)
        return (pcm.astype(np.float64) - full_scale).astype(np.float32) / np.float32(full_scale)
    if np.issubdtype(pcm.dtype, np.integer):
        return pcm.astype(np.float32) / np.float32(-float(np.iinfo(pcm.dtype).min))
    return pcm.astype(np.float32)


def to_mono(wav: np.ndarray, name: str = "audio") -> np.ndarray:
    """A waveform (n_samples,) or (n_samples, channels) of int or float PCM as finite mono float32 (n_samples,).

    Raises :class:`AudioError` naming ``name`` for another shape or NaN / infinite samples.
    """
    wav = np.asarray(wav)
    if wav.ndim not in (1, 2):
        raise AudioError(f"{name}: expected a 1-D or 2-D waveform, got shape {wav.shape}")
    wav = _to_float(wav)
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def prepare_waveform(wav: np.ndarray, sr: int, name: str = "audio") -> np.ndarray:
    """Check, downmix and resample a waveform to 16 kHz mono float32.

    Parameters
    ----------
    wav : np.ndarray, shape (n_samples,) or (n_samples, channels); int or float PCM
    sr : int, 8-96 kHz
    name : str, used in error messages (usually the file name)
    """
    wav = to_mono(wav, name)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if wav.size == 0:
        raise AudioError(f"{name}: holds no samples")
    if sr != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(wav, dtype=np.float32)


def window_samples(n_stft_frames: int) -> int:
    """Samples spanned by ``n_stft_frames`` STFT frames, edge to edge."""
    return (n_stft_frames - 1) * HOP_LENGTH + N_FFT


def stft_frames_per_window(window_seconds: float) -> int:
    """Odd number of STFT frames whose centres cover ``window_seconds`` (25 for 200 ms)."""
    n = round(window_seconds * SAMPLE_RATE / HOP_LENGTH)
    return n + 1 - n % 2


def speech_windows(wav: torch.Tensor, centres: torch.Tensor, n_stft_frames: int) -> torch.Tensor:
    """Log-magnitude STFT windows centred on given sample positions.

    Samples outside the waveform read as silence, so windows at the edges still see all the real audio
    there is. A window's frames depend only on its own samples, so its content does not depend on where
    other windows lie (offline, streaming and training all see the same numbers); frames that several
    windows share (at 50 windows per second, each frame is in about ten) are computed once.

    Parameters
    ----------
    wav : torch.Tensor, float32, shape (n_samples,) at 16 kHz
    centres : torch.Tensor, int64, shape (n_windows,); the sample each window is centred on
    n_stft_frames : int, odd; STFT frames per window, hop 128 samples apart

    Returns
    -------
    torch.Tensor, float32, shape (n_windows, n_stft_frames, 257)
    """
    starts, which = shared_stft_frames(centres.to(wav.device), n_stft_frames)
    return log_stft_frames(wav, starts)[which]


def shared_stft_frames(centres: torch.Tensor, n_stft_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct STFT frames of windows centred on ``centres``, and which of them each window reads.

    Returns
    -------
    starts : int64 (n_distinct,) first sample of each distinct frame, ascending
    which : int64 (n_windows, n_stft_frames) indices into ``starts``
    """
    offsets = torch.arange(n_stft_frames, device=centres.device) * HOP_LENGTH - window_samples(n_stft_frames) // 2
    return torch.unique(centres[:, None] + offsets, return_inverse=True)


def log_stft_frames(wav: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """log(|STFT| + 1e-5) of the N_FFT-sample frames beginning at ``starts``: (n_frames, 257).

    Samples outside the waveform read as silence.
    """
    idx = starts.to(wav.device)[:, None] + torch.arange(N_FFT, device=wav.device)  # (n_frames, N_FFT)
    inside = (idx >= 0) & (idx < len(wav))
    segments = wav[idx.clamp(0, max(len(wav) - 1, 0))] * inside if len(wav) else idx * 0.0
    spec = torch.stft(segments, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH,
                      window=torch.hann_window(WIN_LENGTH, device=wav.device), center=False,
                      return_complex=True)  # (n_frames, 257, 1)
    return torch.log(spec.abs() + LOG_EPS)[..., 0]


def hz_to_mel(hz):
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3  # Hz per mel in the linear part
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep,
                    hz / f_sp)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters, Slaney scale and Slaney area normalisation (as librosa's ``filters.mel``).

    Band m rises from mel point m to m + 1 and falls to m + 2 of ``n_mels + 2`` points evenly spaced in
    mel between ``fmin`` and ``fmax``; each triangle is scaled by 2 / (its width in Hz).

    Returns
    -------
    np.ndarray float32 (n_mels, n_fft // 2 + 1)
    """
    if not 0 <= fmin < fmax <= sr / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sr / 2, got fmin={fmin}, fmax={fmax}, sr={sr}")
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,) Hz
    lower = (freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - freqs[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def frame_count(n_samples: int, fps: float) -> int:
    """Video frames in ``n_samples`` of 16 kHz audio: round(duration * fps), halves rounded up."""
    # n * fps first: exact for whole fps, so 9280 samples at 25 fps are 14.5 frames -> 15, not 14.
    return math.floor(n_samples * fps / SAMPLE_RATE + 0.5)


# ---------------------------------------------------------------------------------------- finding inputs


def folder_files(folder: Path, suffixes) -> list[Path]:
    """The files directly inside ``folder`` whose suffix is one of ``suffixes`` (any case), hidden ones skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def media_files(inputs: list[Path], suffixes) -> list[Path]:
    """Files given directly, and the files with one of ``suffixes`` directly inside the folders given."""
    files = []
    for item in inputs:
        if item.is_dir():
            found = folder_files(item, suffixes)
            if not found:
                raise FileNotFoundError(f"{item}: folder holds no {', '.join(sorted(suffixes))} files")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files
