"""Training-audio augmentation that keeps the sync with the lips: level, noise, other talkers, rooms, codecs, voices.

Every perturbation leaves each sound where it was in time (a room's direct path and a codec's decoded audio
are aligned back to the original), so a clip's lip frames still match its speech. Each kind is drawn per
clip and costs nothing, random numbers included, while its share is 0: a recipe without it trains as before.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

from .. import audio

SNR_DB = (10.0, 40.0)  # white noise, dB SNR
BABBLE_SNR_DB = (5.0, 20.0)  # other talkers, dB SNR (their sum against the clip)
BABBLE_TALKERS = (3, 6)  # how many other clips talk at once, inclusive
RT60_S = (0.15, 0.7)  # reverberation time of the simulated rooms
DRR_DB = (0.0, 12.0)  # direct-to-reverberant energy ratio of those rooms
# (encoder, container, bit rates in bit/s): low rates of the codecs that calls, streams and phones use
CODECS = (("libmp3lame", "mp3", (16_000, 24_000, 32_000)), ("libopus", "ogg", (8_000, 12_000, 16_000)),
          ("aac", "adts", (16_000, 24_000, 32_000)))
CODEC_MAX_DELAY = 4096  # samples a decoder may add before the audio (AAC's priming is 1024)
WARP_CUTOFF = 0.8  # share of the band that a vocal-tract-length warp scales linearly (the rest maps onto Nyquist)


def augment(wav: np.ndarray, rng: np.random.Generator, *, gain_db: float, noise_p: float, reverb_p: float = 0.0,
            babble_p: float = 0.0, codec_p: float = 0.0,
            others: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """A clip's 16 kHz audio at a random level (+-``gain_db``), then, each for its share of clips: in a room
    (``reverb_p``), under other talkers (``babble_p``; ``others()`` returns another clip's audio), in white noise
    at 10-40 dB SNR (``noise_p``) and through a low-bit-rate codec (``codec_p``). Same length, float32."""
    wav = wav * np.float32(10 ** (rng.uniform(-gain_db, gain_db) / 20))
    if reverb_p and rng.random() < reverb_p:
        wav = reverberate(wav, rng)
    if babble_p and rng.random() < babble_p:
        if others is None:
            raise ValueError("babble needs other clips' audio (others)")
        wav = babble(wav, [others() for _ in range(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))], rng)
    if rng.random() < noise_p:
        rms = np.sqrt(np.mean(wav ** 2) + 1e-12)
        wav = wav + (rng.standard_normal(len(wav)) * rms * 10 ** (-rng.uniform(*SNR_DB) / 20)).astype(np.float32)
    if codec_p and rng.random() < codec_p:
        encoder, container, rates = CODECS[rng.integers(len(CODECS))]
        wav = codec_roundtrip(wav, encoder, container, int(rng.choice(rates)))
    return wav.astype(np.float32, copy=False)


def reverberate(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``wav`` in a simulated room: a direct path at lag 0 (so nothing moves in time) plus an exponentially
    decaying noise tail (RT60 in ``RT60_S``, direct-to-reverberant ratio in ``DRR_DB``), at the input's RMS."""
    rt60 = rng.uniform(*RT60_S)
    n = int(rt60 * audio.SAMPLE_RATE)
    tail = rng.standard_normal(n) * np.exp(-6.908 * np.arange(n) / n)  # -60 dB (ln 1000) at rt60
    tail[: audio.SAMPLE_RATE // 1000] = 0.0  # the first reflection arrives after 1 ms
    tail *= 10 ** (-rng.uniform(*DRR_DB) / 20) / np.sqrt(np.sum(tail ** 2))
    rir = np.concatenate([[1.0], tail[1:]])
    size = 1 << int(np.ceil(np.log2(len(wav) + n)))
    wet = np.fft.irfft(np.fft.rfft(wav, size) * np.fft.rfft(rir, size), size)[: len(wav)]
    return (wet * np.sqrt(np.mean(wav ** 2) / (np.mean(wet ** 2) + 1e-20))).astype(np.float32)


def babble(wav: np.ndarray, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``wav`` under other talkers: each of ``talkers`` looped to length from a random start, at equal level,
    their sum at a random ``BABBLE_SNR_DB`` below the clip."""
    mix = np.zeros(len(wav), np.float64)
    for other in talkers:
        if not len(other) or not np.any(other):
            continue
        looped = np.resize(np.roll(other, -int(rng.integers(len(other)))), len(wav))
        mix += looped / np.sqrt(np.mean(looped ** 2))
    if not np.any(mix):
        return wav
    level = np.sqrt(np.mean(wav ** 2) / np.mean(mix ** 2)) * 10 ** (-rng.uniform(*BABBLE_SNR_DB) / 20)
    return (wav + mix * level).astype(np.float32)


def codec_roundtrip(wav: np.ndarray, encoder: str, container: str, bit_rate: int) -> np.ndarray:
    """``wav`` encoded by ``encoder`` at ``bit_rate`` bit/s and decoded again (PyAV, in memory), the decoder's
    delay removed by cross-correlation so that each sound stays where it was; same length, 16 kHz."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=audio.SAMPLE_RATE, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = audio.SAMPLE_RATE
        to_encoder = av.AudioResampler(format=stream.format.name, layout="mono", rate=audio.SAMPLE_RATE)
        for f in to_encoder.resample(frame) + to_encoder.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    buf.seek(0)
    to_16k = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
    with av.open(buf, "r") as inp:
        decoded = [g.to_ndarray().reshape(-1) for f in inp.decode(audio=0) for g in to_16k.resample(f)]
        decoded += [g.to_ndarray().reshape(-1) for g in to_16k.resample(None)]
    out_wav = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    delay = _delay(wav, out_wav)
    return np.pad(out_wav[delay: delay + len(wav)], (0, max(0, len(wav) - len(out_wav) + delay))).astype(np.float32)


def _delay(ref: np.ndarray, delayed: np.ndarray) -> int:
    """The lag in 0..``CODEC_MAX_DELAY`` samples at which ``delayed`` best matches ``ref`` (FFT cross-correlation)."""
    size = 1 << int(np.ceil(np.log2(len(ref) + len(delayed) + 1)))
    corr = np.fft.irfft(np.fft.rfft(delayed, size) * np.conj(np.fft.rfft(ref, size)), size)
    return int(np.argmax(corr[: CODEC_MAX_DELAY + 1]))


def warp_frequency(spec: torch.Tensor, alpha: float) -> torch.Tensor:
    """Vocal-tract-length perturbation of log-STFT frames: the band up to ``WARP_CUTOFF`` of Nyquist scaled by
    ``alpha`` (formants and pitch move together, as between speakers), the rest mapped linearly onto Nyquist.

    Parameters
    ----------
    spec : torch.Tensor, float, shape (..., n_freq); n_freq bins from 0 Hz to Nyquist
    alpha : float; > 1 moves energy up (a shorter vocal tract), < 1 down

    Returns
    -------
    torch.Tensor, same shape: each output bin interpolated from the input bin it is warped from
    """
    top = spec.shape[-1] - 1
    k = torch.arange(spec.shape[-1], dtype=torch.float64)
    knee = WARP_CUTOFF * top * min(1.0, 1.0 / alpha)  # input frequency whose image alpha * knee <= cutoff
    source = torch.where(k <= alpha * knee, k / alpha, knee + (k - alpha * knee) * (top - knee) / (top - alpha * knee))
    lo = source.floor().long().clamp(0, top - 1)
    frac = (source - lo).to(spec.dtype)
    return spec[..., lo] * (1 - frac) + spec[..., lo + 1] * frac
