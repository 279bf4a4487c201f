"""What TalkingGaussian and InsTaG share: ``--audio_extractor`` in ``ModelParams``, saved in ``cfg_args``.

Both pick their features with ``ModelParams.audio_extractor`` (``--audio_extractor``), build their motion
networks from the parsed arguments, read ``<source_path>/aud*.npy`` (or ``--audio``) with
``readCamerasFromTransforms`` indexed by ``img_id``, and merge ``<model_path>/cfg_args`` under the command line
in ``get_combined_args``, where the parser's default ``deepspeech`` used to win over the saved value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import common, engine
from .engine import branch, insert_after, insert_before

FLAG = "--audio_extractor"
FLAGS = (FLAG, "--audio_feature")  # both set args.audio_extractor
KEY = "audio_extractor"
ID_KEY = "img_id"  # their readers index self-driven features with each frame's img_id


def keep_saved_feature(merged: dict, saved: dict, argv: list[str]) -> None:
    """Let the feature type saved in ``cfg_args`` win over the parser's default (in place); see common."""
    common.keep_saved_feature(merged, saved, argv, KEY, FLAGS)


def feature_dim(args) -> int:
    """The motion networks' audio input dimension, from the sidecar of ``<source_path>/aud_se4lip.npy``.

    Extracts the features first if they are missing.
    """
    return int(common.self_meta(args.source_path)["dim"])


def guard_checkpoints(audio_net, args) -> None:
    """Refuse checkpoints whose audio network was trained on other features, or on other SE4Lip weights."""
    common.guard_audio_net(audio_net, common.self_meta(args.source_path), FLAG,
                           Path(args.source_path) / common.SELF_FEATURES)


def argument_edits(module: str, alias: str, features: tuple[str, ...]) -> tuple[engine.Edit, ...]:
    """``arguments/__init__.py``: the ``--audio_feature`` alias, and the saved feature kept at synthesis.

    The alias is plain argparse; the saved feature is restored through the adapter only when it is se4lip,
    so the package is imported only for se4lip models.
    """
    imp = engine.imports(module, alias)
    line = (f"parser.add_argument('--audio_feature', dest='audio_extractor', choices={features!r}, "
            "help='alias of --audio_extractor; se4lip: SE4Lip features (se4lip-features)')")
    return (
        insert_after("arguments/__init__.py", "the end of ModelParams.__init__",
                     ['        super().__init__(parser, "Loading Parameters", sentinel)'],
                     engine.marked("        ", line)),
        insert_before("arguments/__init__.py", "the return of get_combined_args",
                      ["    return Namespace(**merged_dict)"],
                      branch("    ", "if vars(args_cfgfile).get('audio_extractor') == 'se4lip':", imp,
                             f"{alias}.keep_saved_feature(merged_dict, vars(args_cfgfile), cmdlne_string)"),
                      scope="def get_combined_args(parser : ArgumentParser):"),
    )


def network_edits(module: str, alias: str, scope: str, dim_anchor: list[str],
                  net_anchor: list[str]) -> tuple[engine.Edit, ...]:
    """``scene/motion_net.py``, one network class: its input size, and the checkpoint guard on its AudioNet.

    ``dim_anchor`` ends in ``        else:`` / ``            raise NotImplementedError``; the se4lip branch
    goes before them.
    """
    imp = engine.imports(module, alias)
    se4lip = "args.audio_extractor == 'se4lip'"
    name = scope.split()[1].split("(")[0]
    return (
        engine.insert_at("scene/motion_net.py", f"the audio_in_dim choice in {name}.__init__", dim_anchor,
                         len(dim_anchor) - 2,
                         branch("        ", f"elif {se4lip}:", imp, f"self.audio_in_dim = {alias}.feature_dim(args)"),
                         scope=scope),
        insert_after("scene/motion_net.py", f"the AudioNet construction in {name}.__init__", net_anchor,
                     branch("        ", f"if {se4lip}:", imp, f"{alias}.guard_checkpoints(self.audio_net, args)"),
                     scope=scope),
    )


def load_features(path: str, audio_file: str) -> np.ndarray:
    """The features ``readCamerasFromTransforms`` uses in place of its ``np.load``.

    Parameters
    ----------
    path : the data directory the reader was given
    audio_file : ``--audio``: "" for self-driven, else a ``.npy`` from ``se4lip-extract`` or an audio file

    Returns
    -------
    np.ndarray float32 (n_frames, window, dim) on the CPU, like the renderers' own ``np.load``; the reader
    permutes it to (n_frames, dim, window) and the renderer moves windows to CUDA
    """
    return common.load_features(path, audio_file, ID_KEY)
