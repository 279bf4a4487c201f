"""Per-video-frame SE4Lip features in the layouts the renderers read, and the .npy + sidecar files."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, audio, weights
from .weights import sha256_file

log = logging.getLogger(__name__)

# Layout name -> sub-steps per video frame, spaced 1 / (2 fps) apart and centred on the frame:
# ds like DeepSpeech's [N, 16, 29], hubert like HuBERT's [N, 2, 1024], ave like SyncTalk's [N, 1, 512].
LAYOUTS = {"ds": 16, "hubert": 2, "ave": 1}
DEFAULT_BATCH = 256  # speech windows per encoder call
CHUNK_SECONDS = 30.0  # audio per step of long extractions: memory is bounded by this, not by the duration
# "bf16", the CPU fast path (AMX / AVX-512 BF16; on CPUs without bf16 it changes nothing): the GRU's matmuls
# round their inputs to bf16 and accumulate in fp32 (state, gates and outputs stay fp32); the CNN runs under
# bf16 autocast. The front end is fp32 in both. With torch 1.12 it changes nothing (torch cannot tell whether the
# CPU has bf16), nor for the GRU before torch 2.9 (no oneDNN matmul hint).
PRECISIONS = ("fp32", "bf16")


class Extractor:
    """A trained speech encoder turning audio into per-frame features; made by :func:`se4lip_features.load`."""

    def __init__(self, model, info: dict, device: torch.device, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision == "bf16" and device.type != "cpu":
            raise ValueError(f"precision 'bf16' is a CPU fast path; on {device.type} use 'fp32'")
        self.model, self.info, self.device, self.precision = model, info, device, precision
        self.config = model.config
        self.speech = model.speech.for_inference()  # the speech encoder that extraction runs
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

    @contextlib.contextmanager
    def _precision_scope(self):
        """The arithmetic of ``precision`` around speech encoder calls (nothing changes for "fp32")."""
        if self.precision == "fp32" or not _cpu_has_bf16():  # emulated bf16 would only be slower
            yield
            return
        if self.config.speech_encoder == "cnn":
            # Convolutions in bf16 end to end; the CNN's BatchNorm is folded (SpeechEncoder.for_inference).
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
            return
        # The GRU takes oneDNN's matmul hint instead of autocast, which measured slower and less exact on it
        # (256 windows, 2 threads: 113 against 89 ms, max |diff| to fp32 1.2e-3 against 3.3e-4). A
        # process-wide setting, so it is restored as soon as the encoder call returns.
        if not hasattr(torch.backends.mkldnn, "matmul"):  # the hint is new in torch 2.9; before, the GRU is fp32
            yield
            return
        previous = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            yield
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = previous

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor, centres: torch.Tensor, batch_size: int = DEFAULT_BATCH,
              progress: bool = False) -> torch.Tensor:
        """Unit-norm speech embeddings of windows centred on given samples.

        The input features of each distinct STFT frame are computed once (in fp32), however many windows
        hold it: at 50 windows per second each frame is in about ten.

        Parameters
        ----------
        wav : float32 (n_samples,) at 16 kHz
        centres : int64 (n_windows,) sample indices (may lie outside the audio: silence is read there)

        Returns
        -------
        torch.Tensor float32 (n_windows, dim) on ``self.device``
        """
        from tqdm import tqdm

        wav, centres = wav.to(self.device), centres.to(self.device)
        out = []
        batches = range(0, len(centres), batch_size)
        for start in tqdm(batches, desc="extract", unit="batch", leave=False, disable=not progress):
            starts, which = audio.window_frames(centres[start: start + batch_size], self.config.n_stft_frames)
            x = self.speech.inputs(audio.log_stft_frames(wav, starts))  # (n_distinct, n_in)
            with self._precision_scope():
                emb = self.speech.encode(x[which])  # (batch, dim)
            out.append(F.normalize(emb.float(), dim=-1))
        if not out:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat(out)

    def extract(self, wav: np.ndarray, sr: int, fps: float = 25.0, layout: str = "ds",
                batch_size: int = DEFAULT_BATCH, progress: bool = False, name: str = "audio") -> np.ndarray:
        """Features for every video frame of the audio.

        Row i is centred on t = i / fps; there are exactly round(duration * fps) rows. Each sub-step
        embedding is computed once, however many frames share it. The audio is encoded
        ``CHUNK_SECONDS`` at a time, so besides the input and the returned array, memory does not grow
        with the duration (:func:`extract_file` does not hold those either).

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
        check_options(fps, layout, batch_size)
        wav16, n = framed_waveform(wav, sr, fps, name)
        out = np.empty((n, LAYOUTS[layout], self.dim), np.float32)
        step = round(CHUNK_SECONDS * audio.SAMPLE_RATE)
        blocks = (wav16[start: start + step] for start in range(0, len(wav16), step))
        row = 0
        for rows in self.extract_blocks(blocks, fps, layout, batch_size, progress,
                                        total_s=len(wav16) / audio.SAMPLE_RATE):
            out[row: row + len(rows)] = rows
            row += len(rows)
        return out

    def extract_blocks(self, blocks: Iterable[np.ndarray], fps: float = 25.0, layout: str = "ds",
                       batch_size: int = DEFAULT_BATCH, progress: bool = False,
                       total_s: float | None = None) -> Iterator[np.ndarray]:
        """Features of audio given as consecutive blocks, yielded as soon as their frames are complete.

        The offline extraction of audio too long to hold: the concatenated output is ``extract`` of the
        concatenated blocks (the same bytes when there is one block). Only the samples and sub-step
        embeddings that frames still to come need are kept between blocks.

        Parameters
        ----------
        blocks : float32 (n,) arrays of 16 kHz mono audio, in order (see :func:`audio.prepare_waveform`)
        total_s : duration of all the blocks, when known, for the progress bar

        Yields
        ------
        np.ndarray float32 (k, W, dim): the next k frames, k >= 1
        """
        from tqdm import tqdm

        check_options(fps, layout, batch_size)
        frames = FrameStream(self, fps, layout, batch_size)
        with tqdm(total=total_s, desc="extract", unit="s", leave=False, disable=not progress,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s of audio [{elapsed}<{remaining}]") as bar:
            blocks = iter(blocks)
            block = next(blocks, None)
            while block is not None:
                following = next(blocks, None)  # the last block is pushed as the last: one batch run for short audio
                rows = frames.push(block, last=following is None)
                bar.update(len(block) / audio.SAMPLE_RATE)
                if len(rows):
                    yield rows
                block = following


class FrameStream:
    """Incremental extraction: 16 kHz samples in, each frame's features out once its last window is complete.

    Sub-step j lies at half-frame unit ``j * stride`` (stride 2 for one-sub-step layouts, whose sub-steps
    fall on frame times only, else 1), so frame i uses sub-steps ``[i * per_frame, i * per_frame + span)``.
    Between calls it holds only the samples that windows still to be encoded need, and the embeddings of
    the sub-steps that frames still to come share with emitted ones (14 for ds): memory does not grow
    with the length of the audio. Used by :meth:`Extractor.extract_blocks`; its subclass in stream.py,
    which encodes windows while their audio arrives, by :class:`se4lip_features.StreamingExtractor`.
    """

    def __init__(self, extractor: Extractor, fps: float, layout: str, batch_size: int = DEFAULT_BATCH):
        check_options(fps, layout, batch_size)
        self.extractor, self.fps, self.batch_size = extractor, float(fps), batch_size
        self.width = LAYOUTS[layout]
        self.stride = 1 if self.width > 1 else 2  # half-frame units between encoded sub-steps
        self.per_frame = 2 // self.stride  # new sub-steps per frame
        self.span = (self.width - 1) // self.stride + 1  # sub-steps a frame reads
        self.half = audio.window_samples(extractor.config.n_stft_frames) // 2
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far: the next sample pushed is sample 0 of a new stream."""
        self.samples = np.zeros(0, np.float32)  # audio from absolute sample `offset` on
        self.offset = 0
        self.n_samples = 0  # samples received
        self.n_frames = 0  # frames emitted
        self.emb = torch.zeros(0, self.extractor.dim, device=self.extractor.device)  # scaled, sub-steps emb_start...
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
            rows = np.zeros((0, self.width, self.extractor.dim), np.float32)
        if last:
            self.reset()
        return rows

    def last_step(self, frame):
        """The last sub-step frame(s) ``frame`` read."""
        return frame * self.per_frame + self.span - 1

    def encode(self, stop: int, last: bool) -> None:
        """Have the scaled embeddings of sub-steps up to ``stop`` in ``self.emb`` (their windows are complete)."""
        first = self.emb_start + len(self.emb)
        if stop > first:
            centres = self.centres(np.arange(first, stop)) - self.offset
            new = self.extractor.embed(torch.from_numpy(self.samples), torch.from_numpy(centres), self.batch_size)
            self.emb = torch.cat([self.emb, new * self.extractor.scale])

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


def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); False where torch cannot tell (1.12)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.backends.mkldnn.is_available() and supported is not None and supported()


def check_options(fps: float, layout: str, batch_size: int = 1) -> None:
    """Refuse an unknown layout, a non-positive or infinite fps, or a batch size below 1 (ValueError)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not 0 < fps < math.inf:
        raise ValueError(f"fps must be positive and finite, got {fps}")
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


def load(name_or_path: str | Path | None = None, device: str | torch.device | None = None,
         precision: str = "fp32") -> Extractor:
    """Load SE4Lip weights for extraction.

    Parameters
    ----------
    name_or_path : a released name (see :func:`available_models`), a ``.safetensors`` path, or
        ``hf://owner/repo/file.safetensors[@revision]``; None for the default weights
    device : "cpu", "cuda", ...; None picks CUDA when available
    precision : "fp32", or "bf16" on CPU: matmuls with bf16 inputs and fp32 accumulation (see ``PRECISIONS``)
    """
    device = _device(device)
    model, info = weights.load(name_or_path, device)
    return Extractor(model, info, device, precision)


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

    The audio is read, resampled, encoded and written ``CHUNK_SECONDS`` at a time, so memory does not
    grow with the file's duration; the .npy holds the same bytes as ``np.save`` of :meth:`Extractor.extract`.
    Returns the sidecar dict. Refuses to overwrite unless ``force``.
    """
    audio_path, out_path = Path(audio_path), Path(out_path)
    side = sidecar_path(out_path)
    if not force and (out_path.exists() or side.exists()):
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    extractor = extractor or load(weights, device)
    check_options(fps, layout, batch_size)
    source = _FileAudio(audio_path)  # opens and checks the file now; problems in its data show while reading
    new_dirs = [p for p in out_path.parents if not p.exists()]  # removed again if nothing gets written
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy = out_path.with_name(out_path.name + ".partial")
    tmp_side = side.with_name(side.name + ".partial")
    done = False
    try:
        with open(tmp_npy, "wb") as f:
            rows = extractor.extract_blocks(source, fps, layout, batch_size, progress, total_s=source.duration_s)
            n_frames = _write_npy(f, rows, (LAYOUTS[layout], extractor.dim))
        if n_frames < 1:
            raise audio.AudioError(too_short_message(str(audio_path), source.n_samples, fps))
        meta = {
            "dim": extractor.dim, "layout": layout, "window": LAYOUTS[layout], "fps": float(fps),
            "n_frames": n_frames, "scale": "unit-norm embedding x sqrt(dim)",
            "weights": extractor.name, "weights_sha256": extractor.sha256, "precision": extractor.precision,
            "audio": audio_path.name, "audio_sha256": sha256_file(audio_path), "version": __version__,
        }
        tmp_side.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp_npy, out_path)
        os.replace(tmp_side, side)
        done = True
    finally:
        source.close()
        for tmp in (tmp_npy, tmp_side):
            with contextlib.suppress(FileNotFoundError):  # Path.unlink(missing_ok=) needs Python 3.8
                tmp.unlink()
        if not done:
            for folder in new_dirs:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return meta


def _write_npy(f, chunks: Iterable[np.ndarray], row_shape: tuple[int, ...]) -> int:
    """Write float32 chunks (k, *row_shape) as one .npy array as they come; returns the number of rows.

    The header is first written for 0 rows and rewritten at the end: numpy leaves room in it for a row
    count of up to 21 digits, so the file is byte for byte what ``np.save`` writes for the whole array.
    """
    np.save(f, np.zeros((0, *row_shape), np.float32))
    data_start = f.tell()
    n = 0
    for rows in chunks:
        f.write(np.ascontiguousarray(rows, dtype="<f4").data)
        n += len(rows)
    f.seek(0)
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, *row_shape)})
    if f.tell() != data_start:
        raise RuntimeError(f"{f.name}: the .npy header changed size when its row count was written")
    return n


class _FileAudio:
    """A file's audio as consecutive blocks of 16 kHz mono float32, read and resampled incrementally.

    The same samples as :func:`audio.load_audio` then :func:`audio.prepare_waveform` (soxr's streaming
    resampler gives the bytes of its one-shot one), and the same errors: those about the file when it is
    opened, those about its samples (NaN, none at all) when they are read.
    """

    def __init__(self, path: Path, block_s: float | None = None):
        self.path = path
        if not path.exists():
            raise audio.AudioError(f"{path}: no such file")
        if path.is_dir():
            raise audio.AudioError(f"{path}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise audio.AudioError(f"{path}: file is empty")
        if path.suffix.lower() in audio._FFMPEG_FIRST:
            self._open_av()
        else:
            self._open_soundfile()
        if not audio.MIN_SAMPLE_RATE <= self.sr <= audio.MAX_SAMPLE_RATE:
            self.close()
            raise audio.AudioError(f"{path}: sample rate {self.sr} Hz is outside {audio.MIN_SAMPLE_RATE}-"
                                   f"{audio.MAX_SAMPLE_RATE} Hz")
        self.block = max(1, round((block_s or CHUNK_SECONDS) * self.sr))  # native samples per block
        self.n_samples = 0  # 16 kHz samples produced so far

    def _open_soundfile(self) -> None:
        import soundfile

        try:
            self.file = soundfile.SoundFile(str(self.path))
        except (soundfile.SoundFileError, RuntimeError) as err:  # libsndfile cannot read it; FFmpeg may
            try:
                return self._open_av()
            except audio.AudioError:
                reason = getattr(err, "error_string", None) or str(err)
                raise audio.AudioError(f"{self.path}: not a readable audio file ({reason.rstrip('.')})") from err
        self.kind, self.sr = "soundfile", int(self.file.samplerate)
        self.duration_s = self.file.frames / self.sr if self.file.frames > 0 else None
        self.empty_message = "holds no samples"

    def _open_av(self) -> None:
        av = audio._import_av(self.path)
        try:
            self.file = av.open(str(self.path))
        except av.error.FFmpegError as err:
            raise audio.AudioError(f"{self.path}: cannot decode audio ({getattr(err, 'strerror', None) or err})") \
                from err
        if not self.file.streams.audio:
            self.file.close()
            raise audio.AudioError(f"{self.path}: has no audio stream")
        stream = self.file.streams.audio[0]
        self.kind, self.sr = "av", int(stream.rate)
        seconds = (float(stream.duration * stream.time_base) if stream.duration
                   else self.file.duration / 1e6 if self.file.duration else None)
        self.duration_s = seconds
        self.empty_message = "audio stream holds no samples"

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
                reason = getattr(err, "error_string", None) or str(err)
                raise audio.AudioError(f"{self.path}: not a readable audio file ({reason.rstrip('.')})") from err
        import av

        parts, held = [], 0
        try:
            for frame in self.file.decode(self.file.streams.audio[0]):
                pcm = frame.to_ndarray()  # planar (channels, n) or packed (1, n * channels)
                if not frame.format.is_planar:
                    pcm = pcm.reshape(-1, len(frame.layout.channels)).T
                parts.append(audio._to_float(pcm).mean(axis=0))
                held += parts[-1].shape[0]
                if held >= self.block:
                    yield np.concatenate(parts).astype(np.float32)
                    parts, held = [], 0
        except av.error.FFmpegError as err:
            raise audio.AudioError(f"{self.path}: cannot decode audio ({getattr(err, 'strerror', None) or err})") \
                from err
        if parts:
            yield np.concatenate(parts).astype(np.float32)

    def __iter__(self) -> Iterator[np.ndarray]:
        import soxr

        resampler = None
        if self.sr != audio.SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.sr, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        seen, held = 0, None  # one block is held back, so the resampler's tail joins the last one
        try:
            for block in self._native_blocks():
                if not np.isfinite(block).all():
                    raise audio.AudioError(f"{self.path}: contains NaN or infinite samples")
                seen += len(block)
                if held is not None:
                    yield held
                held = block if resampler is None else resampler.resample_chunk(block)
                self.n_samples += len(held)
            if not seen:
                raise audio.AudioError(f"{self.path}: {self.empty_message}")
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                self.n_samples += len(tail)
                held = np.concatenate([held, tail])
            yield np.ascontiguousarray(held, dtype=np.float32)
        finally:
            self.close()
