"""SyncTalk adapter: what the lines ``se4lip-patch synctalk`` inserts into a checkout call.

Flag mapping: SyncTalk picks its features with ``--asr_model``. The patch adds ``--audio_feature`` as an
alias writing the same ``opt.asr_model``, and makes ``se4lip`` a value of both: ``--audio_feature se4lip``
and ``--asr_model se4lip`` are the same run. ``opt.asr_model`` is not saved with the model, so it is passed
again at test time, as for SyncTalk's own features.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
from se4lip_features.adapters import common

# --audio_feature accepts SyncTalk's own feature names too, so one flag serves every run.
FEATURES = ("ave", "deepspeech", "esperanto", "hubert", common.FEATURE)
ID_KEY = "aud_id"  # SyncTalk indexes self-driven features with each frame's aud_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--audio_feature``, an alias of ``--asr_model``; called from the patched ``main.py``."""
    common.use_console_logging()
    parser.add_argument("--audio_feature", dest="asr_model", choices=FEATURES, default=argparse.SUPPRESS,
                        help=f"audio features (alias of --asr_model); '{common.FEATURE}' reads "
                             f"<path>/{common.SELF_FEATURES}, extracting it from <path>/{common.SOURCE_WAV} "
                             "if missing (se4lip-features)")


def selected(opt) -> bool:
    """Whether the run uses SE4Lip features (an exact match: SyncTalk's own dispatch uses substrings)."""
    return opt.asr_model == common.FEATURE


def feature_dim(opt) -> int:
    """AudioNet's input dimension for an SE4Lip run, from the sidecar of ``<opt.path>/aud_se4lip.npy``.

    Extracts the features first if they are missing. Refuses the modes SE4Lip features do not support.
    """
    if opt.asr:
        raise ValueError(f"--asr (live speech recognition) cannot use --asr_model {common.FEATURE}: SyncTalk "
                         "runs a Hugging Face CTC model named by --asr_model in that mode")
    if opt.emb:
        raise ValueError("--emb expects class labels; SE4Lip features are embeddings, drop --emb")
    return int(common.self_meta(opt.path)["dim"])


def load_features(opt) -> np.ndarray:
    """The features ``NeRFDataset`` uses in place of its ``np.load``, self- or cross-driven by ``opt.aud``.

    Returns
    -------
    np.ndarray float32 (n_frames, window, dim) on the CPU, like SyncTalk's own ``np.load``; the dataset
    permutes it to (n_frames, dim, window) and its collate moves windows to the device
    """
    return common.load_features(opt.path, opt.aud, ID_KEY)


def guard_checkpoints(audio_net, opt) -> None:
    """Refuse checkpoints whose audio network was trained on another feature type (any ``--asr_model``)."""
    reference = common.self_meta(opt.path) if selected(opt) else None
    common.guard_audio_net(audio_net, reference, "--asr_model", Path(opt.path) / common.SELF_FEATURES)


def test_audio(opt) -> Path | None:
    """The audio file of a cross-driven test, if known: ``--aud`` itself, or the source of a ``.npy``."""
    if not opt.aud:
        return None  # self-driven tests render the val frames: aud.wav would not line up
    aud = Path(opt.aud)
    if aud.suffix.lower() != ".npy":
        return aud
    from se4lip_features.sidecar import read_sidecar
    from se4lip_features.weights import sha256_file

    meta = read_sidecar(aud)
    source = aud.parent / meta.get("audio", "")
    if meta.get("audio") and source.is_file() and sha256_file(source) == meta.get("audio_sha256"):
        return source
    return None


def mux_audio(opt, video: str | Path) -> Path | None:
    """Write ``<video stem>_audio.mp4``: the rendered video with the test audio, as SyncTalk does for ave.

    Returns the new file, or None when the audio is not known (self-driven, or a ``.npy`` whose source
    audio is not beside it).
    """
    video = Path(video)
    source = test_audio(opt)
    if source is None:
        common.log.info("no audio to add to %s; add it with `ffmpeg -i %s -i AUDIO -c:v copy -shortest OUT.mp4`",
                        video, video)
        return None
    out = video.with_name(video.stem + "_audio.mp4")
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-i", str(video), "-i", str(source), "-map", "0:v:0",
           "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(out)]
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError as err:
        raise RuntimeError(f"ffmpeg not found; the silent video is {video}; add the audio with: "
                           f"{' '.join(cmd)}") from err
    common.log.info("wrote %s", out)
    return out
