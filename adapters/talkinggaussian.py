"""TalkingGaussian: the patch table of ``se4lip-patch talkinggaussian`` and what its inserted lines call.

Flag mapping: TalkingGaussian picks its features with ``--audio_extractor`` (``ModelParams``). The patch
adds ``--audio_feature`` as an alias writing the same ``audio_extractor``, and makes ``se4lip`` a value of
both. The training scripts save it in ``<model_path>/cfg_args``; ``synthesize_fuse.py`` merges that file
with the command line, where TalkingGaussian's default ``deepspeech`` used to win, so the patch keeps a saved
``se4lip`` unless the command line names the flag: the feature type survives to synthesis.
"""

from __future__ import annotations

import numpy as np

from . import common, engine, gaussian
from .engine import Edit, Swap, branch
from .gaussian import feature_dim, guard_checkpoints, keep_saved_feature  # noqa: F401

# --audio_feature accepts TalkingGaussian's own feature names too, so one flag serves every run.
FEATURES = ("deepspeech", "esperanto", "hubert", common.FEATURE)
ID_KEY = gaussian.ID_KEY


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
    feats = gaussian.load_features(path, audio_file)
    if audio_file and len(feats) > n_cameras:
        common.log.warning("%s has %d cameras for the %d frames of %s: rendering with them stops after %d "
                           "frames (synthesize_fuse.py --use_train renders with the training cameras)",
                           split, n_cameras, len(feats), audio_file, n_cameras)
    return feats


_IMPORT = engine.imports("talkinggaussian", "se4lip_tg")
_DIM = ["        elif 'hubert' in args.audio_extractor:",
        "            self.audio_in_dim = 1024",
        "        else:",
        "            raise NotImplementedError"]
_NET = ["        self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)"]

RENDERER = engine.Renderer("Fictionarry/TalkingGaussian", "9bd34f732e30cd94c0a9a087a125d2dda228e258", (
    *gaussian.argument_edits("talkinggaussian", "se4lip_tg", FEATURES),
    *gaussian.network_edits("talkinggaussian", "se4lip_tg", "class MotionNetwork(nn.Module):", _DIM, _NET),
    *gaussian.network_edits("talkinggaussian", "se4lip_tg", "class MouthMotionNetwork(nn.Module):", _DIM, _NET),
    Edit(
        "scene/dataset_readers.py", "the self-driven feature load in readCamerasFromTransforms",
        ("        if audio_file == '':",),
        branch("        ", "if audio_extractor == 'se4lip':", _IMPORT,
               "aud_features = se4lip_tg.load_features(path, audio_file, len(frames), transformsfile)")
        + (Swap(0, f"        elif audio_file == '':  {engine.MARK}"),),
        scope="def readCamerasFromTransforms(path, transformsfile, white_background, extension=\".jpg\", "
              "audio_file='', audio_extractor='deepspeech', preload=True):"),
))
