"""Per-video-frame SE4Lip features in the layouts the renderers read, and the .npy + sidecar files."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from . import atomic, audio, sidecar, weights
from .frames import DEFAULT_BATCH, LAYOUTS, FrameStream, check_options, framed_waveform, too_short_message
from .sidecar import sha256_file, sidecar_path

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
        # The GRU takes oneDNN's matmul hint instead of autocast, which was both slower and less exact on it.
        # A process-wide setting, so it is restored as soon as the encoder call returns.
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
    def embed(self, wav: torch.Tensor, centres: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
        """Unit-norm speech embeddings of windows centred on given samples, with this extractor's precision
        (:meth:`SpeechEncoder.embed <se4lip_features.model.SpeechEncoder.embed>`).

        Parameters
        ----------
        wav : float32 (n_samples,) at 16 kHz
        centres : int64 (n_windows,) sample indices (may lie outside the audio: silence is read there)

        Returns
        -------
        torch.Tensor float32 (n_windows, dim) on ``self.device``
        """
        return self.speech.embed(wav.to(self.device), centres, batch_size, self._precision_scope)

    def frame_stream(self, fps: float, layout: str, batch_size: int = DEFAULT_BATCH) -> FrameStream:
        """The frame engine over this extractor's features (its :meth:`embed` times :attr:`scale`)."""
        return FrameStream(lambda wav, centres, size: self.embed(wav, centres, size) * self.scale,
                           self.config.n_stft_frames, self.dim, fps, layout, batch_size, self.device)

    def extract(self, wav: np.ndarray, sr: int, fps: float = 25.0, layout: str = "ds",
                batch_size: int = DEFAULT_BATCH, progress: bool = False, name: str = "audio") -> np.ndarray:
        """Features for every video frame of the audio.

        Row i is centred on t = i / fps; there are exactly round(duration * fps) rows. Each sub-step
        embedding is computed once, however many frames share it. The audio is encoded
        ``audio.BLOCK_SECONDS`` at a time, so besides the input and the returned array, memory does not grow
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
        step = round(audio.BLOCK_SECONDS * audio.SAMPLE_RATE)
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
        frames = self.frame_stream(fps, layout, batch_size)
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


def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); False where torch cannot tell (1.12)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.backends.mkldnn.is_available() and supported is not None and supported()


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
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: SE4Lip runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available to this torch {torch.__version__}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def extract_file(audio_path: str | Path, out_path: str | Path, *, extractor: Extractor | None = None,
                 weights: str | None = None, device: str | None = None, fps: float = 25.0, layout: str = "ds",
                 batch_size: int = DEFAULT_BATCH, force: bool = False, progress: bool = False) -> dict:
    """Extract one audio (or video) file to ``out_path`` (.npy) and its sidecar, both written atomically.

    The audio is read, resampled, encoded and written ``audio.BLOCK_SECONDS`` at a time, so memory does not
    grow with the file's duration; the .npy holds the same bytes as ``np.save`` of :meth:`Extractor.extract`.
    Returns the sidecar dict. Refuses to overwrite unless ``force``.
    """
    audio_path, out_path = Path(audio_path), Path(out_path)
    refuse_existing(out_path, force)
    extractor = extractor or load(weights, device)
    check_options(fps, layout, batch_size)
    # A second writer of this output waits, then finds the first one's pair: refused without --force, never mixed.
    with atomic.exclusive(out_path, wait=True):
        refuse_existing(out_path, force)
        for orphan in (*atomic.stale_temporaries(out_path), *atomic.stale_temporaries(sidecar_path(out_path))):
            orphan.unlink()  # a killed writer's: holding the lock, no other writer of this pair is at work
        source = audio.AudioFile(audio_path)  # opens and checks the file; problems in its data show while reading

        def check(n_frames: int) -> None:
            if n_frames < 1:
                raise audio.AudioError(too_short_message(str(audio_path), source.n_samples, fps))
            source.warn_if_unreliable()

        try:
            rows = extractor.extract_blocks(source, fps, layout, batch_size, progress, total_s=source.duration_s)
            return write_features(out_path, rows, extractor, fps=fps, layout=layout, audio_path=audio_path,
                                  check=check)
        finally:
            source.close()


def refuse_existing(out_path: Path, force: bool) -> None:
    """FileExistsError unless ``force`` when the feature file or its sidecar exists; with ``force`` too when the
    sidecar's name holds a file that is not a sidecar (a JSON of the user's)."""
    side = sidecar_path(out_path)
    if not force and (out_path.exists() or side.exists()):
        raise FileExistsError(f"{out_path if out_path.exists() else side}: exists (use --force to overwrite)")
    if side.exists():
        try:
            sidecar.read_sidecar(out_path)
        except ValueError:
            raise FileExistsError(f"{side}: exists and is not the sidecar of a feature file, so --force does not "
                                  f"replace it; move it away or name another output than {out_path.name}") from None


def write_features(out_path: Path, rows: Iterable[np.ndarray], extractor: Extractor, *, fps: float, layout: str,
                   audio_path: Path, check: Callable[[int], None] | None = None) -> dict:
    """Write feature rows to ``out_path`` (.npy) and the sidecar ``se4lip-extract`` writes, as one atomic pair.

    Parameters
    ----------
    rows : float32 chunks (k, W, dim) of ``extractor``'s features of ``audio_path`` at ``fps`` in ``layout``
    check : called with the number of rows before the pair is published (raise to write nothing)

    Returns the sidecar dict.
    """
    side = sidecar_path(out_path)
    new_dirs = [p for p in out_path.parents if not p.exists()]  # removed again if nothing gets written
    done = False
    try:
        # Unique temporaries, renamed into place as a pair: concurrent writers of one output never mix. The
        # sidecar goes first, so a reader that finds the .npy (the adapters key on it) finds its sidecar too.
        with atomic.replacing(side, out_path) as (tmp_side, tmp_npy):
            with open(tmp_npy, "wb") as f:
                n_frames = _write_npy(f, rows, (LAYOUTS[layout], extractor.dim), out_path)
            if check is not None:
                check(n_frames)
            meta = sidecar.describe(dim=extractor.dim, layout=layout, window=LAYOUTS[layout], fps=fps,
                                    n_frames=n_frames, weights=extractor.name, weights_sha256=extractor.sha256,
                                    weights_source=extractor.info.get("source", extractor.name),
                                    precision=extractor.precision, audio=audio_path.name,
                                    audio_sha256=sha256_file(audio_path))
            tmp_side.write_text(json.dumps(meta, indent=1) + "\n")
        done = True
    except OSError as err:
        if err.filename is not None:
            raise
        # a failed write to the temporary (disk full, file size limit) names no file: name the output
        raise OSError(f"{out_path}: cannot write ({err.strerror or err})") from err
    finally:
        if not done:
            for folder in new_dirs:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return meta


def _write_npy(f, chunks: Iterable[np.ndarray], row_shape: tuple[int, ...], name: Path) -> int:
    """Write float32 chunks (k, *row_shape) as one .npy array as they come; returns the number of rows.

    Raises ValueError, naming ``name``, at the first row that is not finite (NaN or infinite weights).

    The header is first written for 0 rows and rewritten at the end: numpy leaves room in it for a row
    count of up to 21 digits, so the file is byte for byte what ``np.save`` writes for the whole array.
    """
    np.save(f, np.zeros((0, *row_shape), np.float32))
    data_start = f.tell()
    n = 0
    for rows in chunks:
        if not np.isfinite(rows).all():
            raise ValueError(f"{name}: features of frame {n + int(np.argmin(np.isfinite(rows).all(axis=(1, 2))))} "
                             "are not finite (NaN or infinite weights?); nothing written")
        f.write(np.ascontiguousarray(rows, dtype="<f4").data)
        n += len(rows)
    f.seek(0)
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, *row_shape)})
    if f.tell() != data_start:
        raise RuntimeError(f"{f.name}: the .npy header changed size when its row count was written")
    return n
