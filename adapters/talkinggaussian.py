"""TalkingGaussian adapter: what the lines ``se4lip-patch talkinggaussian`` inserts into a checkout call.

Flag mapping: TalkingGaussian picks its features with ``--audio_extractor`` (``ModelParams``). The patch
adds ``--audio_feature`` as an alias writing the same ``audio_extractor``, and makes ``se4lip`` a value of
both. The training scripts save it in ``<model_path>/cfg_args``; ``synthesize_fuse.py`` merges that file
with the command line, where TalkingGaussian's default ``deepspeech`` used to win, so the patch keeps the
saved value unless the command line names the flag: the feature type survives to synthesis.
"""

from __future__ import annotations

import argparse

import numpy as np
from se4lip_features.adapters import common

# --audio_feature accepts TalkingGaussian's own feature names too, so one flag serves every run.
FEATURES = ("deepspeech", "esperanto", "hubert", common.FEATURE)
FLAGS = ("--audio_extractor", "--audio_feature")  # both set args.audio_extractor
ID_KEY = "img_id"  # TalkingGaussian indexes self-driven features with each frame's img_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--audio_feature``, an alias of ``--audio_extractor``; called from the patched ``ModelParams``."""
    common.use_console_logging()
    parser.add_argument("--audio_feature", dest="audio_extractor", choices=FEATURES, default=argparse.SUPPRESS,
                        help=f"audio features (alias of --audio_extractor); '{common.FEATURE}' reads "
                             f"<source_path>/{common.SELF_FEATURES}, extracting it from "
                             f"<source_path>/{common.SOURCE_WAV} if missing (se4lip-features)")


def _names_feature_flag(argv: list[str]) -> bool:
    """Whether a command line sets the feature flag, in any form argparse accepts (``--x=v``, abbreviated)."""
    for token in argv:
        name = token.split("=", 1)[0]
        if name.startswith("--audio_") and any(flag.startswith(name) for flag in FLAGS):
            return True
    return False


def keep_saved_feature(merged: dict, saved: dict, argv: list[str]) -> None:
    """Let the feature type saved in ``cfg_args`` win over the parser's default (in place).

    Parameters
    ----------
    merged : the arguments ``get_combined_args`` is about to return (cfg_args overridden by the command line)
    saved : the arguments read from ``<model_path>/cfg_args`` (empty when there is none)
    argv : the command line, without the program name
    """
    if "audio_extractor" not in saved or _names_feature_flag(argv):
        return
    if merged.get("audio_extractor") != saved["audio_extractor"]:
        common.log.info("audio features: %s, as saved in %s/cfg_args", saved["audio_extractor"],
                        merged.get("model_path"))
        merged["audio_extractor"] = saved["audio_extractor"]


def selected(args) -> bool:
    """Whether the run uses SE4Lip features (an exact match: TalkingGaussian's own dispatch uses substrings)."""
    return args.audio_extractor == common.FEATURE


def feature_dim(args) -> int:
    """AudioNet's input dimension for an SE4Lip run, from the sidecar of ``<source_path>/aud_se4lip.npy``.

    Extracts the features first if they are missing.
    """
    return int(common.self_meta(args.source_path)["dim"])


def load_features(path: str, audio_file: str, n_cameras: int, split: str) -> np.ndarray:
    """The features ``readCamerasFromTransforms`` uses in place of its ``np.load``.

    Parameters
    ----------
    path : the data directory (``--source_path``)
    audio_file : ``--audio``: "" for self-driven, else a ``.npy`` from ``se4lip-extract`` or a ``.wav``
    n_cameras : cameras in this split; a cross-driven render stops after this many frames
    split : the transforms file being read, for messages

    Returns
    -------
    np.ndarray float32 (n_frames, window, dim) on the CPU, like TalkingGaussian's own ``np.load``; the
    reader permutes it to (n_frames, dim, window) and the renderer moves windows to CUDA
    """
    feats = common.load_features(path, audio_file, ID_KEY)
    if audio_file and len(feats) > n_cameras:
        common.log.warning("%s has %d cameras for the %d frames of %s: rendering with them stops after %d "
                           "frames (synthesize_fuse.py --use_train renders with the training cameras)",
                           split, n_cameras, len(feats), audio_file, n_cameras)
    return feats


def guard_checkpoints(audio_net, args) -> None:
    """Refuse checkpoints whose audio network was trained on another feature type (any extractor)."""
    reference = common.self_meta(args.source_path) if selected(args) else None
    common.guard_audio_net(audio_net, reference, "--audio_extractor",
                           f"{args.source_path}/{common.SELF_FEATURES}")
