"""The SE4Lip model: a speech encoder and a CNN lip encoder meeting in a 512-d cosine embedding space; its losses."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import audio
from .frames import DEFAULT_BATCH, MAX_FPS

MIN_FPS = 1.0  # a video rate below this is not a talking head (fps 1e-3 made extraction hang)
MAX_WINDOW_FRAMES = 25  # lip frames per window: 1 s at 25 fps

FRONT_ENDS = ("stft", "mel")
SPEECH_ENCODERS = ("gru", "cnn")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network and its front end; stored inside every weights file."""

    embed_dim: int = 512  # joint speech/lip embedding size
    gru_hidden: int = 256  # GRU hidden size (the paper does not give it)
    gru_layers: int = 8  # the paper's 8-layer GRU
    window_frames: int = 5  # video frames per training window (200 ms at 25 fps)
    fps: float = 25.0  # video rate of the training windows
    lip_height: int = 48  # lip crop, pixels (H x W); Table 2 reduces 48x96 and 96x96 to 1x1
    lip_width: int = 96
    lip_crop_scale: float = 1.2  # crop width / outer-eye-corner distance (how training/lips.py cuts the crops)
    sample_rate: int = audio.SAMPLE_RATE
    n_fft: int = audio.N_FFT
    win_length: int = audio.WIN_LENGTH
    hop_length: int = audio.HOP_LENGTH
    # The default is the design of the default weights, Mel + CNN, from the paper's Table 6 ablation; the
    # paper's own design is STFT + GRU (front_end="stft", speech_encoder="gru", the se4lip-grid-s1-v1 weights).
    front_end: str = "mel"  # "stft": the 257 log-STFT bins; "mel": 80 log-mel bands of that same STFT
    speech_encoder: str = "cnn"  # "gru": 8-layer GRU over the window; "cnn": a 2-D CNN over it
    # Subtract each window's mean log feature (over its frames and bands) before the encoder: a gain applied
    # to the audio adds the same constant to every log feature, so the recording level drops out.
    level_norm: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):  # weights files and flags give values of any type
            value, kind = getattr(self, field.name), type(field.default)
            if not (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
                    or kind is float and isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(f"{field.name} must be {kind.__name__}, got {value!r}")
        for name in ("embed_dim", "gru_hidden", "gru_layers", "lip_height", "lip_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.window_frames < 1 or self.window_frames % 2 == 0:
            raise ValueError("window_frames must be odd and positive (frames centred on one), "
                             f"got {self.window_frames}")
        if not (MIN_FPS <= self.fps <= MAX_FPS and 0 < self.lip_crop_scale < math.inf):
            raise ValueError(f"fps must be within {MIN_FPS:g}-{MAX_FPS:g} and lip_crop_scale positive and finite, "
                             f"got {self.fps}, {self.lip_crop_scale}")
        if self.window_frames > MAX_WINDOW_FRAMES:
            raise ValueError(f"window_frames must be at most {MAX_WINDOW_FRAMES}, got {self.window_frames}")
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {self.front_end!r}")
        if self.speech_encoder not in SPEECH_ENCODERS:
            raise ValueError(f"speech_encoder must be one of {SPEECH_ENCODERS}, got {self.speech_encoder!r}")
        if self.level_norm and self.speech_encoder != "cnn":
            raise ValueError("level_norm needs speech_encoder='cnn': the GRU streams a window's frames before its "
                             "level is known")

    @property
    def window_seconds(self) -> float:
        return self.window_frames / self.fps

    @property
    def n_stft_frames(self) -> int:
        return audio.stft_frames_per_window(self.window_seconds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The config stored in weights or a checkpoint; files older than the design fields are STFT + GRU."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**{"front_end": "stft", "speech_encoder": "gru", **values})

    def check_front_end(self) -> None:
        """Refuse weights whose front end differs from the one this package computes."""
        expected = (audio.SAMPLE_RATE, audio.N_FFT, audio.WIN_LENGTH, audio.HOP_LENGTH)
        got = (self.sample_rate, self.n_fft, self.win_length, self.hop_length)
        if got != expected:
            raise ValueError(f"weights need front end (sr, n_fft, win, hop) = {got}, this package computes {expected}")


class SpeechEncoder(nn.Module):
    """Log-STFT window -> input features -> 8-layer GRU (last step of the last layer) -> linear projection.

    With ``front_end="mel"`` the features are 80 log-mel bands of the same STFT; with
    ``speech_encoder="cnn"`` an :class:`AudioCNN` replaces the GRU and the projection (Table 6 ablation).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_in, basis = audio.N_FREQ, None
        if cfg.front_end == "mel":
            basis = audio.mel_filterbank(cfg.sample_rate, cfg.n_fft, audio.MEL_BANDS, audio.MEL_FMIN, audio.MEL_FMAX)
            n_in, basis = audio.MEL_BANDS, torch.from_numpy(basis).T.contiguous()  # (257, 80)
        self.register_buffer("mel_basis", basis, persistent=False)  # fixed, rebuilt from the config
        # Per-feature statistics of the training data; part of the weights.
        self.register_buffer("spec_mean", torch.zeros(n_in))
        self.register_buffer("spec_std", torch.ones(n_in))
        self.cnn, self.level_norm = None, cfg.level_norm
        self.embed_dim, self.n_stft_frames = cfg.embed_dim, cfg.n_stft_frames
        if cfg.speech_encoder == "gru":
            self.gru = nn.GRU(n_in, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True)
            self.proj = nn.Linear(cfg.gru_hidden, cfg.embed_dim)
        else:
            self.cnn = AudioCNN(cfg.embed_dim)

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """(..., 257) log-magnitude STFT -> the encoder's input features, before normalisation."""
        if self.mel_basis is None:
            return spec
        return torch.log(torch.exp(spec) @ self.mel_basis + audio.LOG_EPS)

    def inputs(self, spec: torch.Tensor) -> torch.Tensor:
        """(..., 257) log-magnitude STFT -> the encoder's standardised input features (..., n_in).

        With ``level_norm`` the statistics are those of level-normalised windows, which :meth:`encode`
        completes by subtracting each window's mean (it needs the whole window; frames are shared by many).
        """
        return (self.features(spec) - self.spec_mean) / self.spec_std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_stft_frames, n_in) standardised features -> (batch, embed_dim), not normalised."""
        if self.level_norm:  # x = (f - mean) / std; subtract the window's mean of f: its level
            x = x - (x * self.spec_std + self.spec_mean).mean(dim=(1, 2), keepdim=True) / self.spec_std
        if self.cnn is not None:
            return self.cnn(x)
        return self.finish(self.advance(x))

    def advance(self, x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Step-wise inference of the GRU: windows' states after reading more of their frames.

        Parameters
        ----------
        x : (batch, n_new, n_in) standardised features of each window's next frames
        state : (gru_layers, batch, gru_hidden) the states after the frames read so far; None before the first

        Returns
        -------
        (gru_layers, batch, gru_hidden) states; :meth:`finish` of a window's state after its last frame is its
        embedding, whatever pieces its frames were read in
        """
        _, state = self.gru(x, state)
        return state

    def finish(self, state: torch.Tensor) -> torch.Tensor:
        """(gru_layers, batch, gru_hidden) states after whole windows -> (batch, embed_dim), not normalised."""
        return self.proj(state[-1])

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(batch, n_stft_frames, 257) log-magnitude -> (batch, embed_dim), not normalised."""
        return self.encode(self.inputs(spec))

    def embed_frames(self, frames: torch.Tensor, which: torch.Tensor, precision=contextlib.nullcontext) -> torch.Tensor:
        """Unit-norm embeddings of speech windows given as distinct log-STFT frames and the frames each reads.

        The one way speech windows are embedded (extraction, evaluation, streaming and training): each distinct
        frame's input features are computed once (in fp32), however many windows read it, then ``encode`` runs
        on the windows under ``precision()`` (a context manager: the extractor's bf16 path; training's autocast
        encloses the whole call instead).

        Parameters
        ----------
        frames : (n_distinct, 257) log-magnitude STFT frames (:func:`audio.log_stft_frames`)
        which : int64 (n_windows, n_stft_frames) rows of ``frames`` each window reads, oldest first

        Returns
        -------
        torch.Tensor float32 (n_windows, embed_dim)
        """
        x = self.inputs(frames)[which]  # (n_windows, n_stft_frames, n_in)
        with precision():
            emb = self.encode(x)
        return F.normalize(emb.float(), dim=-1)

    def embed(self, wav: torch.Tensor, centres: torch.Tensor, batch_size: int = DEFAULT_BATCH,
              precision=contextlib.nullcontext) -> torch.Tensor:
        """Unit-norm embeddings of the windows centred on given samples of a waveform (:meth:`embed_frames`).

        Parameters
        ----------
        wav : float32 (n_samples,) at 16 kHz
        centres : int64 (n_windows,) sample indices (may lie outside the audio: silence is read there)
        batch_size : windows per encoder call

        Returns
        -------
        torch.Tensor float32 (n_windows, embed_dim) on ``wav``'s device
        """
        centres = centres.to(wav.device)
        out = [torch.zeros(0, self.embed_dim, device=wav.device)]
        for start in range(0, len(centres), batch_size):
            starts, which = audio.shared_stft_frames(centres[start: start + batch_size], self.n_stft_frames)
            out.append(self.embed_frames(audio.log_stft_frames(wav, starts), which, precision))
        return torch.cat(out)

    def for_inference(self) -> SpeechEncoder:
        """This encoder for extraction: itself for the GRU; for the CNN, a copy with BatchNorm folded in.

        Folding each BatchNorm's running statistics and affine into the convolution before it computes
        the same function in eval mode (to float rounding) with one pass over each activation map less,
        which is what lets bf16 autocast pay off (README, Performance).
        """
        if self.cnn is None:
            return self
        folded = copy.deepcopy(self).eval()
        for block in folded.modules():
            if isinstance(block, ConvBlock):
                block.fold_batchnorm()
        return folded


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm + ReLU; with ``residual`` the input is added before the ReLU (Wav2Lip style)."""

    def __init__(self, c_in, c_out, kernel, stride, padding, residual=False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu(y + x if self.residual else y)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Merge the eval-mode BatchNorm into the convolution: conv(x) * s + t with s, t from its statistics."""
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (c_out,)
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           bias=True).to(conv.weight.device)
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = folded, nn.Identity()


class AudioCNN(nn.Module):
    """The ablation's convolutional speech encoder: (batch, time, freq) window -> (batch, embed_dim).

    Strided blocks halve the frequency axis five times and the time axis four (25 STFT frames -> 2),
    to 9 x 2 for the 257 STFT bins or 3 x 2 for 80 mel bands; the map is averaged and projected. Its
    widths are chosen so that a training step costs about what the GRU's does.
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        r = {"residual": True}
        self.net = nn.Sequential(
            ConvBlock(1, 32, 3, 2, 1),
            ConvBlock(32, 32, 3, (2, 1), 1),
            ConvBlock(32, 32, 3, 1, 1, **r),
            ConvBlock(32, 64, 3, 2, 1),
            ConvBlock(64, 64, 3, 1, 1, **r),
            ConvBlock(64, 128, 3, 2, 1),
            ConvBlock(128, 128, 3, 1, 1, **r),
            ConvBlock(128, 256, 3, 2, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(256, embed_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2)[:, None]).flatten(1)  # (batch, 1, freq, time) image


class LipEncoder(nn.Module):
    """Table 2 of the paper: 5 stacked RGB lip crops (15 channels) -> 512-d embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = 3 * cfg.window_frames
        r = {"residual": True}
        self.net = nn.Sequential(
            ConvBlock(c, 32, 7, 1, 3),
            ConvBlock(32, 64, 5, (1, 2), 1),
            ConvBlock(64, 64, 3, 1, 1, **r),
            ConvBlock(64, 64, 3, 1, 1, **r),
            ConvBlock(64, 128, 3, 2, 1),
            ConvBlock(128, 128, 3, 1, 1, **r),
            ConvBlock(128, 128, 3, 1, 1, **r),
            ConvBlock(128, 256, 3, 2, 1),
            ConvBlock(256, 256, 3, 1, 1, **r),
            ConvBlock(256, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, 1, 1, **r),
            ConvBlock(512, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, (4, 1), 0),
            nn.Conv2d(512, cfg.embed_dim, 1),  # plain projection: the embedding may take any sign
        )

    def forward(self, lips: torch.Tensor) -> torch.Tensor:
        """(batch, 15, H, W) float in [0, 1] -> (batch, embed_dim), not normalised."""
        x = self.net(lips * 2.0 - 1.0)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"lip crops of {tuple(lips.shape[-2:])} do not reduce to 1x1 (got {tuple(x.shape[-2:])})")
        return x.flatten(1)


class SE4Lip(nn.Module):
    """Speech and lip encoders; ``forward`` returns the cosine similarity of every lip/speech pair."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.speech = SpeechEncoder(cfg)
        self.lips = LipEncoder(cfg)

    def encode_speech(self, spec: torch.Tensor) -> torch.Tensor:
        """(batch, n_stft_frames, 257) log-STFT windows -> L2-normalised (batch, embed_dim)
        (:meth:`SpeechEncoder.embed_frames` of their frames)."""
        n, t, f = spec.shape
        return self.speech.embed_frames(spec.reshape(n * t, f), torch.arange(n * t, device=spec.device).view(n, t))

    def encode_lips(self, lips: torch.Tensor) -> torch.Tensor:
        """(batch, 15, H, W) -> L2-normalised (batch, embed_dim)."""
        return F.normalize(self.lips(lips), dim=-1)

    def forward(self, speech: tuple[torch.Tensor, torch.Tensor], lips: torch.Tensor, targets: tuple | None = None,
                loss: LossConfig | None = None, twin: torch.Tensor | None = None):
        """Cosine similarities (n_lip, n_speech) of every lip window with every speech window; given the pairs'
        ``targets`` (offset, same_clip), the training :class:`Losses` under ``loss`` (default: LossConfig())
        instead.

        speech : (frames, which), the speech windows as :meth:`SpeechEncoder.embed_frames` takes them:
            (n_distinct, 257) log-STFT frames and int64 (n_speech, n_stft_frames) indices into them
        lips : (n_lip, 15, H, W)
        twin : (n_distinct, 257) the same frames under another draw of the augmentation, or None; the
            consistency loss is the mean 1 - cosine between each window's two embeddings (0 without a twin)
        """
        frames, which = speech
        if twin is not None:  # one encoder call for both: BatchNorm sees them together
            frames, which = torch.cat([frames, twin]), torch.cat([which, which + len(frames)])
        emb = self.speech.embed_frames(frames, which)
        speech, twin_speech = emb[:len(speech[1])], emb[len(speech[1]):]
        sim = self.encode_lips(lips) @ speech.T
        if targets is None:
            return sim
        loss = loss or LossConfig()
        bce, nce = pair_losses(sim.float(), *targets, loss.min_negative_offset, loss.temperature)
        consistency = (1 - (speech * twin_speech).sum(-1).float()).mean() if twin is not None else bce.new_zeros(())
        return Losses(bce + loss.nce_weight * nce + loss.consistency * consistency, bce, nce, consistency)


# ------------------------------------------------------------------------------------------------- losses
# The paper's cosine binary cross-entropy (Eq. 6) and a softmax over time offsets.

EPS = 1e-6


@dataclass(frozen=True)
class LossConfig:
    """The training loss: Eq. 6's BCE + ``nce_weight`` x the offset softmax + ``consistency`` x the twin term."""

    nce_weight: float = 1.0  # 0 trains with the paper's Eq. 6 alone
    temperature: float = 0.07  # of the softmax over offsets
    min_negative_offset: int = 2  # same-clip pairs closer than this are not negatives (see pair_losses)
    consistency: float = 0.0  # weight of 1 - cos between each speech window's features and those of a noisy twin

    def __post_init__(self):
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")
        for name in ("nce_weight", "consistency"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be at least 0 and finite, got {getattr(self, name)}")
        if self.min_negative_offset < 0:
            raise ValueError(f"min_negative_offset must be at least 0, got {self.min_negative_offset}")


class Losses(NamedTuple):
    """What :meth:`SE4Lip.forward` returns given targets: the total that training minimises, and its parts."""

    total: torch.Tensor
    bce: torch.Tensor  # Eq. 6 (see pair_losses)
    nce: torch.Tensor  # the softmax over offsets (see pair_losses)
    consistency: torch.Tensor  # 1 - cos to the twin's features (0 without a twin)


def cosine_bce(cos: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Eq. 6 of the paper on cosine similarities, element-wise.

    Eq. 6 takes log(cos) and log(1 - cos), so the cosine must lie in (0, 1): we use p = (1 + cos) / 2,
    which keeps the full [-1, 1] range of the embedding space instead of forcing embeddings to be
    non-negative (Wav2Lip's ReLU route).

    Parameters
    ----------
    cos : (...) cosine similarities in [-1, 1]
    label : (...) 1 for a matching speech/lip pair, 0 otherwise
    """
    p = ((1.0 + cos) / 2.0).clamp(EPS, 1.0 - EPS)
    return -(label * torch.log(p) + (1.0 - label) * torch.log(1.0 - p))


def pair_losses(sim: torch.Tensor, offset: torch.Tensor, same_clip: torch.Tensor, min_negative_offset: int,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both losses over a similarity matrix of lip windows against speech windows.

    Parameters
    ----------
    sim : (n_lip, n_speech) cosine similarities
    offset : (n_lip, n_speech) int, speech frame minus lip frame (meaningful where ``same_clip``)
    same_clip : (n_lip, n_speech) bool
    min_negative_offset : same-clip pairs closer than this (but not aligned) are neither positive nor
        negative for Eq. 6: a window 1 frame away shares 4 of its 5 frames with the positive
    temperature : softmax temperature of the offset loss

    Returns
    -------
    bce : Eq. 6, the mean over positives plus the mean over negatives (the classes are balanced)
    nce : cross-entropy of picking the aligned speech window among all speech windows, per lip window
    """
    positive = same_clip & (offset == 0)
    negative = ~same_clip | (offset.abs() >= min_negative_offset)
    bce = cosine_bce(sim[positive], torch.ones_like(sim[positive])).mean()
    bce = bce + cosine_bce(sim[negative], torch.zeros_like(sim[negative])).mean()
    has_positive = positive.any(dim=1)
    logits = sim[has_positive] / temperature
    nce = F.cross_entropy(logits, positive[has_positive].float().argmax(dim=1))
    return bce, nce
